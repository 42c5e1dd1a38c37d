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
        self.root, self.aet = Path(root), aet
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
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

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
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        with urllib.request.urlopen(req, timeout=10) as r:
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
