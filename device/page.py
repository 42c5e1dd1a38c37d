"""The results page: the latest results with their overlays, served by the device itself.

Standard library only (http.server), no external resources (inline CSS, images from the device's
own store), read-only, and bound to 127.0.0.1 unless the configuration names the clinic's network
address. It reads the last results through the log's index on every request (a seek, not the whole
log), so it needs no state of its own and costs the same after years of results.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import urllib.parse
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from edge_runtime.labels import DISCLAIMER, OUT_OF_SCOPE, RETAKE, WORDING, refusal_text

from . import filenames
from .service import Ledger, Record

log = logging.getLogger(__name__)
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
.scope{background:#5a189a}
.small{font-size:12px;color:#555;word-break:break-all}"""


def _card(d: Dict) -> str:
    r = Record.from_dict(d)
    name = html.escape(Path(str(r.source or r.file or "?")).name)
    when = html.escape(r.received_utc or "")
    if r.out_of_scope:  # no answer, and no heatmap: the model does not read this kind of image
        body = (f'<span class="badge scope">{html.escape(WORDING[OUT_OF_SCOPE])}</span>'
                f"<p>{html.escape(refusal_text(r.scope))}</p>")
    elif r.error or (not r.retake and r.probability is None):  # a line of an older or damaged log: shown, not fatal
        body = f'<span class="badge err">{WORDING["error"]}</span><p>{html.escape(r.error or "no answer recorded")}</p>'
    elif r.retake:
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in (r.quality or {}).get("reasons", []))
        body = f'<span class="badge retake">{WORDING[RETAKE]}</span><ul>{reasons}</ul>'
    else:
        img = (f'<img alt="radiograph with the heatmap of where the model sees a fracture" src="/img/{r.id}/{filenames.GRADCAM}">'
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
        self._digest: Optional[tuple] = None  # (bundle digest, runtime stamp) of the site built
        self._site = None
        self._gz: Dict[str, bytes] = {}  # file -> its gzip, for the current site
        self._failed: Optional[tuple] = None  # (digest, runtime stamp, monotonic time, exception)

    def _current(self, again: bool = False):
        import time

        from .webapp import build_site, runtime_stamp
        bundle = self._bundle()
        stamp = runtime_stamp()  # a few stats: a runtime fetched, repaired or replaced is seen at once
        if self._site is not None and (bundle.digest, stamp) == self._digest:
            return self._site
        if (self._failed and self._failed[:2] == (bundle.digest, stamp)
                and time.monotonic() - self._failed[2] < self.RETRY_S):
            raise self._failed[3].with_traceback(None)  # its old traceback dropped: re-raising would grow it
        try:
            site = build_site(bundle)
        except Exception as exc:
            self._failed = (bundle.digest, stamp, time.monotonic(), exc)
            raise
        if runtime_stamp() != stamp and not again:  # changed while it was read: this build may mix two
            return self._current(again=True)
        old = self._site.files if self._site is not None else {}
        self._gz = {rel: z for rel, z in self._gz.items() if old.get(rel) == site.files.get(rel)}  # unchanged files
        self._site, self._digest, self._failed = site, (bundle.digest, stamp), None
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


# Every response says what it may load and that it may not be framed or sniffed. The results page
# runs no script, and its only style is CSS above (by hash: an injected <style> or style= is not
# applied); the phone app runs its own modules and the WASM runtime (which needs
# 'wasm-unsafe-eval'), its threads are workers of its own files, and its thumbnails are blob: URLs
# (checked in Chromium with no violation: tests/test_http_trust.py). No 'unsafe-eval': a test
# driver's string predicates must be functions (page.wait_for_function("() => ...")).
PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'sha256-"
            + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
            + "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
APP_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; img-src 'self' blob:; "
           "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
NONE_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
SECURITY = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
SERVER_NAME = "fracture-edge"  # the Server header: no Python version

TOKEN_FILE = "page-token"  # in the data folder, 0600
TOKEN_COOKIE = "fracture_edge_token"
TOKEN_DAYS = 400  # the longest a browser keeps a cookie
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_DNS_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def valid_token(token: str) -> bool:
    return bool(_TOKEN_CHARS.match(token or ""))


def load_token(data: Path) -> tuple:
    """(token, note): the page's access token, made once and kept in DATA/page-token (0600).
    A file that is not a plain 0600 file of ours, or holds no valid token, is replaced (it may
    have been read by others); a data folder that cannot be written gets a token for this run
    only. `note` says which of these happened, for the console (None: the stored one was used)."""
    path = Path(data) / TOKEN_FILE
    why = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            token = os.read(fd, 256).decode("ascii", "replace").strip() if stat.S_ISREG(st.st_mode) else ""
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_uid != os.geteuid() or st.st_mode & 0o077:
            why = f"was readable or owned by others (mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid})"
        elif not valid_token(token):
            why = "holds no valid token"
        else:
            return token, None
    except FileNotFoundError:
        pass
    except OSError as exc:  # a symlink (ELOOP), a folder, unreadable
        why = f"cannot be read ({exc.strerror or exc})"
    token = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return token, (f"{path}: cannot be written ({exc.strerror or exc}); this run's access token is new and "
                       "lasts until the service stops")
    return token, (f"{path} {why}: replaced by a new access token; links given out before no longer work"
                   if why else f"new access token made and kept in {path}")


def _ip(text: str):
    """An address (IPv4-mapped IPv6 as IPv4, zone dropped), or None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if getattr(ip, "ipv4_mapped", None) else ip


def normal_host(name: str) -> str:
    """A name or address as the Host check compares it: lower case, no trailing dot, addresses
    in their one canonical form."""
    name = name.strip().strip("[]").lower()
    name = name[:-1] if name.endswith(".") else name
    ip = _ip(name)
    return name if ip is None else str(ip)


def parse_host(value: Optional[str]) -> Optional[tuple]:
    """(name, port or None) from a Host header, or None if it is not one: 'name', 'name:port',
    '[v6]', '[v6]:port', a bare IPv6 address."""
    if not value or len(value) > 300 or any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in value):
        return None
    port = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if ":" not in name or _ip(name) is None:  # brackets hold an IPv6 address, nothing else
            return None
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif value.count(":") == 1:
        name, port = value.split(":")
    elif ":" in value:
        if _ip(value) is None:
            return None
        name = value
    else:
        name = value
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            return None
        port = int(port)
    name = normal_host(name)
    if not name or (_ip(name) is None and not _DNS_NAME.match(name)):
        return None
    return name, port


def _ipv6_addresses() -> List[str]:
    """This machine's IPv6 interface addresses (Linux), without opening a socket."""
    out = []
    try:
        with open("/proc/net/if_inet6") as fh:
            for line in fh:
                h = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(h))))
    except (OSError, ValueError, IndexError):
        pass
    return out


