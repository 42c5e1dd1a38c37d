"""Refer flagged studies to the district PACS: an on-disk store-and-forward outbox.

A rural link drops; the outbox outlives it. Each referral is a folder `DATA/outbox/<record id>/`
holding the instances to send (device/referral.py: the original, the overlay as secondary
capture, the structured report) and `state.json` (what was sent, attempts, the next try, the
last error). It is made whole in a temporary folder, fsync'd and renamed into place, before the
answer's record is appended to the results log: a kill between the two leaves a referral whose
record is written when the image is read again, never a record whose referral is lost.

A sender thread tries what is due, oldest first, one instance at a time; each success is written
to `state.json` (atomically, fsync'd) before the next send. A failure backs off (30 s doubling to
an hour, with jitter) and shows on the results page with its reason. Every instance has a fixed
SOP Instance UID, so a send cut off by a kill and repeated after the restart stores nothing twice
at the PACS (a PACS keeps one instance per UID); the outbox itself marks each instance sent once.

Destinations (`--refer-to`): a DICOMweb STOW-RS URL (https; http only to this machine itself),
through dicomweb-client, with `--refer-credentials FILE` (readable by the service user only:
{"username": ..., "password": ...} or {"token": ...}); or a DICOM node `AE@host:port`, through a
pynetdicom C-STORE SCU. Nothing identifying is logged: records are named by their id.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from .fileops import fsync_dir

log = logging.getLogger("fracture_edge.outbox")

STATE = "state.json"
JOB = "job.json"
UNREFERRED = "not-referred.json"  # how many answers could not be referred, and the last reason
FIRST_BACKOFF_S = 30.0
MAX_BACKOFF_S = 3600.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ReferralError(ValueError):
    """A referral destination or its credentials cannot be used; the message says why."""


class SendError(Exception):
    """One send failed; `reason` is for the page (no patient data)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- destinations ---------------------------------------------------------------------------------

def read_credentials(path: Optional[Path]) -> Dict[str, str]:
    """{"username", "password"} or {"token"} from a JSON file only its owner may read."""
    if path is None:
        return {}
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReferralError(f"--refer-credentials {path}: cannot be read ({exc.strerror or exc})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ReferralError(f"--refer-credentials {path}: readable by others (mode {oct(st.st_mode & 0o777)}); "
                            f"make it the service user's only: chmod 600 {path}")
    try:
        creds = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReferralError(f"--refer-credentials {path}: not JSON ({exc})") from None
    if not isinstance(creds, dict) or not ({"username", "password"} <= set(creds) or "token" in creds):
        raise ReferralError(f"--refer-credentials {path}: needs \"username\" and \"password\", or \"token\"")
    return {k: str(v) for k, v in creds.items() if k in ("username", "password", "token")}


