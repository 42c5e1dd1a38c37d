"""Faults clinics cause, injected into the service: after each, no crash,
no lost result, no duplicate."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import device.service as service_mod
from benchmarks.fuzz import _radiograph
from device.cli import main as device_main
from device.page import render
from device.service import Service, ServiceError
from edge_runtime.bundle import REPO_BUNDLE
from answers import answer_of, answered, in_scope_radiograph  # noqa: F401


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (_radiograph(160 + seed, 200) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "data", tmp_path / "cr"


def _service(data, watch, **kw) -> Service:
    return Service(data, [watch], REPO_BUNDLE, settle_s=kw.pop("settle_s", 0), **kw)


def test_an_unreadable_file_is_recorded_once_and_the_queue_goes_on(dirs, monkeypatch):
    data, watch = dirs
    for k in range(3):
        _image(watch / f"f{k}.png", k)
    real = service_mod.file_id

    def locked(path):
        if path.name == "f1.png":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path)
    monkeypatch.setattr(service_mod, "file_id", locked)
    service = _service(data, watch)
    assert service.run_once() == 2
    recs = service.ledger.records()
    assert len(recs) == 3 and sum(answered(r) for r in recs) == 2
    bad = next(r for r in recs if r.get("error"))
    assert bad["source"].endswith("f1.png") and "Permission denied" in bad["error"]
    service.run_once()
    assert len(service.ledger.records()) == 3  # recorded once, not on every scan


def test_a_file_that_vanishes_before_processing_leaves_no_trace(dirs):
    data, watch = dirs
    _image(watch / "a.png")
    _image(watch / "b.png", 1)
    service = _service(data, watch)
    waiting = list(service.pending())
    (watch / "a.png").unlink()
    results = [service.process(*w) for w in waiting]
    assert sum(r is not None for r in results) == 1
    assert len(service.ledger.records()) == 1 and len(list(service.store.iterdir())) == 1


def test_a_second_instance_refuses_to_start(dirs, capsys):
    data, watch = dirs
    first = _service(data, watch)
    with pytest.raises(ServiceError, match="another"):
        _service(data, watch)
    assert device_main(["serve", "--once", "--data", str(data), "--bundle", str(REPO_BUNDLE)]) == 2
    assert "another" in capsys.readouterr().err
    del first


def test_a_name_that_is_not_utf8_is_shown_safely(dirs):
    data, watch = dirs
    raw = os.fsencode(str(watch)) + b"/patient_caf\xe9.png"
    os.makedirs(watch, exist_ok=True)
    Image.fromarray((_radiograph() * 255).astype(np.uint8)).save(os.fsdecode(raw))
    service = _service(data, watch)
    assert service.run_once() == 1
    page = render(service.ledger.records()).encode("utf-8", "backslashreplace")
    source = service.ledger.records()[0]["source"]
    source.encode("utf-8")  # the record itself is valid UTF-8
    assert source.endswith("patient_caf\\xe9.png")  # the undecodable byte shown escaped, not dropped or replaced
    assert b"patient_caf\\xe9.png" in page and b"\\udc" not in page


def test_a_symlink_out_of_the_watched_folder_is_refused(dirs, tmp_path):
    data, watch = dirs
    secret = _image(tmp_path / "elsewhere" / "secret.png")
    watch.mkdir(parents=True)
    (watch / "link.png").symlink_to(secret)
    _image(watch / "inside.png", 2)
    (watch / "inside_link.png").symlink_to(watch / "inside.png")
    service = _service(data, watch)
    service.run_once()
    recs = service.ledger.records()
    refused = [r for r in recs if "outside the watched folder" in r.get("error", "")]
    assert len(refused) == 1 and refused[0]["source"].endswith("link.png")
    assert all(p.read_bytes() != secret.read_bytes() for p in service.store.rglob("original*"))  # never copied
    assert sum(answered(r) for r in recs) == 1  # the link inside the folder is the same image, once


def test_a_half_written_file_is_processed_once_complete(dirs):
    data, watch = dirs
    full = _image(watch.parent / "staging" / "x.png").read_bytes()
    watch.mkdir(parents=True)
    target = watch / "x.png"
    service = _service(data, watch, settle_s=0.5)
    target.write_bytes(full[:len(full) // 3])
    assert service.run_once() == 0  # first seen: wait
    time.sleep(0.2)
    target.write_bytes(full[:2 * len(full) // 3])
    assert service.run_once() == 0  # changed: wait again
    target.write_bytes(full)
    assert service.run_once() == 0
    time.sleep(0.6)
    assert service.run_once() == 1
    recs = service.ledger.records()
    assert len(recs) == 1 and answered(recs[0])


def test_future_mtimes_and_per_date_sub_folders(dirs):
    data, watch = dirs
    p = _image(watch / "2026-11-29" / "deep.png")
    future = time.time() + 3600
    os.utime(p, (future, future))
    service = _service(data, watch, settle_s=0.2)
    service.run_once()
    time.sleep(0.3)
    assert service.run_once() == 1


def test_a_missing_watch_folder_is_a_visible_warning_that_clears(dirs):
    data, watch = dirs
    service = _service(data, watch)
    service.run_once()
    assert any("missing" in w for w in service.status.values())
    assert b"is missing" in render([], list(service.status.values())).encode()
    _image(watch / "a.png")
    assert service.run_once() == 1 and not service.status


def test_a_full_disk_pauses_and_loses_nothing(dirs, monkeypatch):
    data, watch = dirs
    for k in range(3):
        _image(watch / f"f{k}.png", k)
    real = service_mod._copy_range
    full = {"on": True}

    def copy(src, dst, size):  # the service copies exactly the bytes it measured, through this
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, size)
    monkeypatch.setattr(service_mod, "_copy_range", copy)
    service = _service(data, watch)
    assert service.run_once() == 0
    assert service.ledger.records() == [] and "disk" in service.status
    assert list(service.store.iterdir()) == []
    full["on"] = False
    assert service.run_once() == 3 and "disk" not in service.status
    assert len(service.ledger.records()) == 3


def test_patient_data_is_readable_by_the_service_user_only(dirs):
    data, watch = dirs
    watch.mkdir(parents=True, exist_ok=True)
    Image.fromarray(in_scope_radiograph()).save(watch / "a.png")  # answered, so an overlay is written
    service = _service(data, watch)
    service.run_once()
    original = next(service.store.rglob("original*"))
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(original.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(original.stat().st_mode) == 0o600
    assert stat.S_IMODE(service.ledger.path.stat().st_mode) == 0o600
    written = {p.name: stat.S_IMODE(p.stat().st_mode) for p in original.parent.iterdir()}
    assert "gradcam.jpg" in written and set(written.values()) == {0o600}, written  # the overlay shows the image too


def test_a_re_exported_file_supersedes_and_an_identical_copy_is_noted(dirs, caplog):
    data, watch = dirs
    _image(watch / "a.png", 0)
    service = _service(data, watch)
    assert service.run_once() == 1
    first = service.ledger.records()[0]["id"]
    _image(watch / "a.png", 3)  # the CR reader exports the same name again, new content
    assert service.run_once() == 1
    assert service.ledger.records()[-1]["supersedes"] == first
    shutil.copy(watch / "a.png", watch / "a_copy.png")
    with caplog.at_level("INFO", logger="fracture_edge.service"):
        assert service.run_once() == 0
    assert "same content as an earlier file" in caplog.text


def test_a_port_in_use_is_a_one_line_error(dirs, capsys):
    data, watch = dirs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code = device_main(["serve", "--data", str(data), "--bundle", str(REPO_BUNDLE), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot serve the results page" in err and "Traceback" not in err


def test_a_torn_last_line_is_cut_so_the_next_record_stands_alone(tmp_path):
    """Without the cut, the next append would be glued to the torn bytes and lost with them."""
    from device.service import Ledger
    path = tmp_path / "results.jsonl"
    whole = b'{"id": "' + b"1" * 32 + b'", "source": "/cr/a.png"}\n'
    path.write_bytes(whole + b'{"id": "' + b"2" * 16)  # a power cut mid-line
    ledger = Ledger(path)
    assert path.read_bytes() == whole  # cut back to the last whole line, nothing else touched
    ledger.append({"id": "3" * 32, "source": "/cr/b.png"})
    assert [r["id"] for r in ledger.records()] == ["1" * 32, "3" * 32]
    assert path.read_bytes().count(b"\n") == 2
    path.write_bytes(b'{"id": "' + b"4" * 20)  # a log that is one torn line: emptied
    Ledger(path)
    assert path.read_bytes() == b""


def test_the_log_index_catches_up_and_rebuilds(tmp_path):
    from device.service import Ledger
    path = tmp_path / "results.jsonl"
    ledger = Ledger(path)
    for k in range(5):
        ledger.append({"id": f"{k:032x}", "source": f"/cr/{k}.png", "probability": k / 10})
    with open(path, "ab") as fh:  # a kill between the log's write and the index's: only the log has it
        fh.write(b'{"id": "' + b"f" * 32 + b'", "source": "/cr/late.png"}\n')
        fh.write(b'{"id": "torn')  # and a power cut mid-line
    ledger = Ledger(path)
    assert ledger.has("f" * 32) and ledger.last_id_for("/cr/late.png") == "f" * 32
    assert [r["id"] for r in ledger.latest(2)] == [f"{4:032x}", "f" * 32]
    assert len(ledger.records()) == 6  # the torn line was cut
    path.write_text('{"id": "' + "a" * 32 + '", "source": "/x.png"}\n')  # the log replaced by hand
    ledger = Ledger(path)
    assert ledger.has("a" * 32) and not ledger.has("f" * 32) and len(ledger.latest(30)) == 1


def _isolated(data, watch, monkeypatch, faults: str = "", **kw) -> Service:
    from device.worker import FAULT_ENV
    monkeypatch.setenv(FAULT_ENV, faults)
    return Service(data, [watch], REPO_BUNDLE, settle_s=0, isolate=True, **kw)


def test_a_file_that_kills_the_reader_is_quarantined_and_the_queue_goes_on(dirs, monkeypatch):
    """Before: one poison file OOM-killed `serve --once` three times in three, and the good file
    behind it was never read. Now the reader dies, not the service; after 3 tries, quarantine."""
    data, watch = dirs
    _image(watch / "a_good.png", 0)
    _image(watch / "b_poison.png", 1)
    _image(watch / "c_good.png", 2)
    service = _isolated(data, watch, monkeypatch, faults="kill:poison")
    try:
        assert service.run_once() == 2  # both good files answered on the first pass
        assert service.run_once() == 0  # second try at the poison
        assert service.run_once() == 1  # third: quarantined, with a record
        assert service.run_once() == 0
    finally:
        service.close()
    recs = service.ledger.records()
    assert len(recs) == 3 and sum(answered(r) for r in recs) == 2
    q = next(r for r in recs if r.get("quarantined"))
    assert "quarantined" in q["error"] and (data / "quarantine" / q["id"]).is_dir()
    assert not (service.store / q["id"]).exists()


def test_a_file_that_hangs_the_reader_is_given_up_on(dirs, monkeypatch):
    data, watch = dirs
    _image(watch / "slow.png", 0)
    _image(watch / "z_good.png", 1)
    service = _isolated(data, watch, monkeypatch, faults="hang:slow", file_timeout_s=3)
    try:
        assert service.run_once() == 1  # the hang costs one timeout, then the next file is read
        service.run_once()
        service.run_once()
    finally:
        service.close()
    recs = service.ledger.records()
    assert any(r.get("quarantined") and "hung" in r["error"] for r in recs)
    assert any(answered(r) for r in recs)


def test_the_reader_runs_under_a_memory_limit(dirs, monkeypatch):
    data, watch = dirs
    big = (np.tile(np.linspace(0, 60000, 3000), (3000, 1))).astype(np.uint16)  # 16-bit: ~54 MB to decode
    watch.mkdir(parents=True)
    Image.fromarray(big).save(watch / "big16.png")
    _image(watch / "small.png", 1)
    service = _isolated(data, watch, monkeypatch, reader_memory_mb=20)
    try:
        assert service.run_once() == 2
    finally:
        service.close()
    recs = {Path(r["source"]).name: r for r in service.ledger.records()}
    assert "memory" in recs["big16.png"]["error"] and answered(recs["small.png"])


def test_retention_prunes_images_never_results(dirs):
    data, watch = dirs
    for k in range(4):
        _image(watch / f"f{k}.png", k)
    service = Service(data, [watch], REPO_BUNDLE, settle_s=0, keep_days=30)
    assert service.run_once() == 4
    folders = sorted(service.store.iterdir())
    old = time.time() - 40 * 86400
    for f in folders[:2]:
        os.utime(f, (old, old))
    assert service.prune_store(force=True) == 2
    assert len(list(service.store.iterdir())) == 2 and len(service.ledger.records()) == 4
    service.max_store_gb = 1e-9  # a tiny cap: everything goes, oldest first
    assert service.prune_store(force=True) == 2 and len(service.ledger.records()) == 4


def test_a_heatmap_on_a_full_disk_is_retried_not_final(dirs, monkeypatch):
    """Before: an image whose overlay hit ENOSPC was logged as an internal error, never retried."""
    from edge_runtime import predictor as predictor_module
    data, watch = dirs
    watch.mkdir(parents=True, exist_ok=True)
    Image.fromarray(in_scope_radiograph()).save(watch / "a.png")  # answered, so an overlay is due
    real = predictor_module.save_overlay
    full = {"on": True}

    def save(*a, **k):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)
    monkeypatch.setattr(predictor_module, "save_overlay", save)
    service = _service(data, watch)
    assert service.run_once() == 0 and service.ledger.records() == [] and "disk" in service.status
    full["on"] = False
    assert service.run_once() == 1
    assert service.ledger.records()[0].get("heatmap") and not service.ledger.records()[0]["warnings"]


def test_kill_9_at_random_points_loses_and_duplicates_nothing(dirs):
    """The service (reader process included) killed three times at seeded random moments, then run
    to the end: every file exactly once, every earlier record unchanged, the index consistent."""
    import json
    import signal
    import subprocess
    import sys
    data, watch = dirs
    names = {_image(watch / f"f{k:02d}.png", k).name for k in range(24)}
    ledger = data / "results.jsonl"
    cmd = [sys.executable, "-m", "device", "serve", "--data", str(data), "--watch", str(watch), "--once",
           "--settle", "0", "--bundle", str(REPO_BUNDLE)]
    root = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(15)
    before: list = []
    for _ in range(3):
        target = len(before) + int(rng.integers(1, 6))
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ledger.exists() and ledger.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the service and its reader
        proc.wait()
        now = [json.loads(x) for x in ledger.read_bytes().split(b"\n") if x.strip()]
        assert now[:len(before)] == before
        before = now
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert recs[:len(before)] == before
    assert len(recs) == 24 and len({r["id"] for r in recs}) == 24
    assert {Path(r["source"]).name for r in recs} == names and all(answered(r) for r in recs)
    from device.service import Ledger
    assert len(Ledger(ledger).latest(100)) == 24


def test_a_reader_that_cannot_start_pauses_the_queue_and_blames_no_file(dirs, monkeypatch):
    data, watch = dirs
    _image(watch / "a.png")
    service = _isolated(data, watch, monkeypatch, faults="nostart:1")
    try:
        assert service.run_once() == 0
        assert service.ledger.records() == [] and "reader" in service.status
        from device.worker import FAULT_ENV
        monkeypatch.setenv(FAULT_ENV, "")
        assert service.run_once() == 1 and "reader" not in service.status
    finally:
        service.close()
