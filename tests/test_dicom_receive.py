"""The DICOM receiver (device/dicom_receiver.py) against a pynetdicom SCU playing the CR reader:
what it accepts and queues durably, what it refuses and how the reader hears it, and the
service reading what it received exactly once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="the dicomnet extra (pynetdicom) is not installed")

from device.dicom_receiver import (OUT_OF_RESOURCES, SUCCESS, TOO_LARGE, Receiver, ReceiverConfig,  # noqa: E402
                                   ReceiverError, content_hash, uid_name)
from dicom_factory import PATIENT_ID, PATIENT_NAME, write_dicom  # noqa: E402

CR = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"  # no decoder for it on these machines
ROOT = Path(__file__).resolve().parent.parent


def _radiograph(path: Path, shape=(96, 80), seed=0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)
    return write_dicom(path, arr)


def _phantom_dicom(path: Path, phantom_dir: Path, k: int) -> Path:
    """A phantom radiograph as a 12-bit CR instance: something the model answers."""
    from PIL import Image

    jpg = sorted((phantom_dir / "images").glob("*/*.jpg"))[k]
    arr = np.asarray(Image.open(jpg).convert("L"), dtype=np.uint16) * 16
    return write_dicom(path, arr, window=(2048, 4096))


@contextmanager
def _receiving(tmp_path: Path, **config):
    """A started receiver for the test's data folder, stopped afterwards whatever happens."""
    data = tmp_path / "data"
    receiver = Receiver(data / "inbox" / "dicom", data / "dicom-work", ReceiverConfig(port=0, **config)).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def _send(port: int, paths, calling="CR_READER", syntaxes=(EXPLICIT_LE,), called="FRACTURE_EDGE"):
    """C-STORE each file; [status or None] per file, or 'rejected' / 'aborted' for the association."""
    from pydicom import dcmread
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(CR, list(syntaxes))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "aborted"
    out = []
    try:
        for p in paths:
            ds = dcmread(p)
            status = assoc.send_c_store(ds)
            if not status:  # no response: the receiver cut the association
                time.sleep(0.5)
                assert assoc.is_aborted or not assoc.is_established
                return "aborted"
            out.append(int(status.Status) if status and "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _echo(port: int, calling="CR_READER") -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACTURE_EDGE")
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def test_an_instance_is_queued_durably_once_and_named_by_nothing_identifying(tmp_path, caplog):
    from pydicom import dcmread

    with _receiving(tmp_path) as receiver:
        src = _radiograph(tmp_path / "a.dcm")
        assert _echo(receiver.port)
        with caplog.at_level("INFO", logger="fracture_edge.dicom"):
            assert _send(receiver.port, [src]) == [SUCCESS]
            assert _send(receiver.port, [src]) == [SUCCESS]  # sent again: acknowledged, not queued twice
        uid = str(dcmread(src).SOPInstanceUID)
        queued = list(receiver.inbox.iterdir())
        assert len(queued) == 1 and queued[0].name == f"{uid_name(uid)[:32]}-{content_hash(queued[0])[:32]}.dcm"
        assert oct(queued[0].stat().st_mode & 0o777) == "0o600"
        got = dcmread(queued[0])
        assert str(got.SOPInstanceUID) == uid and got.PixelData == dcmread(src).PixelData
        assert receiver.counts["stored"] == 1 and receiver.counts["duplicates"] == 1
        corrected = dcmread(src)  # the same instance, its patient's name corrected at the reader
        corrected.PatientName = "DOE^JANET"
        corrected.save_as(tmp_path / "b.dcm")
        assert _send(receiver.port, [tmp_path / "b.dcm"]) == [SUCCESS]
        assert len(list(receiver.inbox.iterdir())) == 2  # other bytes: queued as what it is, never dropped
        assert not list(receiver.work.iterdir())  # nothing left of the transfers
        logged = caplog.text
        assert PATIENT_NAME not in logged and PATIENT_ID not in logged and uid not in logged


