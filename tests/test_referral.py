"""Referring flagged studies to a PACS (device/referral.py, device/outbox.py): the three objects
in the original's study, the store-and-forward outbox, and round trips into a real Orthanc (from
Debian's packages; .ci/run installs them) by C-STORE and by DICOMweb STOW-RS, with Orthanc
stopped mid-referral and the service killed mid-send."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="the dicomnet extra is not installed")
pytest.importorskip("highdicom", reason="the dicomnet extra is not installed")

import orthanc as pacs  # noqa: E402
from device.outbox import (DicomNode, DicomWeb, Outbox, ReferralError, SendError, destination,  # noqa: E402
                           read_credentials)
from device.referral import NotReferable, build  # noqa: E402
from dicom_factory import PATIENT_ID, PATIENT_NAME, write_dicom  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"id": "0123456789abcdef0123456789abcdef", "decision": "fractured", "probability": 0.87, "threshold": 0.73,
          "model": "fracture_map", "bundle_id": "feedfacecafebeef", "demonstration_only": True}


def _study_cr(path: Path, phantom_dir: Path = None, k: int = 0) -> Path:
    if phantom_dir is not None:
        from PIL import Image

        jpg = sorted((phantom_dir / "images").glob("*/*.jpg"))[k]
        arr = np.asarray(Image.open(jpg).convert("L"), dtype=np.uint16) * 16
        return write_dicom(path, arr, window=(2048, 4096), study=True)
    return write_dicom(path, np.random.default_rng(k).integers(0, 4000, (120, 90)).astype(np.uint16), study=True)


def _overlay(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((120, 90, 3), 60, np.uint8)).save(path)
    return path


def _read(data: bytes):
    from pydicom import dcmread

    return dcmread(BytesIO(data))


# --- the objects ---------------------------------------------------------------------------------

def test_the_overlay_and_the_report_join_the_original_study_with_stable_uids(tmp_path):
    original = _read(_study_cr(tmp_path / "o.dcm").read_bytes())
    items = build(tmp_path / "o.dcm", _overlay(tmp_path / "g.jpg"), RECORD)
    assert [k for k, _ in items] == ["original", "overlay", "report"]
    got = [_read(b) for _, b in items]
    assert {str(d.StudyInstanceUID) for d in got} == {str(original.StudyInstanceUID)}
    assert all(str(d.PatientName) == PATIENT_NAME and d.PatientID == PATIENT_ID for d in got)
    assert len({str(d.SeriesInstanceUID) for d in got}) == 3  # each in a series of its own
    sc, sr = got[1], got[2]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    band = sc.pixel_array[120:]  # the text burned in below the overlay
    assert band.shape[0] > 40 and (band > 200).sum() > 200
    text = json.dumps([str(v.value) for v in sr.iterall()])
    for needed in ("0.87", "0.73", "FRACTURE SUSPECTED", "Screening aid only", "fracture_map", "feedfacecafebeef",
                   "NOT for patient care"):
        assert needed in text, needed
    again = [_read(b) for _, b in build(tmp_path / "o.dcm", tmp_path / "g.jpg", RECORD)]
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in got]  # built again: the same UIDs


def test_what_cannot_be_filed_with_a_patient_is_not_referred(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(NotReferable, match="not a DICOM input"):
        build(tmp_path / "x.png", _overlay(tmp_path / "g.jpg"), RECORD)
    write_dicom(tmp_path / "nostudy.dcm", np.zeros((40, 40), np.uint16))  # no study attributes at all
    with pytest.raises(NotReferable, match="StudyInstanceUID"):
        build(tmp_path / "nostudy.dcm", tmp_path / "g.jpg", RECORD)
    with pytest.raises(NotReferable, match="no overlay"):
        build(_study_cr(tmp_path / "o.dcm"), tmp_path / "missing.jpg", RECORD)


def test_destinations_and_credentials_are_checked(tmp_path):
    assert isinstance(destination("PACS@10.0.0.5:104", {}, "ME"), DicomNode)
    assert isinstance(destination("https://pacs.example/dicom-web", {}, "ME"), DicomWeb)
    assert isinstance(destination("http://127.0.0.1:8042/dicom-web", {}, "ME"), DicomWeb)
    for bad, says in (("http://pacs.example/dicom-web", "unencrypted"), ("PACS@host", "AE@host:port"),
                      ("ftp://x/y", "not a DICOMweb URL"), ("WAYTOOLONGAETITLE1@h:104", "AE@host:port")):
        with pytest.raises(ReferralError, match=says):
            destination(bad, {}, "ME")
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"username": "u", "password": "p"}))
    os.chmod(creds, 0o644)
    with pytest.raises(ReferralError, match="readable by others"):
        read_credentials(creds)
    os.chmod(creds, 0o600)
    assert read_credentials(creds) == {"username": "u", "password": "p"}
    creds.write_text(json.dumps({"user": "u"}))
    with pytest.raises(ReferralError, match="needs"):
        read_credentials(creds)
    with pytest.raises(ReferralError, match="DICOMweb URL"):
        destination("PACS@h:104", {"token": "t"}, "ME")


class _Flaky:
    """A destination that fails while `down` is set, and counts what it was handed."""

    def __init__(self):
        self.down, self.got = True, []

    def describe(self):
        return "TEST PACS"

    def send(self, item: bytes):
        if self.down:
            raise SendError("cannot reach the PACS (ConnectionRefusedError)")
        self.got.append(str(_read(item).SOPInstanceUID))


def test_the_outbox_backs_off_survives_a_restart_and_sends_each_instance_once(tmp_path):
    items = build(_study_cr(tmp_path / "o.dcm"), _overlay(tmp_path / "g.jpg"), RECORD)
    dest = _Flaky()
    box = Outbox(tmp_path / "outbox", dest)
    assert box.add(RECORD["id"], items, RECORD) and not box.add(RECORD["id"], items, RECORD)  # once
    assert box.run_once() == 0
    s = box.summary()
    assert (s["queued"], s["failing"], s["sent"]) == (0, 1, 0)
    assert "1 failing (last error: cannot reach the PACS" in box.banner()
    first = s["failing_jobs"][0]["next_try"] - time.time()
    assert 20 < first < 40  # 30 s, give or take the jitter
    box.run_once(now=time.time() + 60)
    assert 40 < box.summary()["failing_jobs"][0]["next_try"] - time.time() < 80  # doubled
    dest.down = False
    assert box.run_once() == 0  # not yet due
    again = Outbox(tmp_path / "outbox", dest)  # a restart: the state is on disk
    assert again.run_once(now=time.time() + 3600) == 3
    assert dest.got == [str(_read(b).SOPInstanceUID) for _, b in items]
    assert again.run_once(now=time.time() + 10 ** 6) == 0 and again.summary()["sent"] == 1
    assert again.jobs() == []  # sent: out of the queue
    assert "1 sent" in again.banner()


def test_a_referral_cut_off_while_being_made_is_made_again(tmp_path):
    box = Outbox(tmp_path / "outbox", _Flaky())
    (tmp_path / "outbox" / ".new-deadbeef").mkdir(parents=True)  # what a kill mid-add leaves
    Outbox(tmp_path / "outbox", _Flaky())  # made: nothing touched before the service holds its lock
    assert (tmp_path / "outbox" / ".new-deadbeef").exists()
    box.recover()  # the service, under its lock
    assert not (tmp_path / "outbox" / ".new-deadbeef").exists() and box.jobs() == []


def test_only_recorded_answers_go_out_and_a_changed_answer_replaces_an_unsent_one(tmp_path):
    items = build(_study_cr(tmp_path / "o.dcm"), _overlay(tmp_path / "g.jpg"), RECORD)
    dest = _Flaky()
    dest.down = False
    box = Outbox(tmp_path / "outbox", dest)
    recorded = set()
    box.recover(recorded=recorded.__contains__)
    assert box.add(RECORD["id"], items, RECORD)
    assert box.run_once() == 0 and dest.got == []  # its record is not written yet: the PACS hears nothing
    other = {**RECORD, "bundle_id": "0000000000000000", "probability": 0.91}  # read again by another bundle
    assert box.add(RECORD["id"], items, other)
    assert json.loads((tmp_path / "outbox" / RECORD["id"] / "job.json").read_text())["probability"] == 0.91
    box.discard(RECORD["id"])  # ... and then not referred at all
    assert box.jobs() == []
    assert box.add(RECORD["id"], items, RECORD)
    recorded.add(RECORD["id"])
    assert box.run_once() == 3
    sent = tmp_path / "outbox" / "sent" / RECORD["id"]
    assert sorted(p.name for p in sent.iterdir()) == ["job.json", "state.json"]  # no second copy kept
    assert not box.add(RECORD["id"], items, RECORD) and box.jobs() == []  # sent: never queued again


class _Broken(_Flaky):
    def send(self, item: bytes):
        if _read(item).SOPClassUID == "1.2.840.10008.5.1.4.1.1.7":
            raise KeyError("a bug")
        super().send(item)


def test_a_job_that_fails_unexpectedly_waits_and_the_others_go_on(tmp_path):
    dest = _Broken()
    dest.down = False
    box = Outbox(tmp_path / "outbox", dest)
    a = build(_study_cr(tmp_path / "a.dcm", k=1), _overlay(tmp_path / "g.jpg"), RECORD)
    other = {**RECORD, "id": "f" * 32}
    b = build(_study_cr(tmp_path / "b.dcm", k=2), tmp_path / "g.jpg", other)
    box.add(RECORD["id"], a, RECORD)
    box.add(other["id"], b, other)
    box.run_once()
    assert len(dest.got) == 2  # each job's original; each then fails on its overlay
    s = box.summary()
    assert s["failing"] == 2 and all("internal error (KeyError)" in j["reason"] for j in s["failing_jobs"])


def test_a_stow_rs_answer_listing_the_instance_as_failed_is_a_failure(tmp_path):
    from pydicom.dataset import Dataset

    class Client:
        def store_instances(self, datasets):
            answer, failed = Dataset(), Dataset()
            failed.FailureReason = 0xA700
            answer.FailedSOPSequence = [failed]
            return answer

    web = DicomWeb("http://127.0.0.1:1/dicom-web", {})
    web._client = Client()
    items = build(_study_cr(tmp_path / "o.dcm"), _overlay(tmp_path / "g.jpg"), RECORD)
    with pytest.raises(SendError, match="did not store it"):
        web.send(items[0][1])


def test_a_header_missing_optional_study_attributes_is_still_referred(tmp_path):
    from pydicom import dcmread

    src = _study_cr(tmp_path / "o.dcm")
    ds = dcmread(src)
    for key in ("PatientSex", "StudyID", "AccessionNumber", "StudyTime", "PatientBirthDate"):
        delattr(ds, key)
    ds.StudyDate = "2026-12-05"  # malformed
    ds.save_as(src)
    got = [_read(b) for _, b in build(src, _overlay(tmp_path / "g.jpg"), RECORD)]
    assert "StudyID" not in got[0] and got[1].StudyID == "" and got[2].PatientSex == ""  # the original as it came
    assert got[1].get("PatientOrientation") in (None, "", []) or not got[1].PatientOrientation  # not invented


# --- a real PACS ---------------------------------------------------------------------------------

@pytest.fixture
def orthanc(tmp_path):
    missing = pacs.available()
    if missing:
        pytest.skip(missing)
    server = pacs.Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def _serve_and_refer(data: Path, bundle: Path, dest, tmp_path: Path, phantom_dir: Path, **outbox):
    """The service with an outbox, a CR instance received over DICOM, read, queued and sent."""
    from device.dicom_receiver import ReceiverConfig, start_receiver
    from device.service import Service
    from test_dicom_receive import _send

    box = Outbox(data / "outbox", dest, refer_all=True, **outbox)
    service = Service(data, [], bundle, settle_s=0, outbox=box)
    receiver = start_receiver(data, ReceiverConfig(port=0))
    try:
        src = _study_cr(tmp_path / "cr.dcm", phantom_dir, 5)
        assert _send(receiver.port, [src]) == [0]
        assert service.run_once() == 1
        record = service.ledger.records()[0]
        assert record["referral"] == "queued"
        return service, box, record, src
    finally:
        receiver.stop()


def _check_in_orthanc(server, src: Path, record):
    from pydicom import dcmread

    original = dcmread(src)
    studies = server.studies()
    assert len(studies) == 1 and studies[0]["MainDicomTags"]["StudyInstanceUID"] == str(original.StudyInstanceUID)
    instances = server.instances_of(studies[0]["ID"])
    classes = sorted(server.get(f"/instances/{i['ID']}/metadata/SopClassUid") for i in instances)
    assert [c.decode() if isinstance(c, bytes) else c for c in classes] == sorted(
        ["1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33"])
    sr_id = next(i["ID"] for i in instances
                 if server.get(f"/instances/{i['ID']}/metadata/SopClassUid") in (b"1.2.840.10008.5.1.4.1.1.88.33",
                                                                                "1.2.840.10008.5.1.4.1.1.88.33"))
    sr = _read(server.get(f"/instances/{sr_id}/file"))
    text = json.dumps([str(v.value) for v in sr.iterall()])
    assert f"{record['probability']:.4f}"[:4] in text and record["bundle_id"] in text and "Screening aid only" in text
    assert str(sr.PatientID) == PATIENT_ID


def test_a_referral_reaches_orthanc_by_c_store_in_the_right_study(orthanc, tiny_bundle, phantom_dir, tmp_path):
    service, box, record, src = _serve_and_refer(tmp_path / "data", tiny_bundle, DicomNode(orthanc.node, "FRACTURE_EDGE"),
                                                 tmp_path, phantom_dir)
    try:
        assert box.run_once() == 3
        _check_in_orthanc(orthanc, src, record)
        assert orthanc.new_instance_events() == 3
    finally:
        service.close()


def test_a_referral_reaches_orthanc_by_dicomweb_with_credentials(orthanc, tiny_bundle, phantom_dir, tmp_path):
    wrong = DicomWeb(orthanc.dicomweb, {"username": pacs.USER, "password": "wrong"})
    service, box, record, src = _serve_and_refer(tmp_path / "data", tiny_bundle, wrong, tmp_path, phantom_dir)
    try:
        assert box.run_once() == 0
        assert "HTTP 401 (check --refer-credentials)" in box.banner()
        box.dest = DicomWeb(orthanc.dicomweb, {"username": pacs.USER, "password": pacs.PASSWORD})
        assert box.run_once(now=time.time() + 3600) == 3
        _check_in_orthanc(orthanc, src, record)
    finally:
        service.close()


class _CountingNode(DicomNode):
    """C-STORE that counts each instance it hands over, and stops the PACS after the first."""

    def __init__(self, server, text):
        super().__init__(text, "FRACTURE_EDGE")
        self.server, self.sent = server, []

    def send(self, item: bytes):
        super().send(item)
        self.sent.append(str(_read(item).SOPInstanceUID))
        if len(self.sent) == 1:
            self.server.stop()  # the PACS goes down in the middle of the referral


def test_orthanc_stopped_mid_referral_gets_everything_once_when_back(orthanc, tiny_bundle, phantom_dir, tmp_path):
    node = _CountingNode(orthanc, orthanc.node)
    service, box, record, src = _serve_and_refer(tmp_path / "data", tiny_bundle, node, tmp_path, phantom_dir)
    try:
        assert box.run_once() == 1  # the original went; then the PACS stopped
        assert "cannot reach the PACS" in box.banner() and box.summary()["failing"] == 1
        orthanc.start()
        assert box.run_once(now=time.time() + 3600) == 2  # the other two, not the first again
        assert box.run_once(now=time.time() + 10 ** 6) == 0
        assert len(node.sent) == 3 and len(set(node.sent)) == 3  # each instance handed over once
        _check_in_orthanc(orthanc, src, record)
        assert orthanc.new_instance_events() == 3
    finally:
        service.close()


class _SlowPacs:
    """A C-STORE SCP that holds its answer to the second instance while `hold` is set."""

    def __init__(self):
        from pynetdicom import AE, evt

        self.received, self.in_flight, self.hold = [], threading.Event(), threading.Event()
        self.released = threading.Event()
        self.hold.set()
        ae = AE(ae_title="SLOWPACS")
        for sop in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33"):
            ae.add_supported_context(sop, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event):
        uid = str(event.request.AffectedSOPInstanceUID)
        if len(set(self.received)) == 1 and uid not in self.received and self.hold.is_set():
            self.in_flight.set()
            self.released.wait(60)  # the service is killed while it waits for this answer
            return 0xA700
        self.received.append(uid)
        return 0x0000

    def stop(self):
        self.hold.clear()
        self.released.set()
        self.server.shutdown()


@pytest.mark.heavy
def test_the_service_killed_mid_send_sends_the_rest_after_a_restart(tiny_bundle, phantom_dir, tmp_path):
    from test_dicom_receive import _echo, _free_port, _send

    slow = _SlowPacs()
    data, port = tmp_path / "data", _free_port()
    cmd = [sys.executable, "-m", "device", "serve", "--data", str(data), "--bundle", str(tiny_bundle), "--no-page",
           "--settle", "0", "--interval", "0.5", "--dicom-port", str(port), "--refer-to",
           f"SLOWPACS@127.0.0.1:{slow.port}", "--refer-all"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not _listening(port):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.3)
        assert _echo(port)
        assert _send(port, [_study_cr(tmp_path / "cr.dcm", phantom_dir, 6)]) == [0]
        assert slow.in_flight.wait(120), "the second instance never went out"
        os.kill(proc.pid, signal.SIGKILL)  # mid-send
        proc.wait()
        jobs = [d for d in (data / "outbox").iterdir() if d.is_dir() and d.name != "sent"]
        assert len(jobs) == 1
        done = data / "outbox" / "sent" / jobs[0].name  # where a job goes once every instance is sent
        state = json.loads((jobs[0] / "state.json").read_text())
        assert len(state["sent"]) == 1  # the first was acknowledged and noted; the second was not
        slow.hold.clear()
        slow.released.set()
        log = open(tmp_path / "restart.log", "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + 120
        while not (done / "state.json").exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "restart.log").read_text()[-3000:]
            time.sleep(0.3)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        slow.stop()
    state = json.loads((done / "state.json").read_text())
    job = json.loads((done / "job.json").read_text())
    assert state["sent"] == [i["sop"] for i in job["items"]]  # each noted once, in order
    assert sorted(slow.received) == sorted(state["sent"])  # each acknowledged once: the first not sent again
    records = [json.loads(x) for x in (data / "results.jsonl").read_text().splitlines() if x]
    assert len(records) == 1


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_results_page_shows_the_outbox(tmp_path):
    """The page's banners carry the outbox's state: queued, sent, failing with the reason."""
    from types import SimpleNamespace

    from device.cli import _banners

    box = Outbox(tmp_path / "outbox", _Flaky())
    service = SimpleNamespace(status={"disk": "the data disk is full"}, outbox=box)
    assert _banners(service) == ["the data disk is full"]  # nothing referred yet: no line
    box.add(RECORD["id"], build(_study_cr(tmp_path / "o.dcm"), _overlay(tmp_path / "g.jpg"), RECORD), RECORD)
    assert "0 sent, 1 queued, 0 failing" in _banners(service)[1]
    box.run_once()
    line = _banners(service)[1]
    assert "1 failing (last error: cannot reach the PACS (ConnectionRefusedError); next try in" in line
    assert PATIENT_NAME not in line and PATIENT_ID not in line


def test_dicomweb_over_tls_trusts_only_the_given_ca(orthanc, tiny_bundle, phantom_dir, tmp_path):
    """Orthanc behind HTTPS with a certificate from a private CA: refused without --refer-ca (the
    certificate is not trusted), sent with it."""
    from device.tls import server_context

    cert, key, ca = pacs.test_certificates(tmp_path / "tls")
    proxy = pacs.TlsProxy(orthanc.http_port, server_context(cert, key))
    url = f"https://127.0.0.1:{proxy.port}/dicom-web"
    creds = {"username": pacs.USER, "password": pacs.PASSWORD}
    try:
        service, box, record, src = _serve_and_refer(tmp_path / "data", tiny_bundle, DicomWeb(url, creds), tmp_path,
                                                     phantom_dir)
        try:
            assert box.run_once() == 0
            assert "certificate is not trusted" in box.banner()
            box.dest = DicomWeb(url, creds, ca_file=ca)
            sent = box.run_once(now=time.time() + 3600)
            assert sent == 3, box.banner()
            _check_in_orthanc(orthanc, src, record)
        finally:
            service.close()
    finally:
        proxy.stop()
