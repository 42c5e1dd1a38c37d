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
from typing import Iterable, List, Optional, Tuple

SERVER_DAYS = 397  # what browsers accept for a server certificate; renewed 30 days before it ends
CA_DAYS = 3650
CA_NAME = "fracture-edge clinic device CA"


def interface_addresses() -> List[str]:
    """Every IPv4 address of this machine's interfaces (Linux), loopback included: a clinic LAN
    without internet has no default route to find the LAN address by."""
    out = []
    try:
        import fcntl
        import struct
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                    out.append(socket.inet_ntoa(packed[20:24]))
                except OSError:  # an interface without an IPv4 address
                    continue
    except (ImportError, OSError, AttributeError):
        pass
    return out


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        name = name.lower()
        return name[:-1] if name.endswith(".") else name


def local_names(host: str, extra: Iterable[str] = ()) -> List[str]:
    """Names and addresses a phone may use for this device: the --host address, every interface's
    address, its hostname and hostname.local, and any `extra` (serve --tls-name)."""
    names = {"localhost", "127.0.0.1", *interface_addresses(), *extra}
    if host not in ("", "0.0.0.0", "::"):
        names.add(host)
    hostname = socket.gethostname()
    names.update({hostname, f"{hostname}.local"})
    return sorted({_normal(n) for n in names if n})


def has_lan_address(names: Iterable[str]) -> bool:
    for n in names:
        try:
            ip = ipaddress.ip_address(n)
        except ValueError:
            continue
        if not ip.is_loopback:
            return True
    return False


def _san(names: Iterable[str]):
    from cryptography import x509
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Written beside, then renamed over: never half a key, never through a link left there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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


# The CA may vouch only for addresses and names of a local network: were its key taken from the
# device, it could not be used to impersonate any public site to the phones that trust it.
# A DNS name constraint always covers the name and every name below it (RFC 5280, 4.2.1.10): it
# cannot say "this exact name". So the device's own host name is not a constraint (a host named
# `clinic` would let the CA vouch for every name under the public TLD .clinic); phones reach the
# device by its address or by HOSTNAME.local, and names outside these zones are left out of its
# certificate (serve warns).
PERMITTED_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                      "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128")
PERMITTED_DNS = ("local", "localhost", "lan", "home.arpa", "internal")


def _constraints():
    from cryptography import x509
    return x509.NameConstraints(
        permitted_subtrees=[x509.IPAddress(ipaddress.ip_network(n)) for n in PERMITTED_NETWORKS]
        + [x509.DNSName(d) for d in PERMITTED_DNS], excluded_subtrees=None)


def _ca_problem(ca, ca_key) -> Optional[str]:
    """Why a CA found in the folder must not be used (made by an earlier version with broader
    constraints, or a key that is not its own), or None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if ca.public_key().public_bytes(*raw) != ca_key.public_key().public_bytes(*raw):
        return "its key is not its own"
    try:
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return "it has no name constraints (it may vouch for any site)"
    nets = {ipaddress.ip_network(n) for n in PERMITTED_NETWORKS}
    for g in nc.permitted_subtrees or [None]:
        if isinstance(g, x509.DNSName) and g.value.lower() in PERMITTED_DNS:
            continue
        if isinstance(g, x509.IPAddress) and g.value in nets:
            continue
        what = f"every name under {g.value!r}" if isinstance(g, x509.DNSName) else f"{getattr(g, 'value', 'any name')}"
        return f"it may vouch for {what}, which is not only this clinic's network"
    return None


def outside_constraints(names: Iterable[str]) -> List[str]:
    """Names the device's CA may not vouch for (phones would refuse them)."""
    bad = []
    for n in names:
        try:
            ip = ipaddress.ip_address(n)
            if not any(ip in ipaddress.ip_network(net) for net in PERMITTED_NETWORKS):
                bad.append(n)
        except ValueError:
            name = _normal(n)
            if not any(name == d or name.endswith("." + d) for d in PERMITTED_DNS):
                bad.append(n)
    return bad


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
            .add_extension(_constraints(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(folder / "ca.key", _pem_key(key))
    _write_private(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _server_current(folder: Path, names: List[str], ca) -> bool:
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
        cert.verify_directly_issued_by(ca)  # not one from a CA since replaced
    except Exception:  # noqa: BLE001 - unreadable, another issuer, a bad signature: make a new one
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return left > datetime.timedelta(days=30) and set(names) <= have and (folder / "server.key").is_file()


def ensure_certificates(folder: Path, names: List[str], notes: Optional[List[str]] = None) -> Tuple[Path, Path, Path]:
    """(server.crt, server.key, ca.crt) in `folder`: the CA made once, the server certificate
    (re)made when it lacks one of `names` or nears its end. Names the CA may not vouch for are
    left out (one would make phones refuse the whole certificate). A CA from an earlier version
    that may vouch for more than local names is replaced, and `notes` says so for the console."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    outside = set(outside_constraints(names))
    names = [n for n in names if n not in outside]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (folder / "ca.crt").is_file() and (folder / "ca.key").is_file():
        ca, ca_key = _load(folder)
        why = _ca_problem(ca, ca_key)
        if why:
            old = fingerprint(folder / "ca.crt")
            ca, ca_key = _make_ca(folder)
            if notes is not None:
                notes.append(f"the device's CA (SHA-256 {old}) was replaced: {why}. On each phone, remove the old "
                             f"'{CA_NAME}' certificate and install the new one from /ca.crt "
                             f"(SHA-256 {fingerprint(folder / 'ca.crt')})")
    else:
        ca, ca_key = _make_ca(folder)
    if not _server_current(folder, names, ca):
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,  # not a host name: names are in the SAN
                                                            f"fracture-edge device ({socket.gethostname()})")]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
                .add_extension(_san(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(folder / "server.key", _pem_key(key))
        _write_private(folder / "server.crt", cert.public_bytes(serialization.Encoding.PEM) +
                       ca.public_bytes(serialization.Encoding.PEM), 0o644)
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