def test_a_calling_ae_title_off_the_allow_list_is_rejected(tmp_path):
    with _receiving(tmp_path, allowed=("CR_READER",)) as receiver:
        src = _radiograph(tmp_path / "a.dcm")
        assert _send(receiver.port, [src], calling="STRANGER") == "rejected"
        assert not list(receiver.inbox.iterdir())
        assert _send(receiver.port, [src], calling="CR_READER") == [SUCCESS]


def test_a_transfer_syntax_it_cannot_decode_is_refused_at_association(tmp_path, caplog):
    """Refused before a byte of the image is sent; offered beside one it decodes, that one is chosen."""
    with _receiving(tmp_path) as receiver:
        src = _radiograph(tmp_path / "a.dcm")
        with caplog.at_level("ERROR", logger="pynetdicom"):
            assert _send(receiver.port, [src], syntaxes=(JPEG_LOSSLESS,)) == "aborted"
        assert "No accepted presentation contexts" in caplog.text  # what the reader's log says
        assert not list(receiver.inbox.iterdir())
        assert _send(receiver.port, [src], syntaxes=(JPEG_LOSSLESS, EXPLICIT_LE)) == [SUCCESS]


def test_an_oversized_dataset_is_refused_or_cut_off_and_leaves_nothing(tmp_path):
    with _receiving(tmp_path, max_bytes=40_000) as receiver:
        middling = _radiograph(tmp_path / "m.dcm", shape=(200, 200))  # 80 KB: over the limit, under the margin
        assert _send(receiver.port, [middling]) == [TOO_LARGE]  # a failure the reader does not retry
        huge = _radiograph(tmp_path / "h.dcm", shape=(1000, 800), seed=1)  # 1.6 MB: past limit + 1 MB margin
        assert _send(receiver.port, [huge]) == "aborted"
        time.sleep(0.5)
        assert not list(receiver.inbox.iterdir()) and not list(receiver.work.iterdir())
        assert receiver.counts["aborted"] == 1 and receiver.counts["refused"] == 1
        assert TOO_LARGE != OUT_OF_RESOURCES
        small = _radiograph(tmp_path / "s.dcm", shape=(64, 64))  # the receiver still works afterwards
        assert _send(receiver.port, [small]) == [SUCCESS]


def test_a_full_disk_answers_out_of_resources_and_the_retry_succeeds(tmp_path, monkeypatch):
    import device.dicom_receiver as dr

    with _receiving(tmp_path) as receiver:
        src = _radiograph(tmp_path / "a.dcm")
        monkeypatch.setattr(dr, "disk_space", lambda path: (1024, 10 ** 9))
        assert _send(receiver.port, [src]) == [OUT_OF_RESOURCES]
        assert not list(receiver.inbox.iterdir())
        monkeypatch.undo()
        real_replace = os.replace

        def enospc(*a, **k):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(os, "replace", enospc)  # the disk fills up during the write itself
        assert _send(receiver.port, [src]) == [OUT_OF_RESOURCES]
        monkeypatch.setattr(os, "replace", real_replace)
        assert not list(receiver.inbox.iterdir())
        assert _send(receiver.port, [src]) == [SUCCESS]  # the reader's retry, once there is room
        assert len(list(receiver.inbox.iterdir())) == 1


def test_more_associations_than_allowed_are_rejected_until_one_ends(tmp_path):
    from pynetdicom import AE

    with _receiving(tmp_path, max_associations=1) as receiver:
        ae = AE(ae_title="CR_READER")
        ae.add_requested_context(CR, [EXPLICIT_LE])
        first = ae.associate("127.0.0.1", receiver.port, ae_title="FRACTURE_EDGE")
        assert first.is_established
        assert _send(receiver.port, [_radiograph(tmp_path / "a.dcm")]) == "rejected"
        first.release()
        time.sleep(0.3)
        assert _send(receiver.port, [_radiograph(tmp_path / "a.dcm")]) == [SUCCESS]


@pytest.mark.parametrize("config, says", [
    ({"ae_title": "A" * 17}, "not an AE title"),
    ({"ae_title": "BAD\\TITLE"}, "not an AE title"),
    ({"allowed": ("   ",)}, "not an AE title"),
    ({"max_associations": 0}, "at least 1"),
    ({"port": 70000}, "1..65535"),
])
def test_a_configuration_that_cannot_work_is_refused(tmp_path, config, says):
    with pytest.raises(ReceiverError, match=None) as err:
        Receiver(tmp_path / "in", tmp_path / "work", ReceiverConfig(**{"port": 0, **config}))
    assert says in str(err.value)