class DicomWeb:
    """STOW-RS to a DICOMweb service (dicomweb-client)."""

    def __init__(self, url: str, credentials: Dict[str, str], ca_file: Optional[Path] = None):
        parts = urlparse(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ReferralError(f"--refer-to {url!r}: not a DICOMweb URL (https://host/dicom-web) nor AE@host:port")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK:
            raise ReferralError(f"--refer-to {url}: plain http would carry patient images over the network "
                                "unencrypted; use https (http is allowed to this machine itself only)")
        self.url, self.credentials, self.ca_file = url.rstrip("/"), credentials, ca_file
        self._client = None

    def describe(self) -> str:
        p = urlparse(self.url)
        return f"DICOMweb {p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}{p.path}"

    def client(self):
        if self._client is None:
            import requests
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()
            if "token" in self.credentials:
                session.headers["Authorization"] = f"Bearer {self.credentials['token']}"
            elif self.credentials:
                session.auth = (self.credentials["username"], self.credentials["password"])
            if self.ca_file:
                # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override a session's own CA
                # (psf/requests#3829): the PACS's CA must win, so the environment is read for
                # proxies only.
                session.verify = str(self.ca_file)
                session.trust_env = False
                session.proxies.update(requests.utils.get_environ_proxies(self.url))
            self._client = DICOMwebClient(url=self.url, session=session)
        return self._client

    def send(self, item: bytes) -> None:
        from io import BytesIO

        import requests
        from pydicom import dcmread

        try:
            answer = self.client().store_instances(datasets=[dcmread(BytesIO(item))])
        except requests.HTTPError as exc:
            code = getattr(exc.response, "status_code", "?")
            raise SendError(f"the PACS answered HTTP {code}"
                            + (" (check --refer-credentials)" if code in (401, 403) else "")) from None
        except requests.exceptions.SSLError:
            raise SendError("TLS: the PACS's certificate is not trusted (--refer-ca)") from None
        except requests.RequestException as exc:
            raise SendError(f"cannot reach the PACS ({type(exc).__name__})") from None
        failed = getattr(answer, "FailedSOPSequence", None) if answer is not None else None
        if failed:  # 202 Accepted, with this instance among the failures
            reason = getattr(failed[0], "FailureReason", "?")
            raise SendError(f"the PACS did not store it (STOW-RS failure reason {reason})")


class DicomNode:
    """C-STORE to a DICOM node (pynetdicom)."""

    PATTERN = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")

    def __init__(self, text: str, calling_ae: str = "FRACTURE_EDGE"):
        m = self.PATTERN.match(text)
        if not m or not 0 < int(m["port"]) < 65536:
            raise ReferralError(f"--refer-to {text!r}: not AE@host:port (e.g. PACS@10.0.0.5:104) nor an https URL")
        self.ae_title, self.host, self.port, self.calling = m["ae"], m["host"], int(m["port"]), calling_ae

    def describe(self) -> str:
        return f"DICOM {self.ae_title}@{self.host}:{self.port}"

    def send(self, item: bytes) -> None:
        from io import BytesIO

        from pydicom import dcmread
        from pynetdicom import AE

        ds = dcmread(BytesIO(item))
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        syntaxes = list(dict.fromkeys([str(ds.file_meta.TransferSyntaxUID), "1.2.840.10008.1.2.1"]))
        ae.add_requested_context(ds.SOPClassUID, syntaxes)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        except OSError as exc:
            raise SendError(f"cannot reach the PACS ({exc.strerror or type(exc).__name__})") from None
        if assoc.is_rejected:
            raise SendError("the PACS rejected the association (is this device's AE title configured there?)")
        if not assoc.is_established:
            raise SendError("cannot reach the PACS (no association)")
        try:
            status = assoc.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:
            raise SendError(f"C-STORE not possible ({type(exc).__name__})") from None
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            raise SendError("no answer from the PACS (connection lost)")
        if code != 0 and not 0xB000 <= code <= 0xBFFF:  # warnings (coercion, ...) are stored instances
            raise SendError(f"the PACS refused it (status 0x{code:04X})")


def destination(text: str, credentials: Dict[str, str], calling_ae: str, ca_file: Optional[Path] = None):
    if "://" in text:
        return DicomWeb(text, credentials, ca_file)
    if credentials:
        raise ReferralError("--refer-credentials is for a DICOMweb URL; a DICOM node is trusted by its AE title")
    return DicomNode(text, calling_ae)


# --- the outbox -----------------------------------------------------------------------------------

@dataclass
class Job:
    folder: Path
    job: Dict
    state: Dict

    @property
    def rid(self) -> str:
        return self.folder.name


def _write_json(path: Path, value: Dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Outbox:
    """DATA/outbox/<record id>/ per referral still to send; DATA/outbox/sent/<record id>/ keeps
    what was sent (its job and state: the instances themselves are deleted once acknowledged)."""

    def __init__(self, folder: Path, dest, refer_all: bool = False):
        self.folder, self.dest, self.refer_all = Path(folder), dest, refer_all
        self.sent_folder = self.folder / "sent"
        self.recorded = lambda rid: True  # the service sets this: is the answer's record written?
        self._lock = threading.Lock()

    def recover(self, recorded=None) -> None:
        """Called by the service once it holds the data folder's lock: make the folders, and drop
        referrals a kill cut off while being made (they are made again when the image is read)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sent_folder.mkdir(exist_ok=True, mode=0o700)
        if recorded is not None:
            self.recorded = recorded
        for tmp in self.folder.glob(".new-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def wanted(self, record: Dict) -> bool:
        """Refer this answer? Positives always; every answer with --refer-all; never a refusal."""
        if record.get("probability") is None:
            return False
        return self.refer_all or record.get("decision") == "fractured"

    def add(self, rid: str, items: Sequence[Tuple[str, bytes]], record: Dict) -> bool:
        """Queue the items for record `rid` (once: False if it is queued already)."""
        from io import BytesIO

        from pydicom import dcmread

        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.folder / rid
        if (self.sent_folder / rid).exists():
            return False
        if final.exists():
            old = json.loads((final / JOB).read_text())
            if self._same_answer(old, record):
                return False
            if json.loads((final / STATE).read_text())["sent"]:
                log.warning("referral %s: read again with another answer, but part of it is sent already: kept",
                            rid)
                return False
            shutil.rmtree(final)  # queued by a reading that was never recorded (a kill, another bundle)
        tmp = self.folder / f".new-{rid}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        listed = []
        for n, (kind, data) in enumerate(items):
            name = f"{n}-{kind}.dcm"
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp / name, 0o600)
            listed.append({"file": name, "kind": kind, "sop": str(dcmread(BytesIO(data), stop_before_pixels=True)
                                                                      .SOPInstanceUID)})
        job = {"record": rid, "items": listed, "created_utc": _now(), "decision": record.get("decision"),
               "probability": record.get("probability"), "bundle_id": record.get("bundle_id")}
        _write_json(tmp / JOB, job)
        _write_json(tmp / STATE, {"sent": [], "attempts": 0, "next_try": 0.0, "last_error": None})
        os.replace(tmp, final)
        fsync_dir(self.folder)
        log.info("referral %s queued for %s (%d instances)", rid, self.dest.describe(), len(listed))
        return True

    @staticmethod
    def _same_answer(job: Dict, record: Dict) -> bool:
        return (job.get("decision"), job.get("probability"), job.get("bundle_id")) == \
            (record.get("decision"), record.get("probability"), record.get("bundle_id"))

    def discard(self, rid: str) -> None:
        """Drop a queued referral of which nothing is sent (its answer turned out not to be referred)."""
        final = self.folder / rid
        try:
            if final.is_dir() and not json.loads((final / STATE).read_text())["sent"]:
                shutil.rmtree(final)
                fsync_dir(self.folder)
        except (OSError, ValueError, KeyError):
            log.warning("referral %s: could not be withdrawn", rid)

    def note_unreferred(self, rid: str, reason: str) -> None:
        """An answer to refer that cannot be (not DICOM, no study): counted on the page (each
        record keeps its own reason in its `referral` field)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        seen = self._unreferred()
        _write_json(self.folder / UNREFERRED, {"count": seen["count"] + 1, "last": reason, "last_record": rid})

    def _unreferred(self) -> Dict:
        try:
            return json.loads((self.folder / UNREFERRED).read_text())
        except (OSError, ValueError):
            return {"count": 0, "last": None}

    def jobs(self) -> List[Job]:
        """The referrals still to send, oldest first."""
        out = []
        if not self.folder.is_dir():
            return out
        for folder in sorted(self.folder.iterdir()):
            if folder.name.startswith(".") or folder == self.sent_folder or not folder.is_dir():
                continue
            try:
                out.append(Job(folder, json.loads((folder / JOB).read_text()),
                               json.loads((folder / STATE).read_text())))
            except (OSError, ValueError):
                log.error("referral %s: its files are damaged; it is left as it is", folder.name)
        return sorted(out, key=lambda j: j.job.get("created_utc", ""))

    @staticmethod
    def status_of(job: Job) -> str:
        if len(job.state["sent"]) == len(job.job["items"]):
            return "sent"
        return "failing" if job.state.get("last_error") else "queued"

    def run_once(self, now: Optional[float] = None) -> int:
        """Send what is due, job by job (a job that fails waits its turn; the others go on); the
        number of instances sent. Only answers whose record is written are sent: the PACS never
        hears an answer the device's own log does not hold."""
        sent = 0
        with self._lock:
            for job in self.jobs():
                try:
                    if job.state.get("next_try", 0.0) > (now or time.time()) or not self.recorded(job.rid):
                        continue
                    sent += self._send(job)
                except SendError as exc:
                    self._failed(job, exc.reason)
                except Exception as exc:  # noqa: BLE001 - a bug or a damaged job: this job waits, the rest go on
                    log.exception("referral %s: internal error", job.rid)
                    self._failed(job, f"internal error ({type(exc).__name__}); details in the service log")
        return sent

    def _failed(self, job: Job, reason: str) -> None:
        attempts = int(job.state.get("attempts", 0)) + 1
        wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
        job.state.update(attempts=attempts, next_try=time.time() + wait, last_error=reason)
        try:
            _write_json(job.folder / STATE, job.state)
        except OSError as exc:
            log.error("referral %s: its state cannot be written (%s)", job.rid, exc.strerror or exc)
        log.warning("referral %s: %s (attempt %d; next in %.0f s)", job.rid, reason, attempts, wait)

    def _send(self, job: Job) -> int:
        sent = 0
        for item in job.job["items"]:
            if item["sop"] in job.state["sent"]:
                continue
            try:
                self.dest.send((job.folder / item["file"]).read_bytes())
            except SendError as exc:
                self._failed(job, exc.reason)
                return sent
            except Exception as exc:  # noqa: BLE001 - a bug or a damaged file: this job waits, the rest go on
                log.exception("referral %s: internal error", job.rid)
                self._failed(job, f"internal error ({type(exc).__name__}); details in the service log")
                return sent
            job.state["sent"].append(item["sop"])
            job.state.update(last_error=None)
            _write_json(job.folder / STATE, job.state)  # acknowledged: never sent again
            sent += 1
        job.state.update(sent_utc=_now(), next_try=0.0)
        _write_json(job.folder / STATE, job.state)
        for item in job.job["items"]:  # the PACS has them: the device keeps no second copy
            (job.folder / item["file"]).unlink(missing_ok=True)
        self.sent_folder.mkdir(exist_ok=True, mode=0o700)
        os.replace(job.folder, self.sent_folder / job.rid)
        fsync_dir(self.folder)
        log.info("referral %s sent to %s", job.rid, self.dest.describe())
        return sent

    def summary(self) -> Dict[str, object]:
        counts = {"queued": 0, "sent": 0, "failing": 0}
        failing = []
        try:
            counts["sent"] = sum(1 for _ in os.scandir(self.sent_folder))
        except OSError:
            pass
        for job in self.jobs():
            s = self.status_of(job)
            counts[s] += 1
            if s == "failing":
                failing.append({"record": job.rid, "reason": job.state.get("last_error"),
                                "attempts": job.state.get("attempts"), "next_try": job.state.get("next_try")})
        unreferred = self._unreferred()
        return {"destination": self.dest.describe(), **counts, "failing_jobs": failing,
                "not_referred": unreferred["count"], "last_not_referred": unreferred["last"]}

    def banner(self) -> Optional[str]:
        """One line for the results page, or None when nothing waits."""
        s = self.summary()
        if not s["queued"] and not s["failing"]:
            text = f"Referrals to {s['destination']}: {s['sent']} sent" if s["sent"] else None
        else:
            text = f"Referrals to {s['destination']}: {s['sent']} sent, {s['queued']} queued, {s['failing']} failing"
            if s["failing_jobs"]:
                first = s["failing_jobs"][0]
                wait = max(0, int(first["next_try"] - time.time()))
                text += f" (last error: {first['reason']}; next try in {wait} s)"
        if s["not_referred"]:
            text = (text + "; " if text else f"Referrals to {s['destination']}: ") + \
                f"{s['not_referred']} answer(s) could not be referred (last: {s['last_not_referred']})"
        return text


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Sender(threading.Thread):
    """Runs the outbox every `interval` seconds until stopped."""

    def __init__(self, outbox: Outbox, interval: float = 5.0):
        import importlib

        super().__init__(name="outbox", daemon=True)
        # Imported here, in the thread that starts the sender: pydicom imported by two threads at
        # once (this one and the service's) can meet itself half-initialised.
        for module in ("pydicom", "pydicom.pixels", "highdicom"):
            importlib.import_module(module)
        self.outbox, self.interval = outbox, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.outbox.run_once()
            except Exception:  # noqa: BLE001 - a bug in one round must not stop the referrals
                log.exception("outbox round failed")
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
