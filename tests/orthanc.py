"""A real PACS for the referral tests: Orthanc from Debian's packages (`orthanc`, with the
`orthanc-dicomweb` plugin; .ci/run installs them), on 127.0.0.1 with a temporary configuration
and storage, started and stopped by its PID."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "clinic", "s3cret-for-tests"


def available() -> Optional[str]:
    """None when Orthanc and its DICOMweb plugin are installed, else what is missing."""
    if not os.path.exists(BINARY):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def _free_ports(n: int) -> List[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Orthanc:
    def __init__(self, root: Path, aet: str = "PACS"):
        self.root, self.aet, self.tls = Path(root), aet, False
        self.http_port, self.dicom_port = _free_ports(2)
        self.proc: Optional[subprocess.Popen] = None
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpTimeout": 30, "StableAge": 1,
            "OverwriteInstances": False, "ConcurrentJobs": 1, "SaveJobs": False,
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def dicomweb(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def node(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60.0) -> "Orthanc":
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([BINARY, str(self.root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): "
                                   f"{(self.root / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def get(self, path: str):
        import ssl

        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.http_port}{path}")
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        context = ssl._create_unverified_context() if self.tls else None  # the test's own reads, not the device's
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def studies(self) -> List[Dict]:
        return [self.get(f"/studies/{s}") for s in self.get("/studies")]

    def instances_of(self, study_id: str) -> List[Dict]:
        return self.get(f"/studies/{study_id}/instances")

    def new_instance_events(self) -> int:
        """How many instances Orthanc stored as new (a duplicate UID is not a new instance)."""
        changes = self.get("/changes?limit=10000")
        return sum(1 for c in changes["Changes"] if c["ChangeType"] == "NewInstance")


class TlsProxy:
    """HTTPS in front of Orthanc's HTTP port: TLS terminated here with the given certificate, the
    bytes piped on to 127.0.0.1:`port`. A PACS behind a TLS front end, as district PACSes often are."""

    def __init__(self, port: int, context):
        import socketserver
        import threading

        target = port

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    tls = context.wrap_socket(self.request, server_side=True)
                except OSError:
                    return  # a client that did not trust the certificate hung up
                plain = socket.create_connection(("127.0.0.1", target))

                def copy(src, dst):
                    try:
                        while True:
                            data = src.recv(65536)
                            if not data:
                                break
                            dst.sendall(data)
                    except OSError:
                        pass
                    finally:
                        for s in (src, dst):
                            try:
                                s.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass

                back = threading.Thread(target=copy, args=(plain, tls), daemon=True)
                back.start()
                copy(tls, plain)
                back.join(30)
                tls.close()
                plain.close()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Pipe)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_certificates(folder: Path):
    """(server cert, server key, CA cert) for 127.0.0.1, from a CA made here (never trusted by the system)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test PACS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "server.crt", folder / "server.key", folder / "ca.crt"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths
