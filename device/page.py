"""The results page: the latest results with their overlays, served by the device itself.

Standard library only (http.server), no external resources (inline CSS, images from the device's
own store), read-only, and bound to 127.0.0.1 unless the configuration names the clinic's network
address. It reads the last results through the log's index on every request (a seek, not the whole
log), so it needs no state of its own and costs the same after years of results.
"""

from __future__ import annotations

import html
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from edge_runtime.labels import DISCLAIMER, RETAKE, WORDING

from . import filenames
from .service import Ledger, Record

LATEST = 30
_IMAGE = re.compile(r"^/img/([0-9a-f]{32})/(" + "|".join(re.escape(n) for n in filenames.SERVED) + ")$")

CSS = """body{font-family:sans-serif;margin:0;background:#f4f4f4;color:#222}
header{background:#1d3557;color:#fff;padding:12px 16px}h1{font-size:20px;margin:0}
.disclaimer{background:#ffe8a3;padding:10px 16px;font-weight:bold}
.demo{background:#f8d7da;padding:10px 16px;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
.card{background:#fff;border-radius:6px;box-shadow:0 1px 3px #0003;width:300px;padding:10px}
.card img{width:100%;border-radius:4px;background:#000}
.badge{display:inline-block;padding:4px 8px;border-radius:4px;font-weight:bold;color:#fff}
.pos{background:#c1121f}.neg{background:#2a9d8f}.retake{background:#e76f51}.err{background:#6c757d}
.small{font-size:12px;color:#555;word-break:break-all}"""


def _card(d: Dict) -> str:
    r = Record.from_dict(d)
    name = html.escape(Path(str(r.source or r.file or "?")).name)
    when = html.escape(r.received_utc or "")
    if r.error or (not r.retake and r.probability is None):  # a line of an older or damaged log: shown, not fatal
        body = f'<span class="badge err">{WORDING["error"]}</span><p>{html.escape(r.error or "no answer recorded")}</p>'
    elif r.retake:
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in (r.quality or {}).get("reasons", []))
        body = f'<span class="badge retake">{WORDING[RETAKE]}</span><ul>{reasons}</ul>'
    else:
        img = (f'<img alt="radiograph with Grad-CAM heatmap" src="/img/{r.id}/{filenames.GRADCAM}">'
               if r.heatmap else "")
        label = html.escape(WORDING.get(r.decision, str(r.decision)))
        threshold = f" (threshold {r.threshold:.3f})" if r.threshold is not None else ""
        body = (f'{img}<p><span class="badge {"pos" if r.positive else "neg"}">{label}</span></p>'
                f"<p>probability {r.probability:.3f}{threshold}</p>")
    return f'<div class="card"><b>{name}</b><div class="small">{when}</div>{body}</div>'


def render(records: List[Dict], status: Sequence[str] = ()) -> str:
    latest = list(reversed(records))[:LATEST]
    demo = any(r.get("demonstration_only") for r in latest)
    cards = "".join(_card(r) for r in latest) or "<p>No results yet.</p>"
    warnings = "".join(f"<div class='demo'>{html.escape(w)}</div>" for w in status)
    return ("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            "<meta http-equiv='refresh' content='10'><title>Fracture screening — results</title>"
            f"<style>{CSS}</style></head><body><header><h1>Fracture screening — latest results</h1></header>"
            f"<div class='disclaimer'>{html.escape(DISCLAIMER)}</div>"
            + (f"<div class='demo'>{html.escape(WORDING['demonstration'])}.</div>" if demo else "")
            + warnings
            + f"<div class='grid'>{cards}</div></body></html>")


class AppSite:
    """The phone app (device/webapp.py) for whichever bundle the service uses now: rebuilt in
    memory when the bundle changes (an update). Files are gzipped once, and a rebuild for a new
    bundle re-compresses only the files that changed, not the 14 MB runtime; a build that
    fails is retried after RETRY_S, not on every request."""

    RETRY_S = 30.0

    def __init__(self, bundle: Callable[[], object]):
        self._bundle = bundle
        self._lock = threading.Lock()
        self._digest: Optional[str] = None
        self._site = None
        self._gz: Dict[str, bytes] = {}  # file -> its gzip, for the current site
        self._failed: Optional[tuple] = None  # (digest, monotonic time, exception)

    def _current(self):
        import time

        from .webapp import build_site
        bundle = self._bundle()
        if self._site is not None and bundle.digest == self._digest:
            return self._site
        if self._failed and self._failed[0] == bundle.digest and time.monotonic() - self._failed[1] < self.RETRY_S:
            raise self._failed[2]
        try:
            site = build_site(bundle)
        except Exception as exc:
            self._failed = (bundle.digest, time.monotonic(), exc)
            raise
        old = self._site.files if self._site is not None else {}
        self._gz = {rel: z for rel, z in self._gz.items() if old.get(rel) == site.files.get(rel)}  # unchanged files
        self._site, self._digest, self._failed = site, bundle.digest, None
        return site

    def get(self, rel: str, gzip_ok: bool):
        """(content, content type, gzipped) or None when the app has no such file."""
        from .webapp import content_type, gzipped

        with self._lock:
            content = self._current().files.get(rel)
            if content is None:
                return None
            if gzip_ok:
                if rel not in self._gz:
                    self._gz[rel] = gzipped(rel, content)
                z = self._gz[rel]
                if z is not content:
                    return z, content_type(rel), True
            return content, content_type(rel), False