def test_the_service_reads_each_received_instance_once_and_empties_the_inbox(tiny_bundle, phantom_dir, tmp_path):
    from device.dicom_receiver import start_receiver
    from device.service import Service

    data = tmp_path / "data"
    service = Service(data, [], tiny_bundle, settle_s=0)
    receiver = start_receiver(data, ReceiverConfig(port=0))
    try:
        a, b = _phantom_dicom(tmp_path / "a.dcm", phantom_dir, 0), _phantom_dicom(tmp_path / "b.dcm", phantom_dir, 1)
        assert _send(receiver.port, [a, b]) == [SUCCESS, SUCCESS]
        assert service.run_once() == 2
        records = service.ledger.records()
        assert len(records) == 2 and all(r.get("probability") is not None for r in records)
        assert all("/inbox/dicom/" in r["source"] and PATIENT_NAME not in json.dumps(r) for r in records)
        assert not list(service.spool.dicom.iterdir())  # read: gone from the inbox, kept in the store
        assert _send(receiver.port, [a]) == [SUCCESS]  # the reader sends one again
        assert service.run_once() == 0 and len(service.ledger.records()) == 2
        assert not list(service.spool.dicom.iterdir())  # the same bytes, recorded before: not kept twice
        short = _phantom_dicom(tmp_path / "c.dcm", phantom_dir, 2)  # a header promising more pixels than sent
        from pydicom import dcmread

        ds = dcmread(short)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        ds.save_as(short)
        assert _send(receiver.port, [short]) == [SUCCESS]
        service.run_once()
        bad = service.ledger.records()[-1]
        assert bad.get("probability") is None and bad.get("error")
        kept = list((data / "unread").iterdir())  # unreadable: moved aside, never deleted
        assert len(kept) == 1
        got = dcmread(kept[0])  # as received (pynetdicom writes its own file meta)
        assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData
        assert not list(service.spool.dicom.iterdir())
    finally:
        receiver.stop()
        service.close()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.heavy
def test_success_means_on_disk_a_kill_9_after_it_loses_nothing(tiny_bundle, phantom_dir, tmp_path):
    """serve --dicom-port acknowledges; the service is killed before its next scan; a restart
    reads the instance: one record."""
    data, port = tmp_path / "data", _free_port()
    cmd = [sys.executable, "-m", "device", "serve", "--data", str(data), "--bundle", str(tiny_bundle), "--no-page",
           "--settle", "0", "--interval", "3600", "--dicom-port", str(port), "--dicom-allow", "CR_READER"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if _echo(port):
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
        src = _phantom_dicom(tmp_path / "a.dcm", phantom_dir, 2)
        assert _send(port, [src]) == [SUCCESS]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ledger = data / "results.jsonl"
    assert not ledger.exists() or not ledger.read_text().strip()  # killed before reading it
    again = subprocess.run([sys.executable, "-m", "device", "serve", "--data", str(data), "--bundle", str(tiny_bundle),
                            "--once", "--settle", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    records = [json.loads(x) for x in ledger.read_text().splitlines() if x]
    assert len(records) == 1 and records[0].get("probability") is not None


def test_serve_says_why_when_the_receiver_cannot_start(tiny_bundle, tmp_path):
    """A port in use, or an AE title that is not one: a one-line error, not a traceback."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        for extra, says in ((["--dicom-port", str(taken.getsockname()[1]), "--dicom-host", "127.0.0.1"],
                             "cannot listen for DICOM"),
                            (["--dicom-port", "0", "--ae-title", "X" * 17], "not an AE title")):
            done = subprocess.run([sys.executable, "-m", "device", "serve", "--data", str(tmp_path / "d"), "--bundle",
                                   str(tiny_bundle), "--no-page", "--once", *extra], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode != 0 and says in done.stderr and "Traceback" not in done.stderr
    finally:
        taken.close()
