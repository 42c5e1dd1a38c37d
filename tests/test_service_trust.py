"""Trust nothing on disk: what an adversarial run found in the service (loops, swaps between the
scan and the copy, an empty results page, a read-only data folder, an oversized file, a data
folder inside the watched one, idle cost, files too deep), and what a review of that work found
(a data folder watched through a bind mount or a second mount, a watched folder swapped for a
link, folders listed but not entered, a file growing during its copy, sparse files and
non-images kept in the store). After each: a record or a clear refusal, no crash, no id paired
with another image's answer, nothing copied from outside the watched folder, and the next file is
processed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import device.service as service_mod
from benchmarks.fuzz import _radiograph
from device.cli import main as device_main
from device.service import Ledger, Service, ServiceError
from edge_runtime.bundle import REPO_BUNDLE
from answers import answer_of, answered  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((_radiograph(160 + 8 * seed, 200, seed) * 255).astype(np.uint8)).save(path)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "data", tmp_path / "cr"


def _service(data, watch, **kw) -> Service:
    return Service(data, [watch], REPO_BUNDLE, settle_s=kw.pop("settle_s", 0), **kw)


def _by_name(service) -> dict:
    return {Path(r["source"]).name: r for r in service.ledger.records()}


def _check_pairing(service, answers: dict, secrets=()) -> None:
    """Every answer belongs to its id: the stored copy hashes to the id, the answer (probability,
    or the out-of-scope gate's score) is the model's for those bytes, and no stored copy is a file
    from outside the watched folder."""
    for rec in service.ledger.records():
        if answer_of(rec) is None:
            continue
        stored = Path(rec["original"]).read_bytes()
        assert _sha(stored) == rec["id"]
        assert rec["id"] in answers, "an answer for bytes that were never in the watched folder"
        assert answer_of(rec) == pytest.approx(answers[rec["id"]], abs=1e-6)
    for f in service.store.rglob("original*"):
        assert f.read_bytes() not in secrets


def _answers(service, *files: Path) -> dict:
    return {_sha(f.read_bytes()): answer_of(service.predictor.predict_file(f)) for f in files}


# --- 1. loops --------------------------------------------------------------------------------

def test_symlink_loops_of_any_depth_are_recorded_and_the_service_goes_on(dirs, tmp_path):
    """Before: Path.resolve() raised RuntimeError on the first loop, and the service crashed on
    every start without naming the path."""
    data, watch = dirs
    _image(watch / "good.png")
    (watch / "loop").symlink_to("loop")  # ln -s loop watch/loop
    (watch / "x").symlink_to("y")
    (watch / "y").symlink_to("x")  # x -> y -> x
    deep = watch / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "p").symlink_to("q")
    (deep / "q").symlink_to("r")
    (deep / "r").symlink_to("p")  # three deep, a three-link cycle
    (deep / "up").symlink_to("../..")  # a folder link back up: its files are read where they are
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "back").symlink_to(watch / "x")  # a link out that leads into a loop
    (watch / "via_outside").symlink_to(tmp_path / "elsewhere" / "back")
    service = _service(data, watch)
    assert service.run_once() == 1
    recs = _by_name(service)
    for name in ("loop", "x", "y", "p", "q", "r", "via_outside"):
        assert "loop" in recs[name]["error"], name
    assert answered(recs["good.png"]) and "up" not in recs
    assert service.run_once() == 0 and len(service.ledger.records()) == len(recs)  # each recorded once


def test_a_watched_folder_that_is_itself_a_loop_is_a_banner(dirs, tmp_path):
    data, _ = dirs
    loop = tmp_path / "share"
    loop.symlink_to(loop)
    service = Service(data, [loop], REPO_BUNDLE, settle_s=0)
    assert service.run_once() == 0
    assert any("share" in w and "symbolic links" in w for w in service.status.values())  # why, not "missing"


# --- 2. swaps between the scan and the copy ---------------------------------------------------

def test_a_link_swapped_in_after_the_scan_copies_nothing_from_outside(dirs, tmp_path):
    """Before: the batch was hashed at the scan and copied by name later, so a symlink put in the
    file's place copied the outside file into the store."""
    data, watch = dirs
    secret = _image(tmp_path / "outside" / "secret.png", 5)
    _image(watch / "a.png", 0)
    _image(watch / "b.png", 1)
    service = _service(data, watch)
    answers = _answers(service, watch / "a.png", watch / "b.png")
    waiting = list(service.pending())
    (watch / "a.png").unlink()
    (watch / "a.png").symlink_to(secret)
    results = [service.process(*w) for w in waiting]
    assert sum(r is not None for r in results) == 1  # b.png; the batch went on
    service.run_once()
    recs = _by_name(service)
    assert "outside the watched folder" in recs["a.png"]["error"]
    _check_pairing(service, answers, secrets=[secret.read_bytes()])


def test_a_folder_swapped_for_a_link_after_the_scan_copies_nothing_from_outside(dirs, tmp_path):
    data, watch = dirs
    _image(watch / "day" / "a.png", 0)
    outside = tmp_path / "outside"
    secret = _image(outside / "a.png", 5)
    service = _service(data, watch)
    answers = _answers(service, watch / "day" / "a.png")
    waiting = list(service.pending())
    (watch / "day").rename(tmp_path / "moved")
    (watch / "day").symlink_to(outside)  # the same name now leads out of the watched folder
    assert [service.process(*w) for w in waiting] == [None]
    service.run_once()
    assert "outside the watched folder" in _by_name(service)["day"]["error"]
    _check_pairing(service, answers, secrets=[secret.read_bytes()])


def test_a_file_re_exported_after_the_scan_never_pairs_one_id_with_another_answer(dirs, tmp_path):
    """Before: record id sha(A) carried B's probability, and A's real image, dropped again, was
    skipped as "same content"."""
    data, watch = dirs
    a = _image(tmp_path / "A.png", 0)
    b = _image(tmp_path / "B.png", 3)
    watch.mkdir(parents=True)
    shutil.copy(a, watch / "x.png")
    service = _service(data, watch)
    answers = _answers(service, a, b)
    waiting = list(service.pending())
    shutil.copy(b, watch / ".tmp")
    os.replace(watch / ".tmp", watch / "x.png")  # another patient's image under the same name
    [service.process(*w) for w in waiting]
    service.run_once()
    shutil.copy(a, watch / "x_again.png")  # A's real image, dropped again
    service.run_once()
    _check_pairing(service, answers)
    ids = [r["id"] for r in service.ledger.records() if answered(r)]
    assert sorted(ids) == sorted(answers)  # A and B each answered once, under their own id


@pytest.mark.parametrize("step", ["opened", "hashed", "copied"])
@pytest.mark.parametrize("swap", ["rewrite_in_place", "rename_over", "link_out", "fifo", "delete"])
def test_any_swap_between_any_two_steps_is_never_used(dirs, tmp_path, step, swap):
    """The file is changed at each step of its processing; whatever was swapped in is either
    refused, or taken on a later scan under its own id: never the old id with the new answer."""
    data, watch = dirs
    a = _image(watch / "x.png", 0)
    a_bytes = a.read_bytes()
    b = _image(tmp_path / "B.png", 3)
    secret = _image(tmp_path / "outside" / "secret.png", 5)
    service = _service(data, watch)
    answers = _answers(service, a, b)
    swapped = []

    def between(name, path):
        if name != step or swapped or path.name != "x.png":
            return
        swapped.append(name)
        if swap == "rewrite_in_place":
            with open(path, "r+b") as fh:  # the same inode, other bytes
                fh.truncate(0)
                fh.write(b.read_bytes())
        elif swap == "rename_over":
            shutil.copy(b, watch / ".new")
            os.replace(watch / ".new", path)
        elif swap == "link_out":
            path.unlink()
            path.symlink_to(secret)
        elif swap == "fifo":
            path.unlink()
            os.mkfifo(path)
        else:
            path.unlink()
    service.between = between
    for _ in range(3):
        service.run_once()
    assert swapped == [step]
    _check_pairing(service, answers, secrets=[secret.read_bytes()])
    recs = service.ledger.records()
    answered_ids = {r["id"] for r in recs if answered(r)}
    if step == "copied" or swap == "delete":
        assert _sha(a_bytes) in answered_ids  # the copy was whole before the swap: A is answered
    if swap in ("rewrite_in_place", "rename_over"):
        assert _sha(b.read_bytes()) in answered_ids  # what was swapped in is taken later, as itself
    if swap in ("link_out", "fifo"):
        assert any(r.get("error") and r["source"].endswith("x.png") for r in recs)


def test_a_link_to_dev_zero_or_a_fifo_is_refused_without_reading_it(dirs):
    data, watch = dirs
    _image(watch / "good.png")
    (watch / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(watch / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(watch / "sock.png"))
    (watch / "dangling.png").symlink_to(watch / "nowhere.png")
    try:
        service = _service(data, watch)
        assert service.run_once() == 1
    finally:
        sock.close()
    recs = _by_name(service)
    assert "outside the watched folder" in recs["zero.png"]["error"]
    assert "FIFO" in recs["pipe.png"]["error"] and "socket" in recs["sock.png"]["error"]
    assert "does not exist" in recs["dangling.png"]["error"]
    assert answered(recs["good.png"])
    assert sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) < 5 * 2 ** 20


# --- 5. the page before the first result ------------------------------------------------------

def test_the_results_page_shows_banners_before_the_first_result(dirs):
    """Before: Ledger.latest raised FileNotFoundError with no log yet, and the page sent an empty
    reply, so the missing-share banner could not show until something had been processed."""
    from device.page import start_page

    data, watch = dirs
    service = _service(data, watch)
    service.run_once()  # the watched folder is missing
    server = start_page(service.ledger, service.store, "127.0.0.1", 0,
                        status=lambda: list(service.status.values()))
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/", timeout=30).read().decode()
    finally:
        server.shutdown()
    assert "is missing" in body and "No results yet" in body
    assert Ledger(data / "results.jsonl").latest(30) == []


# --- 6. a read-only data folder ---------------------------------------------------------------

_READ_ONLY = textwrap.dedent("""
    import json, subprocess, sys, urllib.request
    from pathlib import Path
    from device.page import start_page
    from device.service import Service
    from edge_runtime.bundle import REPO_BUNDLE
    import numpy as np
    from PIL import Image
    from benchmarks.fuzz import _radiograph
    def _image(path, seed):
        Image.fromarray((_radiograph(160 + 8 * seed, 200, seed) * 255).astype(np.uint8)).save(path)
    data, watch, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    def ro(on):  # a read-only mount over the folder, or off again (as a card remounted by the kernel)
        if how == "mount":
            subprocess.run(["mount", "--bind", "-o", "ro", str(data), str(data)] if on else ["umount", "-l", str(data)],
                           check=True)
        else:
            data.chmod(0o500 if on else 0o700)
    out = {}
    ro(True)
    service = Service(data, [watch], REPO_BUNDLE, settle_s=0)  # before: a crash at every start
    out["start"] = [service.run_once(), list(service.status.values())]
    page = start_page(service.ledger, service.store, "127.0.0.1", 0, status=lambda: list(service.status.values()))
    out["page"] = urllib.request.urlopen(f"http://127.0.0.1:{page.server_address[1]}/").read().decode()
    page.shutdown()
    ro(False)
    out["writable"] = [service.run_once(), list(service.status.values())]
    ro(True)  # the SD card remounted read-only while it runs
    _image(watch / "b.png", 1)
    out["remounted"] = [service.run_once(), list(service.status.values())]
    ro(False)
    out["back"] = [service.run_once(), list(service.status.values())]
    out["records"] = [json.loads(x) for x in (data / "results.jsonl").read_text().splitlines()]
    print(json.dumps(out))
""")


def _read_only_runner():
    if os.geteuid() != 0:
        return [], "chmod"
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rm"], "mount"
    return None, None


def _run_script(wrap, script: str, *args: str) -> dict:
    """Run one of this file's scripts under `wrap` (a mount namespace, dropped privileges) and
    return the JSON it printed last; the script's own failure fails the test with its stderr."""
    res = subprocess.run(wrap + [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_read_only_data_folder_is_a_banner_and_a_wait_not_a_crash(dirs):
    """Before: a read-only data folder (or an SD card remounted read-only) crashed the service at
    every restart. Now: a banner on the page, nothing processed, nothing lost, and the work
    resumes when the folder can be written again. Read-only for real: a read-only bind mount in
    a private mount namespace (as root), or a folder without write permission (as a user)."""
    wrap, how = _read_only_runner()
    if wrap is None:
        pytest.skip("neither a non-root user nor `unshare -rm` is available to make a folder read-only")
    data, watch = dirs
    data.mkdir(parents=True)
    _image(watch / "a.png", 0)
    out = _run_script(wrap, _READ_ONLY, str(data), str(watch), how)
    assert out["start"][0] == 0 and any("cannot be used" in w for w in out["start"][1])
    assert "cannot be used" in out["page"]
    assert out["writable"] == [1, []]
    assert out["remounted"][0] == 0 and any("cannot be used" in w for w in out["remounted"][1])
    assert out["back"] == [1, []]
    assert sorted(Path(r["source"]).name for r in out["records"]) == ["a.png", "b.png"]
    assert all(answered(r) for r in out["records"])


def test_an_unwritable_log_pauses_the_queue_instead_of_crashing(dirs, monkeypatch):
    """Any write to the data folder that fails (here the log, as on a card gone read-only) stops
    the scan with a banner; no file is blamed and nothing is recorded as an error."""
    import errno
    data, watch = dirs
    _image(watch / "a.png", 0)
    service = _service(data, watch)
    real = Ledger.append

    def ro(self, record):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(Ledger, "append", ro)
    assert service.run_once() == 0 and "Read-only" in service.status["data"]
    monkeypatch.setattr(Ledger, "append", real)
    assert service.run_once() == 1 and not service.status
    assert [r.get("error") for r in service.ledger.records()] == [None]


# --- 7. an oversized file ---------------------------------------------------------------------

def test_an_oversized_file_is_refused_by_size_and_the_queue_goes_on(dirs):
    """Before: a file larger than the data disk was copied until the disk was full, then again on
    every scan, and the files after it were never processed."""
    data, watch = dirs
    watch.mkdir(parents=True)
    with open(watch / "huge.dcm", "wb") as fh:  # sparse: 2 GB that take no space
        fh.truncate(2 * 2 ** 30)
    _image(watch / "z_good.png", 1)
    service = _service(data, watch)
    assert service.run_once() == 1
    recs = _by_name(service)
    assert "larger than the 256 MB" in recs["huge.dcm"]["error"] and "2,048 MB" in recs["huge.dcm"]["error"]
    assert answered(recs["z_good.png"])
    assert not any(f.stat().st_size > 2 ** 20 for f in data.rglob("*") if f.is_file())  # never copied
    assert service.run_once() == 0 and len(service.ledger.records()) == 2


def test_a_file_that_does_not_fit_the_free_space_waits_and_the_others_go_on(dirs, monkeypatch):
    data, watch = dirs
    big = _image(watch / "a_big.png", 0)
    Image.new("L", (8, 8), 40).save(watch / "b_small.png")  # an image, far smaller than a_big.png
    space = {"free": service_mod.RESERVE_BYTES + big.stat().st_size - 1, "total": 2 ** 40}
    monkeypatch.setattr(service_mod, "disk_space", lambda path: (space["free"], space["total"]))
    service = _service(data, watch)
    assert service.run_once() == 1  # the small file; the big one waits
    assert "a_big.png" in service.status["space"] and "a_big.png" not in _by_name(service)
    space["free"] = 2 ** 40
    assert service.run_once() == 1 and "space" not in service.status
    space["total"] = 2 ** 20  # a disk smaller than the file: it can never fit
    _image(watch / "c_big.png", 2)
    service.run_once()
    assert "never fit" in _by_name(service)["c_big.png"]["error"]


# --- 8. a data folder inside the watched folder ----------------------------------------------

@pytest.mark.parametrize("layout", ["same", "data_inside_watch", "watch_inside_data", "via_a_link"])
def test_a_data_folder_overlapping_a_watched_folder_is_refused_at_start(tmp_path, capsys, layout):
    """Before: the service processed its own lock, index, log and overlays without end."""
    share = tmp_path / "share"
    share.mkdir()
    data, watch = {"same": (share, share), "data_inside_watch": (share / "data", share),
                   "watch_inside_data": (share, share / "store"),
                   "via_a_link": (tmp_path / "alias" / "data", share)}[layout]
    if layout == "via_a_link":
        (tmp_path / "alias").symlink_to(share)
    with pytest.raises(ServiceError, match="data folder"):
        Service(data, [watch], REPO_BUNDLE, settle_s=0)
    assert device_main(["serve", "--once", "--data", str(data), "--watch", str(watch),
                        "--bundle", str(REPO_BUNDLE)]) == 2
    assert "data folder" in capsys.readouterr().err
    assert not (share / "results.jsonl").exists() and not (share / "data" / "results.jsonl").exists()


# --- 10. idle cost ----------------------------------------------------------------------------

def test_an_idle_scan_opens_no_index_connection_and_reads_no_file(dirs, monkeypatch):
    """Before: every scan opened two sqlite connections per file already processed (40% of a core
    with 10k files). Now files are skipped by name, size and mtime (and inode, ctime) already
    seen, and the service keeps one connection."""
    data, watch = dirs
    for k in range(20):
        watch.mkdir(parents=True, exist_ok=True)
        # DICOM without a preamble begins with a group 0008 tag; a random start could sniff as another format
        (watch / f"f{k:02d}.dcm").write_bytes(b"\x08\x00\x05\x00" + os.urandom(64) + bytes([k]))
    ledger = Ledger(data / "results.jsonl")
    for f in sorted(watch.iterdir()):  # processed before: in the log, as the service records them
        ledger.append({"id": _sha(f.read_bytes()), "source": str(f), "probability": 0.1})
    del ledger
    service = _service(data, watch)
    service.run_once()  # the first scan after a start reads each file once
    connects, reads = [], []
    real_connect, real_id = sqlite3.connect, service_mod.file_id
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connects.append(a) or real_connect(*a, **k))
    monkeypatch.setattr(service_mod, "file_id", lambda src: reads.append(src) or real_id(src))
    for _ in range(3):
        assert service.run_once() == 0
    assert connects == [] and reads == []
    (watch / "f00.dcm").write_bytes(b"re-exported")  # a change is still seen
    service.run_once()
    assert len(reads) >= 1 and len(service.ledger.records()) == 21


# --- 11. a file too deep ----------------------------------------------------------------------

def test_a_file_deeper_than_the_service_reads_is_recorded_by_name(dirs):
    """Before: a file 5 folders deep was silently ignored, though the docs promise an answer or a
    one-line record for every input."""
    data, watch = dirs
    _image(watch / "1" / "2" / "3" / "4" / "four_deep.png", 0)
    _image(watch / "1" / "2" / "3" / "4" / "5" / "five_deep.png", 1)
    _image(watch / "1" / "2" / "3" / "4" / "5" / "6" / "7" / "seven_deep.png", 2)
    too_deep = watch.joinpath(*[str(k) for k in range(1, service_mod.DEEP_LIMIT + 3)])
    too_deep.mkdir(parents=True)
    service = _service(data, watch)
    assert service.run_once() == 1
    recs = _by_name(service)
    assert answered(recs["four_deep.png"])
    assert "5 folders deep" in recs["five_deep.png"]["error"] and recs["five_deep.png"]["source"].endswith(
        "5/five_deep.png")
    assert "7 folders deep" in recs["seven_deep.png"]["error"]
    assert any("nothing in it is read" in r.get("error", "") for r in recs.values())
    assert service.run_once() == 0 and len(service.ledger.records()) == len(recs)


# --- the service's own files are not trusted either --------------------------------------------

def test_a_damaged_index_or_attempts_file_is_rebuilt_not_fatal(dirs):
    data, watch = dirs
    _image(watch / "a.png", 0)
    service = _service(data, watch)
    assert service.run_once() == 1
    service.close()
    del service
    (data / "results.jsonl.index.sqlite").write_bytes(b"this is not a database" * 100)
    (data / "attempts.json").write_text("[1, 2, 3]")
    _image(watch / "b.png", 1)
    service = _service(data, watch)
    assert service.run_once() == 1  # b.png; a.png is known from the rebuilt index
    assert sorted(Path(r["source"]).name for r in service.ledger.records()) == ["a.png", "b.png"]


def test_the_page_reads_the_logs_tail_when_the_index_cannot_be_read(tmp_path):
    """A read-only card with no index yet (or an index that cannot be opened): the page still
    shows the last results, read backwards from the log, a torn last line left out."""
    log = tmp_path / "results.jsonl"
    log.write_text("".join(json.dumps({"id": f"{k:032x}", "source": f"/cr/{k}.png", "probability": 0.5}) + "\n"
                           for k in range(40)) + '{"id": "torn')
    (tmp_path / "results.jsonl.index.sqlite").mkdir()  # cannot be opened as a database
    ledger = Ledger(log, deferred=True)
    assert [r["id"] for r in ledger.latest(30)] == [f"{k:032x}" for k in range(10, 40)]


# --- a review of the work above ------------------------------------------------------------------

_BIND = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from benchmarks.fuzz import _radiograph
    from device.service import Service, ServiceError
    from edge_runtime.bundle import REPO_BUNDLE
    def image(path, seed):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((_radiograph(160 + 8 * seed, 200, seed) * 255).astype(np.uint8)).save(path)
    def bind(src, dst):
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    def start(data, watch):
        try:
            return Service(data, [watch], REPO_BUNDLE, settle_s=0)
        except ServiceError as exc:
            return str(exc)
    tmp, out = Path(sys.argv[1]), {}
    # 1. the watched folder becomes the data folder through a bind mount while the service runs
    data, watch = tmp / "data", tmp / "cr"
    image(watch / "a.png", 0)
    s = start(data, watch)
    out["first"] = s.run_once()
    bind(data, watch)
    out["scans"] = [s.run_once() for _ in range(3)]
    out["records"] = [r["source"] for r in s.ledger.records()]
    out["status"] = list(s.status.values())
    s.close()
    out["restart"] = start(data, watch)  # a string: refused at start
    # 2. the data folder's parent bound onto the watched folder: the data folder is inside it
    box, share = tmp / "box", tmp / "share"
    (box / "data").mkdir(parents=True)
    share.mkdir()
    bind(box, share)
    out["parent"] = start(box / "data", share)
    # 3. the data folder bound onto a folder inside a watched one, while the service runs
    data3, watch3 = tmp / "data3", tmp / "cr3"
    image(watch3 / "b.png", 1)
    (watch3 / "mnt").mkdir()
    s = start(data3, watch3)
    out["first3"] = s.run_once()
    bind(data3, watch3 / "mnt")
    image(watch3 / "c.png", 2)
    out["scans3"] = [s.run_once() for _ in range(3)]
    out["records3"] = [r["source"] for r in s.ledger.records()]
    out["status3"] = list(s.status.values())
    s.close()
    print(json.dumps(out))
""")


def _mount_namespace():
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rm"]
    return None


def test_a_data_folder_watched_through_a_bind_mount_is_refused_and_never_read(tmp_path):
    """Before: with DATA bound onto WATCH (`mount --bind DATA WATCH`), every scan recorded
    results.jsonl and answered store/<id>/gradcam.jpg anew, without end: the overlap check
    compared resolved paths only. Now (device, inode) of the two folders and their parents, and
    of every folder walked, are compared: refused at start, skipped with a banner later."""
    wrap = _mount_namespace()
    if wrap is None:
        pytest.skip("`unshare -rm` (a private mount namespace) is not available here to make a bind mount")
    out = _run_script(wrap, _BIND, str(tmp_path))
    assert out["first"] == 1 and out["scans"] == [0, 0, 0]
    assert [Path(r).name for r in out["records"]] == ["a.png"]  # nothing of its own was read
    assert any("is the data folder" in b and "bind mount" in b for b in out["status"])
    assert "is the data folder" in out["restart"]
    assert "inside the watched folder" in out["parent"] and "bind mount" in out["parent"]
    assert out["first3"] == 1 and out["scans3"] == [1, 0, 0]  # c.png; nothing under mnt/
    assert sorted(Path(r).name for r in out["records3"]) == ["b.png", "c.png"]
    assert any("mnt" in b and "data folder" in b for b in out["status3"])


def test_a_watched_folder_holding_the_data_folders_marker_is_refused(dirs, tmp_path):
    """The same NFS or SMB export mounted twice shares neither path nor (device, inode) with
    the data folder: its marker file, made once with a random name, gives it away. Here a copy
    of the data folder stands in for the second mount."""
    data, watch = dirs
    _image(watch / "a.png", 0)
    service = _service(data, watch)
    assert service.run_once() == 1
    service.close()
    marker = [p.name for p in data.iterdir() if p.name.startswith(service_mod.MARKER_PREFIX)]
    assert len(marker) == 1 and len(marker[0]) > len(service_mod.MARKER_PREFIX) + 8
    second = tmp_path / "second-mount"
    shutil.copytree(data, second)
    with pytest.raises(ServiceError, match="marker"):
        Service(data, [second], REPO_BUNDLE, settle_s=0)
    service = _service(data, watch)  # the marker is made once: a restart keeps it
    assert [p.name for p in data.iterdir() if p.name.startswith(service_mod.MARKER_PREFIX)] == marker
    (watch / "mnt").mkdir()  # the export mounted again inside a watched folder, while the service runs
    shutil.copy(data / marker[0], watch / "mnt" / marker[0])
    shutil.copy(data / "results.jsonl", watch / "mnt" / "results.jsonl")
    _image(watch / "mnt" / "x.png", 3)
    _image(watch / "b.png", 1)
    assert service.run_once() == 1  # b.png; nothing under mnt/
    assert sorted(_by_name(service)) == ["a.png", "b.png"]
    assert any("mnt" in b and marker[0] in b for b in service.status.values())


def test_a_watched_folder_that_comes_to_lead_elsewhere_is_not_read(tmp_path):
    """Before: `--watch share/CR`, then `mv share/CR share/CR.old; ln -s /elsewhere share/CR`,
    and the next scan copied /elsewhere's files into the store: the path was resolved again on
    every scan. Now where it led at start, and which folder was there, are kept: a path that
    leads elsewhere, or to another folder, is not read (a banner); back as it was, it is read
    again; a restart accepts the folder as it is then."""
    share, data = tmp_path / "share", tmp_path / "data"
    cr = share / "CR"
    _image(cr / "a.png", 0)
    secret = _image(tmp_path / "elsewhere" / "secret.png", 5)
    service = Service(data, [cr], REPO_BUNDLE, settle_s=0)
    assert service.run_once() == 1
    cr.rename(share / "CR.old")
    cr.symlink_to(tmp_path / "elsewhere")
    assert service.run_once() == 0
    assert any("now leads to" in b and "elsewhere" in b for b in service.status.values())
    assert not any(f.read_bytes() == secret.read_bytes() for f in service.store.rglob("original*"))
    cr.unlink()
    (share / "CR.old").rename(cr)
    _image(cr / "b.png", 1)
    assert service.run_once() == 1 and not service.status  # the folder it was: read again
    cr.rename(share / "CR.replaced")
    _image(cr / "c.png", 2)  # another folder at the same path (not a mount)
    assert service.run_once() == 0
    assert any("no longer the folder" in b for b in service.status.values())
    service.close()
    restarted = Service(data, [cr], REPO_BUNDLE, settle_s=0)
    assert restarted.run_once() == 1 and "c.png" in _by_name(restarted)
    assert "secret.png" not in _by_name(restarted)


_LISTONLY = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from benchmarks.fuzz import _radiograph
    from device.service import Service
    from edge_runtime.bundle import REPO_BUNDLE
    def image(path, seed):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((_radiograph(160 + 8 * seed, 200, seed) * 255).astype(np.uint8)).save(path)
    tmp, out = Path(sys.argv[1]), {}
    probe = tmp / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
        out["applies"] = False
    except PermissionError:
        out["applies"] = True
    watch = tmp / "cr"
    image(watch / "ok.png", 0)
    image(watch / "sub" / "in.png", 1)
    s = Service(tmp / "data", [watch], REPO_BUNDLE, settle_s=0)
    for mode in (0o444, 0o644):  # listed, not entered
        (watch / "sub").chmod(mode)
        try:
            out[oct(mode)] = [s.run_once(), list(s.status.values())]
        finally:
            (watch / "sub").chmod(0o755)
    out["back"] = [s.run_once(), list(s.status.values())]
    out["records"] = [r["source"] for r in s.ledger.records()]
    s.close()
    root = tmp / "cr2"  # the watched folder itself at 0644
    image(root / "a.png", 2)
    s = Service(tmp / "data2", [root], REPO_BUNDLE, settle_s=0)
    root.chmod(0o644)
    try:
        out["root"] = [s.run_once(), list(s.status.values())]
    finally:
        root.chmod(0o755)
    out["root_back"] = [s.run_once(), list(s.status.values())]
    s.close()
    print(json.dumps(out))
""")


def _where_permissions_apply():
    """How to run a child for whom file permissions apply: as it is (not root), or as root
    without the two capabilities that let root read and enter anything (setpriv). None: neither."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    wrap = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    if shutil.which("setpriv") and subprocess.run(wrap + ["true"], capture_output=True).returncode == 0:
        return wrap
    return None


def test_a_folder_that_can_be_listed_but_not_entered_is_a_banner(tmp_path):
    """Before: a folder at 0444 or 0644 (r, no x) was listed, every entry's lstat failed with
    EACCES, and the code took that for "vanished": no record, no banner, the image silently
    never read; the watched folder itself at 0644 gave 0 records and an empty status. Now only
    ENOENT means vanished: any other error is a banner naming the folder and the reason."""
    wrap = _where_permissions_apply()
    if wrap is None:
        pytest.skip("running as root, and setpriv cannot drop CAP_DAC_OVERRIDE here: permissions would not apply")
    out = _run_script(wrap, _LISTONLY, str(tmp_path))
    if not out["applies"]:
        pytest.skip("file permissions do not apply to the child process here")
    sub, root = str(tmp_path / "cr" / "sub"), str(tmp_path / "cr2")
    for mode in ("0o444", "0o644"):
        got, banners = out[mode]
        assert any(sub in b and "not entered" in b and "Permission denied" in b for b in banners), (mode, banners)
    assert out["0o444"][0] == 1  # ok.png went on
    assert out["back"] == [1, []]  # in.png, once the folder can be entered; the banner cleared
    assert sorted(Path(r).name for r in out["records"]) == ["in.png", "ok.png"]
    assert out["root"][0] == 0 and any(root in b and "not entered" in b for b in out["root"][1])
    assert out["root_back"] == [1, []]


def test_a_file_that_grows_while_it_is_copied_is_copied_only_as_far_as_it_was_measured(dirs, monkeypatch):
    """Before: the copy went through /proc/self/fd to the end of the file, so 100 MB appended
    after the size and free-space checks (25 KB) made a 104 MB copy. Now exactly the size
    measured is copied, and a file that changed meanwhile is dropped and taken again later."""
    data, watch = dirs
    a = _image(watch / "a.png", 0)
    size = a.stat().st_size
    service = _service(data, watch)
    copies, real = [], Service._copy

    def spy(self, *args, **kw):
        dst, copied = real(self, *args, **kw)
        copies.append(dst.stat().st_size)
        return dst, copied
    monkeypatch.setattr(Service, "_copy", spy)

    def grow(step, path):
        if step == "hashed" and not copies:
            with open(path, "ab") as fh:
                fh.write(bytes(4 * 2 ** 20))
    service.between = grow
    assert service.run_once() == 0  # changed while it was copied: nothing kept yet
    assert copies == [size] and service.ledger.records() == [] and not any(service.store.iterdir())
    assert service.run_once() == 1  # as it is now, settled, under the id of those bytes
    rec = service.ledger.records()[0]
    assert rec["id"] == _sha(a.read_bytes()) and answered(rec)
    assert copies[1] == size + 4 * 2 ** 20


def test_sparse_files_and_non_images_are_refused_and_leave_no_copy(dirs):
    """Before: `truncate -s 150M b.png` grew the data folder by 151 MB and kept it beside a "not
    an image" record (128 such files fill a card), and any .txt was kept in the store too. Now
    the first bytes are sniffed from the descriptor (as the runtime does) and sparse files are
    told by what is stored: refused with a record, never copied; what the reader cannot read is
    recorded and its copy removed. DICOM, with its preamble or without, is still read."""
    from tests.dicom_factory import write_dicom
    data, watch = dirs
    good = _image(watch / "good.png", 0)
    with open(watch / "b.png", "wb") as fh:  # an image's header, then 20 MB of holes
        fh.write(good.read_bytes()[:64])
        fh.truncate(20 * 2 ** 20)
    (watch / "notes.txt").write_text("patient list exported 2026-12-05\n" * 100)
    (watch / "report.png").write_bytes(b"%PDF-1.7\n" + bytes(2000))
    (watch / "empty.png").write_bytes(b"")
    (watch / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 12)
    dcm = write_dicom(watch / "with_preamble.dcm", (_radiograph(180, 220, 1) * 4095).astype(np.uint16))
    (watch / "no_preamble.dcm").write_bytes(dcm.read_bytes()[132:])  # raw DICOM: read by its name
    service = _service(data, watch)
    service.run_once()
    recs = _by_name(service)
    assert "sparse" in recs["b.png"]["error"] and "20 MB" in recs["b.png"]["error"]
    assert "not an image" in recs["notes.txt"]["error"]
    assert "PDF" in recs["report.png"]["error"] and "empty" in recs["empty.png"]["error"]
    assert recs["broken.png"]["error"] and recs["broken.png"].get("probability") is None
    read = ("good.png", "with_preamble.dcm", "no_preamble.dcm")
    assert all(answered(recs[n]) for n in read)
    assert {p.name for p in service.store.iterdir()} == {recs[n]["id"] for n in read}  # no copy of the others
    assert sum(f.stat().st_blocks * 512 for f in data.rglob("*") if f.is_file()) < 4 * 2 ** 20
    assert service.run_once() == 0 and len(service.ledger.records()) == len(recs)


def test_a_reader_that_runs_out_of_memory_or_is_killed_is_named_so(dirs, monkeypatch, caplog):
    """Before: a reader that died was often reported as "hung" (its end of output was taken for
    a timeout when it had not been reaped yet), and one that ran out of memory as "died". Now
    the exit status says which: out of memory, killed (SIGKILL: the kernel's OOM killer), other."""
    from device.worker import FAULT_ENV
    data, watch = dirs
    _image(watch / "a_oom.png", 0)
    _image(watch / "b_killed.png", 1)
    _image(watch / "c_good.png", 2)
    monkeypatch.setenv(FAULT_ENV, "oom:a_oom,kill:b_killed")
    service = Service(data, [watch], REPO_BUNDLE, settle_s=0, isolate=True)
    try:
        with caplog.at_level(logging.ERROR, logger="fracture_edge.service"):
            assert service.run_once() == 1
    finally:
        service.close()
    said = {name: " ".join(r.getMessage() for r in caplog.records if name in r.getMessage())
            for name in ("a_oom", "b_killed")}
    assert "ran out of memory" in said["a_oom"] and "hung" not in said["a_oom"]
    assert "killed (SIGKILL)" in said["b_killed"] and "hung" not in said["b_killed"]


def test_a_results_log_that_is_not_a_file_is_named_by_its_full_path(dirs):
    data, watch = dirs
    (data / "results.jsonl").mkdir(parents=True)
    service = _service(data, watch)
    assert service.run_once() == 0
    assert f"{data / 'results.jsonl'} is not a regular file" in service.status["data"]


def test_a_file_swapped_for_a_folder_after_the_scan_is_looked_at_again_not_refused(dirs):
    """Before: a spurious record "a folder, not a file" for x.png. Now the folder is walked on
    the next scan and the image in it is answered."""
    data, watch = dirs
    _image(watch / "x.png", 0)
    service = _service(data, watch)

    def to_folder(step, path):
        if step == "scanned" and path.name == "x.png" and path.is_file():
            path.unlink()
            _image(path / "inner.png", 1)
    service.between = to_folder
    assert service.run_once() == 0 and service.ledger.records() == []
    service.between = None
    assert service.run_once() == 1
    assert [r["source"] for r in service.ledger.records()] == [str(watch / "x.png" / "inner.png")]


def test_an_idle_scan_does_not_resolve_inside_links_again(dirs, monkeypatch):
    """Before: every idle scan resolved every link again (realpath: an lstat per part of its
    path). Now a link dealt with is skipped while it and its target are unchanged; a link that
    changes is resolved again."""
    data, watch = dirs
    _image(watch / "a.png", 0)
    _image(watch / ".hidden.png", 1)  # reachable only through a link once it is re-pointed
    (watch / "sub").mkdir()
    (watch / "link_file.png").symlink_to("a.png")
    (watch / "link_dir").symlink_to("sub")
    service = _service(data, watch)
    assert service.run_once() == 1
    resolved, real = [], os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, *a, **k: resolved.append(str(p)) or real(p, *a, **k))
    for _ in range(3):
        assert service.run_once() == 0
    assert not [p for p in resolved if "link_" in p]
    (watch / "link_file.png").unlink()
    (watch / "link_file.png").symlink_to(".hidden.png")
    assert service.run_once() == 1  # re-pointed: resolved again, and what it leads to now is read
    assert answered(_by_name(service)["link_file.png"])