def accepts_gzip(header: str) -> bool:
    """Accept-Encoding names gzip (or *) with a q-value above 0."""
    for part in header.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


# Cross-origin isolation, so the app's WASM runtime may use threads (SharedArrayBuffer).
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}


def make_handler(ledger: Ledger, store: Path, status: Callable[[], Sequence[str]] = lambda: (),
                 app: Optional[AppSite] = None, ca_crt: Optional[Path] = None):
    class Handler(BaseHTTPRequestHandler):
        timeout = 20  # an idle or slow client loses its connection; it does not hold a thread forever

        def _send(self, code: int, body: bytes, ctype: str, headers: Optional[Dict[str, str]] = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {"Cache-Control": "no-store"}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _app(self, path: str):
            if app is None:
                return self._send(404, b"not found", "text/plain")
            if path == "/app":
                self.send_response(301)
                self.send_header("Location", "/app/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            rel = path[len("/app/"):] or "index.html"
            gzip_ok = accepts_gzip(self.headers.get("Accept-Encoding", ""))
            try:
                got = app.get(rel, gzip_ok)
            except Exception as exc:  # noqa: BLE001 - the results page must stay up whatever the app's state
                return self._send(503, f"the phone app is not available: {exc}".encode("utf-8", "replace"),
                                  "text/plain; charset=utf-8")
            if got is None:
                return self._send(404, b"not found", "text/plain")
            body, ctype, zipped = got
            # no-cache: the service worker keeps the offline copy; the server is asked each time online
            headers = {"Cache-Control": "no-cache", **ISOLATION}
            if zipped:
                headers.update({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
            return self._send(200, body, ctype, headers)

        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/app" or path.startswith("/app/"):
                return self._app(path)
            if path == "/ca.crt" and ca_crt is not None:  # the device's own CA, for phones to install once
                return self._send(200, ca_crt.read_bytes(), "application/x-x509-ca-cert",
                                  {"Content-Disposition": 'attachment; filename="fracture-edge-ca.crt"'})
            if path == "/":
                # backslashreplace: a file name that is not UTF-8 (a Windows share) is shown escaped
                return self._send(200, render(ledger.latest(LATEST), list(status())).encode("utf-8", "backslashreplace"),
                                  "text/html; charset=utf-8")
            if path == "/api/results":
                return self._send(200, json.dumps(ledger.latest(LATEST)).encode(), "application/json")
            m = _IMAGE.match(path)
            if m and (store / m.group(1) / m.group(2)).is_file():
                return self._send(200, (store / m.group(1) / m.group(2)).read_bytes(),
                                  "image/jpeg" if m.group(2).endswith(".jpg") else "image/png")
            return self._send(404, b"not found", "text/plain")

        def log_message(self, fmt, *args):  # no request log: file names could identify a patient
            pass

    return Handler


class TLSServer(ThreadingHTTPServer):
    """HTTPS, with each connection's handshake in its own thread (a slow phone holds no one else up)."""

    def __init__(self, address, handler, context):
        self.context = context
        super().__init__(address, handler)

    def process_request_thread(self, request, client_address):
        import ssl
        try:
            request.settimeout(20)
            request = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):  # a plain-HTTP client, or one that gave up: drop it
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def start_page(ledger: Ledger, store: Path, host: str = "127.0.0.1", port: int = 8080,
               status: Callable[[], Sequence[str]] = lambda: (), bundle: Optional[Callable[[], object]] = None,
               tls=None) -> ThreadingHTTPServer:
    """Raises OSError (address in use, or not this machine's) for the caller to report in one line.
    `bundle`: the service's current bundle, for the phone app at /app/ (none: no app).
    `tls`: (ssl context, CA certificate path) to serve HTTPS, and the CA at /ca.crt."""
    app = AppSite(bundle) if bundle is not None else None
    handler = make_handler(ledger, Path(store), status, app, tls[1] if tls else None)
    server = TLSServer((host, port), handler, tls[0]) if tls else ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
