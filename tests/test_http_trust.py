"""The results page and the phone app's server hold against a hostile page or network: a Host
allow-list (DNS rebinding), CSP and the other response headers, no Python version or install path
in any response, an access token off loopback, and a device CA that vouches for no public name.
Each test here failed before this work."""

from __future__ import annotations

import base64
import datetime
import http.client
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from device.page import HostCheck, load_token, parse_host, start_page
from device.service import Ledger

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken-for-tests-0123456789"


class StubApp:
    """Stands in for the phone app (device/page.py's AppSite) without building it."""

    def __init__(self, fail: Exception = None):
        self.fail = fail

    def get(self, rel, gzip_ok):
        if self.fail:
            raise self.fail
        return (b"<!doctype html><title>app</title>", "text/html; charset=utf-8", False) if rel == "index.html" else None


@pytest.fixture
def page(tmp_path):
    servers = []

    def make(**kw):
        ledger = Ledger(tmp_path / "results.jsonl")
        srv = start_page(ledger, tmp_path / "store", "127.0.0.1", 0, **kw)
        servers.append(srv)
        return srv.server_address[1]

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def get(port: int, path: str = "/", host="default", headers=None, method: str = "GET"):
    """(status, headers, body) of one request with exactly the Host header given (None: none)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    hosts = [f"127.0.0.1:{port}"] if host == "default" else ([] if host is None else
                                                                host if isinstance(host, list) else [host])
    for h in hosts:
        conn.putheader("Host", h)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    out = r.status, r.headers, r.read()
    conn.close()
    return out


def test_host_headers_are_parsed_as_browsers_send_them():
    assert parse_host("LOCALHOST.:8080") == ("localhost", 8080)
    assert parse_host("[::1]:8080") == ("::1", 8080) and parse_host("[::1]") == ("::1", None)
    assert parse_host("[::FFFF:127.0.0.1]:80") == ("127.0.0.1", 80)
    assert parse_host("[fe80::1%25eth0]:8080") == ("fe80::1", 8080)
    for bad in ("", "a b", "[::1", "[127.0.0.1]", "localhost:", "localhost:99999", "localhost:8x", "x/y",
                "evil.example\r\nX: y", "é.example"):
        assert parse_host(bad) is None, bad
    check = HostCheck(["clinic-pi.example"])
    for ok in ("localhost:8080", "127.0.0.1", "127.0.0.2:8080", "[::1]:8080", "Localhost.", "clinic-pi.example.",
               f"{socket.gethostname()}.local:8080", socket.gethostname().upper()):
        assert check.allows(ok, "127.0.0.1", 8080), ok
    for bad in ("evil.example", "127.0.0.1.nip.io", "localhost:8081", "0.0.0.0:8080", "10.9.9.9", "[2001:db8::1]",
                "localhost.evil.example", "clinic-pi.example.evil", None):
        assert not check.allows(bad, "0.0.0.0", 8080), bad
    assert HostCheck().allows("192.168.7.20:8080", "192.168.7.20", 8080)  # the address it was started on
    assert not HostCheck().allows("192.168.7.21:8080", "192.168.7.20", 8080)


def test_a_dns_rebinding_page_cannot_read_the_results(page):
    """A page at evil.example that re-resolves its name to this device sends Host: evil.example."""
    port = page()
    assert get(port, "/api/results")[0] == 200
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", f"localhost:{port + 1}",
                 None, [f"127.0.0.1:{port}", "evil.example"], f"0.0.0.0:{port}", "[::1"):
        status, headers, body = get(port, "/api/results", host=host)
        assert status == 421 and b"[" not in body, (host, status, body)
    for host in (f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}", "localhost", f"{socket.gethostname()}.local"):
        assert get(port, "/api/results", host=host)[0] == 200, host


def test_names_given_with_allowed_host_are_accepted(page):
    port = page(allowed_hosts=["Clinic-PI.example"])
    assert get(port, "/", host=f"clinic-pi.example.:{port}")[0] == 200
    assert get(port, "/", host=f"other.example:{port}")[0] == 421


def test_the_name_given_with_host_is_accepted(tmp_path, monkeypatch):
    """`serve --host NAME` printed http://NAME:PORT/?token=... and then refused that very name
    with 421: the Host check compared it with the address the server was bound to. Here NAME
    resolves to 127.0.0.1 (by the server's own bind, so no resolver is needed)."""
    import device.page as page_mod
    from http.server import ThreadingHTTPServer

    class Resolving(ThreadingHTTPServer):
        def server_bind(self):
            assert self.server_address[0] == "Clinic-PI.test"
            self.server_address = ("127.0.0.1", self.server_address[1])
            super().server_bind()

    monkeypatch.setattr(page_mod, "_server_class", lambda base, host: Resolving)
    srv = start_page(Ledger(tmp_path / "results.jsonl"), tmp_path / "store", "Clinic-PI.test", 0, token=TOKEN)
    try:
        port = srv.server_address[1]
        for host in (f"clinic-pi.test:{port}", "clinic-pi.test.", "CLINIC-PI.TEST"):
            assert get(port, f"/?token={TOKEN}", host=host)[0] == 200, host
        assert get(port, f"/?token={TOKEN}", host=f"other.test:{port}")[0] == 421
        assert get(port, f"/?token={TOKEN}", host=f"clinic-pi.test:{port + 1}")[0] == 421
    finally:
        srv.shutdown()
        srv.server_close()


def test_ipv6_literal_hosts_on_an_ipv6_server(tmp_path):
    try:
        srv = start_page(Ledger(tmp_path / "results.jsonl"), tmp_path, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        port = srv.server_address[1]
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        conn.request("GET", "/api/results")  # http.client sends Host: [::1]:PORT
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        conn.request("GET", "/api/results", headers={"Host": f"[2001:db8::1]:{port}"})
        assert conn.getresponse().status == 421
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()


def _assert_hardened(headers, body: bytes, where):
    csp = headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp.replace(
        "wasm-unsafe-eval", ""), where
    assert headers.get("X-Content-Type-Options") == "nosniff" and headers.get("X-Frame-Options") == "DENY", where
    assert headers.get("Server") == "fracture-edge", (where, headers.get("Server"))
    text = body.decode("utf-8", "replace")
    assert "Python" not in text and "Traceback" not in text and str(ROOT) not in text and "/site-packages" not in text, where


def test_every_response_is_hardened_and_names_no_version_or_path(page, tmp_path):
    port = page(bundle=None)
    for path, method, status in (("/", "GET", 200), ("/api/results", "GET", 200), ("/nothing", "GET", 404),
                                 ("/img/../../etc/passwd", "GET", 404), ("/", "POST", 501), ("/", "DELETE", 501)):
        got, headers, body = get(port, path, method=method)
        assert got == status, (path, method, got)
        _assert_hardened(headers, body, (path, method))
    got, headers, body = get(port, "/", host="evil.example")
    assert got == 421
    _assert_hardened(headers, body, "421")
    csp = get(port, "/")[1]["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp and "style-src 'sha256-" in csp
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # http.server's own error page
        s.sendall(b"GET / extra HTTP/1.1\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 400") and b"Python" not in raw and b"<" not in body
    assert b"X-Content-Type-Options: nosniff" in head and b"frame-ancestors 'none'" in head


def _serve_app(tmp_path: Path, app):
    """make_handler with a stand-in app, served as test_webapp.py serves one."""
    import threading
    from http.server import ThreadingHTTPServer

    from device.page import make_handler

    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Ledger(tmp_path / "results.jsonl"), tmp_path, app=app))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_failing_app_or_ledger_shows_no_path_in_the_response(tmp_path, monkeypatch):
    secret_path = "/opt/fracture-edge/venv/lib/python3.11/site-packages/fracture_edge_webapp/vendor"
    srv = _serve_app(tmp_path, StubApp(FileNotFoundError(2, "No such file", secret_path)))
    try:
        port = srv.server_address[1]
        status, headers, body = get(port, "/app/")
        assert status == 503 and secret_path.encode() not in body and b"not available" in body
        _assert_hardened(headers, body, "503")
        monkeypatch.setattr(Ledger, "latest", lambda self, n: (_ for _ in ()).throw(OSError(5, "I/O error", str(tmp_path))))
        status, headers, body = get(port, "/api/results")
        assert status == 500 and str(tmp_path).encode() not in body
        _assert_hardened(headers, body, "500")
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_app_gets_its_own_policy_and_keeps_isolation(tmp_path):
    srv = _serve_app(tmp_path, StubApp())
    try:
        status, headers, body = get(srv.server_address[1], "/app/")
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 200 and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    csp = headers["Content-Security-Policy"]
    assert "'wasm-unsafe-eval'" in csp and "script-src 'self' 'wasm-unsafe-eval'" in csp
    _assert_hardened(headers, body, "/app/")


def test_a_token_is_asked_for_and_kept_as_a_strict_http_only_cookie(page, tmp_path):
    port = page(token=TOKEN, bundle=lambda: None)
    (tmp_path / "store" / ("a" * 32)).mkdir(parents=True)
    (tmp_path / "store" / ("a" * 32) / "gradcam.jpg").write_bytes(b"\xff\xd8jpeg")
    for path in ("/", "/api/results", "/app/", f"/img/{'a' * 32}/gradcam.jpg", "/?token=wrong" + TOKEN[5:]):
        status, headers, body = get(port, path)
        assert status == 401 and TOKEN.encode() not in body, path
        assert headers["WWW-Authenticate"].startswith("Basic")
        _assert_hardened(headers, body, path)
    status, headers, _ = get(port, f"/api/results?token={TOKEN}")
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"fracture_edge_token={TOKEN};")
    assert all(a in cookie for a in ("HttpOnly", "SameSite=Strict", "Path=/")) and "Secure" not in cookie
    jar = {"Cookie": f"fracture_edge_token={TOKEN}"}
    assert get(port, "/", headers=jar)[0] == 200
    assert get(port, f"/img/{'a' * 32}/gradcam.jpg", headers=jar)[2] == b"\xff\xd8jpeg"
    assert get(port, "/", headers={"Cookie": "fracture_edge_token=" + "x" * len(TOKEN)})[0] == 401
    assert get(port, "/", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert get(port, "/api/results", headers={"Authorization": f"Basic {basic}"})[0] == 200
    assert get(port, "/", host="evil.example", headers=jar)[0] == 421  # the Host check comes first


def test_the_token_is_made_once_kept_0600_and_replaced_when_exposed(tmp_path):
    token, note = load_token(tmp_path)
    path = tmp_path / "page-token"
    assert len(token) >= 22 and "new access token" in note and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_token(tmp_path) == (token, None)
    path.chmod(0o644)  # others could have read it
    again, note = load_token(tmp_path)
    assert again != token and "readable" in note and oct(path.stat().st_mode & 0o777) == "0o600"
    target = tmp_path / "elsewhere"
    target.write_text("Zm9yZWlnbi10b2tlbi0wMTIzNDU2Nzg5\n")
    target.chmod(0o600)
    path.unlink()
    path.symlink_to(target)  # not followed, not written through
    third, note = load_token(tmp_path)
    assert third not in (again, "Zm9yZWlnbi10b2tlbi0wMTIzNDU2Nzg5") and "cannot be read" in note
    assert not path.is_symlink() and target.read_text() == "Zm9yZWlnbi10b2tlbi0wMTIzNDU2Nzg5\n"
    gone, note = load_token(tmp_path / "missing")  # a data folder that cannot be written: this run only
    assert len(gone) >= 22 and "until the service stops" in note


def _serve(tmp_path: Path, until: str, *flags: str):
    """Start `python -m device serve` on port 0 and read its console until a line holds `until`:
    (process, the lines, the page's port)."""
    import threading
    import time

    env = {**os.environ, "FRACTURE_EDGE_WATCH": ""}
    proc = subprocess.Popen([sys.executable, "-m", "device", "serve", "--data", str(tmp_path / "data"), "--port", "0",
                             "--in-process", "--interval", "60", *flags], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list = []
    threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 180  # a bound on a hang, not a timing assertion
    while not any(until in x for x in list(lines)):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail("serve did not start as expected:\n" + "\n".join(lines))
        time.sleep(0.2)
    page_line = next(x for x in lines if "results page on" in x)
    return proc, list(lines), int(page_line.split("://", 1)[1].split("/")[0].rsplit(":", 1)[1])


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_serve_on_the_lan_warns_and_requires_the_token_it_prints(tmp_path):
    proc, lines, port = _serve(tmp_path, "?token=", "--host", "0.0.0.0")
    try:
        text = "\n".join(lines)
        assert "readable by anyone on this network who has the access link" in text, text
        token = (tmp_path / "data" / "page-token").read_text().strip()
        assert f":{port}/?token={token}" in text
        assert get(port, "/api/results")[0] == 401
        assert get(port, f"/api/results?token={token}")[0] == 200
    finally:
        _stop(proc)


def test_serve_with_no_token_says_loudly_that_anyone_can_read(tmp_path):
    proc, lines, port = _serve(tmp_path, "ANYONE", "--host", "0.0.0.0", "--no-token")
    try:
        assert any("readable by ANYONE on this network" in x for x in lines), lines
        assert get(port, "/api/results")[0] == 200
    finally:
        _stop(proc)
    bad = subprocess.run([sys.executable, "-m", "device", "serve", "--data", str(tmp_path / "d2"), "--token", "short"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--token" in bad.stderr


# ---------------------------------------------------------------------------------------------
# serve --https: the device's CA


def _verify(ca_pem: bytes, leaf, name: str) -> bool:
    from cryptography import x509
    from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError
    import ipaddress

    store = Store([x509.load_pem_x509_certificate(ca_pem)])
    try:
        subject = IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = DNSName(name)
    verifier = PolicyBuilder().store(store).time(datetime.datetime.now(datetime.timezone.utc)).build_server_verifier(subject)
    try:
        verifier.verify(leaf, [])
        return True
    except VerificationError:
        return False


def _forge(folder: Path, name: str):
    """What a thief of the device's CA key could sign: a certificate for any name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def test_a_host_named_like_a_public_tld_does_not_widen_the_ca(tmp_path, monkeypatch):
    """A device whose host name is `clinic` (a public TLD) made a CA that could vouch for
    www.clinic; now it vouches only for private addresses and reserved local zones."""
    pytest.importorskip("cryptography.x509.verification")
    from cryptography import x509

    from device.tls import PERMITTED_DNS, ensure_certificates, local_names

    monkeypatch.setattr(socket, "gethostname", lambda: "clinic")
    names = local_names("0.0.0.0", ["192.168.7.20"])
    cert, _, ca = ensure_certificates(tmp_path / "tls", names)
    nc = x509.load_pem_x509_certificate(ca.read_bytes()).extensions.get_extension_for_class(x509.NameConstraints).value
    assert {g.value for g in nc.permitted_subtrees if isinstance(g, x509.DNSName)} == set(PERMITTED_DNS)
    assert not _verify(ca.read_bytes(), _forge(tmp_path / "tls", "www.clinic"), "www.clinic")
    assert not _verify(ca.read_bytes(), _forge(tmp_path / "tls", "clinic"), "clinic")
    assert _verify(ca.read_bytes(), _forge(tmp_path / "tls", "clinic.local"), "clinic.local")
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "clinic" not in san.get_values_for_type(x509.DNSName) and "clinic.local" in san.get_values_for_type(x509.DNSName)
    for name in ("clinic.local", "192.168.7.20", "127.0.0.1"):
        assert _verify(ca.read_bytes(), leaf, name), name  # the device's own certificate still verifies


def test_a_ca_from_before_is_replaced_and_the_phones_are_told(tmp_path, monkeypatch):
    pytest.importorskip("cryptography.x509.verification")
    import device.tls as tls

    monkeypatch.setattr(socket, "gethostname", lambda: "clinic")
    from cryptography import x509

    def old_constraints():  # what the CA of the version before this one permitted
        return x509.NameConstraints(permitted_subtrees=[x509.DNSName(d) for d in (*tls.PERMITTED_DNS, "clinic")],
                                    excluded_subtrees=None)

    monkeypatch.setattr(tls, "_constraints", old_constraints)
    _, _, ca = tls.ensure_certificates(tmp_path / "tls", ["127.0.0.1", "clinic.local"])
    old = ca.read_bytes()
    assert _verify(old, _forge(tmp_path / "tls", "www.clinic"), "www.clinic")  # the defect itself
    monkeypatch.undo()
    monkeypatch.setattr(socket, "gethostname", lambda: "clinic")
    notes = []
    cert, _, ca = tls.ensure_certificates(tmp_path / "tls", ["127.0.0.1", "clinic.local"], notes)
    assert ca.read_bytes() != old and len(notes) == 1 and "replaced" in notes[0] and "'clinic'" in notes[0]
    assert not _verify(ca.read_bytes(), _forge(tmp_path / "tls", "www.clinic"), "www.clinic")
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    assert _verify(ca.read_bytes(), leaf, "clinic.local")  # re-issued by the new CA
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"


# ---------------------------------------------------------------------------------------------
# In a browser: the policies do not break the page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt install chromium)")
def test_the_results_page_renders_under_its_policy_and_frames_are_refused(page, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    port = page(token=TOKEN)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            ctx = browser.new_context()
            ctx.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                                "(e) => window.__csp.push(e.violatedDirective));")
            tab = ctx.new_page()
            tab.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            assert tab.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(29, 53, 87)"
            assert tab.evaluate("window.__csp") == []
            tab.goto(f"http://127.0.0.1:{port}/")  # the cookie now stands in for the link
            assert "latest results" in tab.inner_text("h1")
            open_port = page()  # no token: only the frame headers stand between it and another site
            other = ctx.new_page()  # about:blank, no policy of ours: as a page of another site would be
            other.set_content(f"<iframe src='http://127.0.0.1:{open_port}/'></iframe>", wait_until="load")
            assert len(other.frames) == 2 and "latest results" not in other.frames[1].content(), "the page was framed"
        finally:
            browser.close()