class HostCheck:
    """The names and addresses this server answers to. A page elsewhere that makes its own name
    resolve to this device (DNS rebinding) sends its own name as Host and is refused.

    Allowed: loopback names and addresses, the address it is bound to (all of this machine's
    interface addresses when bound to 0.0.0.0 or ::, re-read when an unknown address is asked
    for, so a new DHCP lease is followed), its host name and host name.local, and `extra` (the
    name it was started on, serve --host NAME, as start_page adds it; --allowed-host and
    --tls-name). A port, when given, must be the served one."""

    def __init__(self, extra: Sequence[str] = ()):
        hostname = socket.gethostname()
        self.names = {normal_host(n) for n in (*LOOPBACK_NAMES, hostname, f"{hostname}.local", *extra) if n}
        self._addresses: Optional[set] = None

    def _local_addresses(self, bound: str) -> set:
        ip = _ip(bound)
        if ip is not None and not ip.is_unspecified:
            return {str(ip)}
        from .tls import interface_addresses
        return {normal_host(a) for a in (*interface_addresses(), *_ipv6_addresses())}

    def allows(self, header: Optional[str], bound: str, port: int) -> bool:
        parsed = parse_host(header)
        if parsed is None:
            return False
        name, asked_port = parsed
        if asked_port is not None and asked_port != port:
            return False
        if name in self.names:
            return True
        ip = _ip(name)
        if ip is None:
            return False  # a name: only those above (`bound` is an address, whatever --host named)
        if ip.is_loopback:
            return True
        if ip.is_unspecified:  # 0.0.0.0 is where the server listens, not an address a page is opened at
            return False
        if self._addresses is None or name not in self._addresses:
            self._addresses = self._local_addresses(bound)
        return name in self._addresses


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the page on this machine."""
    ip = _ip(host.strip("[]"))
    return host.lower() in LOOPBACK_NAMES if ip is None else ip.is_loopback


class PageHandler(BaseHTTPRequestHandler):
    """One request to the results page or the phone app. What it serves is given by make_handler,
    as class attributes of a subclass: the ledger, the store, the status lines, the app, the CA,
    the Host check and the token."""

    ledger: Ledger
    store: Path
    app: Optional[AppSite] = None
    ca_crt: Optional[Path] = None
    hosts: HostCheck
    token: Optional[str] = None

    @staticmethod
    def status() -> Sequence[str]:
        return ()

    timeout = 20  # an idle or slow client loses its connection; it does not hold a thread forever
    server_version, sys_version = SERVER_NAME, ""
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"  # http.server's own errors: no HTML, no details

    def version_string(self) -> str:
        return SERVER_NAME

    def send_response(self, code, message=None):
        self._sent_headers = set()
        super().send_response(code, message)

    def send_header(self, keyword, value):
        getattr(self, "_sent_headers", set()).add(keyword.lower())
        super().send_header(keyword, value)

    def end_headers(self):
        sent = getattr(self, "_sent_headers", set())
        for k, v in {**SECURITY, "Content-Security-Policy": NONE_CSP}.items():
            if k.lower() not in sent:
                super().send_header(k, v)
        super().end_headers()

    def _send(self, code: int, body: bytes, ctype: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {"Cache-Control": "no-store"}).items():
            self.send_header(k, v)
        if getattr(self, "_cookie", None):
            self.send_header("Set-Cookie", self._cookie)
        self.end_headers()
        self.wfile.write(body)

    def _text(self, code: int, text: str, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8",
                   {"Cache-Control": "no-store", **(headers or {})})

    def _authorized(self, query: str) -> bool:
        """The token from the cookie, the query (then kept as a cookie, so the page's images,
        its refresh and /app/ work without it) or an Authorization header."""
        given = []
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
            if TOKEN_COOKIE in cookie:
                given.append(cookie[TOKEN_COOKIE].value)
        except CookieError:
            pass
        auth = self.headers.get("Authorization", "")
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() == "bearer":
            given.append(cred.strip())
        elif scheme.lower() == "basic":
            try:
                given.append(base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")[2])
            except (ValueError, UnicodeDecodeError):
                pass
        from_query = urllib.parse.parse_qs(query).get("token", [])
        ok = any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given + from_query[:1])
        if ok and from_query and hmac.compare_digest(from_query[0].encode(), self.token.encode()):
            secure = "; Secure" if self.ca_crt is not None else ""
            self._cookie = (f"{TOKEN_COOKIE}={self.token}; Path=/; Max-Age={TOKEN_DAYS * 86400}; HttpOnly; "
                            f"SameSite=Strict{secure}")
        return ok

    def _app(self, path: str):
        if self.app is None:
            return self._text(404, "not found")
        if path == "/app":
            self.send_response(301)
            self.send_header("Location", "/app/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        rel = path[len("/app/"):] or "index.html"
        gzip_ok = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        from .webapp import RuntimeMissing
        try:
            got = self.app.get(rel, gzip_ok)
        except RuntimeMissing as exc:
            log.warning("the phone app cannot be built: %s", exc)  # no traceback: the reason is the message
            return self._text(503, "the phone app's runtime is not installed on this device yet. The person who "
                                   "installed it runs `python -m device webapp --fetch-runtime` with the device's "
                                   "Python (see docs/device.md); the app is served here as soon as that finishes")
        except Exception:  # noqa: BLE001 - the results page must stay up whatever the app's state
            log.exception("the phone app cannot be built")  # the reason (with paths) goes to the log only
            return self._text(503, "the phone app is not available on this device now; the service log says why")
        if got is None:
            return self._text(404, "not found")
        body, ctype, zipped = got
        # no-cache: the service worker keeps the offline copy; the server is asked each time online
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": APP_CSP, **ISOLATION}
        if zipped:
            headers.update({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return self._send(200, body, ctype, headers)

    def _image(self, folder: str, name: str):
        """A stored overlay, read only if it is a plain file (never through a link)."""
        try:
            fd = os.open(self.store / folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return self._text(404, "not found")
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return self._text(404, "not found")
            body = fh.read()
        return self._send(200, body, "image/jpeg" if name.endswith(".jpg") else "image/png")

    def do_GET(self):  # noqa: N802 - http.server's name
        self._cookie = None
        try:
            return self._get()
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception:  # noqa: BLE001 - one bad request must not show a traceback or a path
            log.exception("results page: request failed")
            try:
                self._text(500, "internal error; the service log says more")
            except OSError:
                pass
            return None

    def _get(self):
        bound, port = self.server.server_address[:2]
        if not self.hosts.allows(self.headers.get("Host"), bound, port) or len(self.headers.get_all("Host") or []) > 1:
            return self._text(421, "this device does not answer to that name; open it by its address, or start "
                                   "serve with --allowed-host NAME")
        path, _, query = self.path.partition("?")
        if path == "/ca.crt" and self.ca_crt is not None:  # the device's own CA, for phones to install once
            return self._send(200, self.ca_crt.read_bytes(), "application/x-x509-ca-cert",
                              {"Content-Disposition": 'attachment; filename="fracture-edge-ca.crt"'})
        if self.token is not None and not self._authorized(query):
            return self._text(401, "this device's results need its access link (http(s)://ADDRESS:PORT/?token=..., "
                                   "shown on the device's console when serve started), or the token as the password",
                              {"WWW-Authenticate": 'Basic realm="fracture-edge results", charset="UTF-8"'})
        if path == "/app" or path.startswith("/app/"):
            return self._app(path)
        if path == "/":
            # backslashreplace: a file name that is not UTF-8 (a Windows share) is shown escaped
            return self._send(200, render(self.ledger.latest(LATEST), list(self.status())).encode("utf-8", "backslashreplace"),
                              "text/html; charset=utf-8", {"Cache-Control": "no-store", "Content-Security-Policy": PAGE_CSP})
        if path == "/api/results":
            return self._send(200, json.dumps(self.ledger.latest(LATEST)).encode(), "application/json")
        m = _IMAGE.match(path)
        if m:
            return self._image(m.group(1), m.group(2))
        return self._text(404, "not found")

    def log_message(self, fmt, *args):  # no request log: file names could identify a patient
        pass



def make_handler(ledger: Ledger, store: Path, status: Callable[[], Sequence[str]] = lambda: (),
                 app: Optional[AppSite] = None, ca_crt: Optional[Path] = None,
                 allowed_hosts: Sequence[str] = (), token: Optional[str] = None):
    """A PageHandler serving these. `allowed_hosts`: names the page answers to beside those
    HostCheck always allows; `token`: required (cookie, ?token=, or HTTP Basic/Bearer) for
    everything but /ca.crt; None: no token (the page is on loopback, or the operator said --no-token)."""
    return type("Handler", (PageHandler,), {"ledger": ledger, "store": store, "status": staticmethod(status),
                                            "app": app, "ca_crt": ca_crt, "hosts": HostCheck(allowed_hosts),
                                            "token": token})


def _server_class(base, host: str):
    """`base`, over IPv6 when host is an IPv6 address (--host ::)."""
    ip = _ip(host.strip("[]"))
    if ip is not None and ip.version == 6:
        return type(base.__name__ + "6", (base,), {"address_family": socket.AF_INET6})
    return base


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
               tls=None, allowed_hosts: Sequence[str] = (), token: Optional[str] = None) -> ThreadingHTTPServer:
    """Raises OSError (address in use, or not this machine's) for the caller to report in one line.
    `bundle`: the service's current bundle, for the phone app at /app/ (none: no app).
    `tls`: (ssl context, CA certificate path) to serve HTTPS, and the CA at /ca.crt.
    `allowed_hosts`: more names the page answers to (HostCheck), beside `host` itself (the server
    knows only the address it is bound to: the access link names --host); `token`: required of clients."""
    app = AppSite(bundle) if bundle is not None else None
    bind = host.strip("[]")
    ip = _ip(bind)
    named = [] if not bind or (ip is not None and ip.is_unspecified) else [host]  # 0.0.0.0 and :: are not a Host
    handler = make_handler(ledger, Path(store), status, app, tls[1] if tls else None, [*named, *allowed_hosts], token)
    if tls:
        server = _server_class(TLSServer, bind)((bind, port), handler, tls[0])
    else:
        server = _server_class(ThreadingHTTPServer, bind)((bind, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
