"""HTTPS for the clinic's own network: a local certificate authority made on the device.

A phone treats an http:// address on the clinic's Wi-Fi as insecure: the browser then refuses the
service worker (no offline copy), the camera (getUserMedia) and WebCrypto (signature checks).
Public certificates need a public name and the internet; a clinic has neither. So the device
makes its own CA once, the phone installs that CA's certificate once (downloaded from
/ca.crt, checked by the fingerprint `serve` prints), and the device's server certificate, signed
by it, names every address the phones use. Keys stay in the data folder (mode 0600).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Iterable, List, Tuple

SERVER_DAYS = 397  # what browsers accept for a server certificate; renewed 30 days before it ends
CA_DAYS = 3650
CA_NAME = "fracture-edge clinic device CA"


def local_names(host: str) -> List[str]:
    """Names and addresses a phone may use for this device: the --host address, this machine's
    LAN address (the one its default route leaves by; no packet is sent), its hostname and .local."""
    names = {"localhost", "127.0.0.1"}
    if host not in ("", "0.0.0.0", "::"):
        names.add(host)
    hostname = socket.gethostname()
    names.update({hostname, f"{hostname}.local"})
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET address: connect() on UDP only picks a route
            names.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(names)


def _san(names: Iterable[str]):
    from cryptography import x509
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _load(folder: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    return ca, ca_key


def _make_ca(folder: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{CA_NAME} ({socket.gethostname()})")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(folder / "ca.key", _pem_key(key))
    (folder / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _server_current(folder: Path, names: List[str]) -> bool:
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    except (OSError, ValueError):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return left > datetime.timedelta(days=30) and set(names) <= have and (folder / "server.key").is_file()


def ensure_certificates(folder: Path, names: List[str]) -> Tuple[Path, Path, Path]:
    """(server.crt, server.key, ca.crt) in `folder`: the CA made once, the server certificate
    (re)made when it lacks one of `names` or nears its end."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (folder / "ca.crt").is_file() and (folder / "ca.key").is_file():
        ca, ca_key = _load(folder)
    else:
        ca, ca_key = _make_ca(folder)
    if not _server_current(folder, names):
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
                .add_extension(_san(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(folder / "server.key", _pem_key(key))
        (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM) +
                                            ca.public_bytes(serialization.Encoding.PEM))
    return folder / "server.crt", folder / "server.key", folder / "ca.crt"


def fingerprint(ca_crt: Path) -> str:
    """SHA-256 of the CA certificate (DER), as phones show it: AA:BB:..."""
    der = ssl.PEM_cert_to_DER_cert(ca_crt.read_text())
    d = hashlib.sha256(der).hexdigest().upper()
    return ":".join(d[i:i + 2] for i in range(0, len(d), 2))


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
