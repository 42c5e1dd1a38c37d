"""The clinic service: watched folders and camera captures feed one queue; every image is
processed exactly once, also across a restart or a power cut; results go to an append-only log.

Durability, in order: the original is copied into store/<id>/ beside its result; only then is the
result appended to results.jsonl as one whole line in a single write, followed by fsync. A kill
at any point before that write leaves no record, and the image is processed again on restart
(the store folder is simply rewritten); a power cut *during* the write can leave a torn last line,
which the next start cuts off before appending. The id is the sha256 of the file's bytes, so a
file seen again (a rescan, a restart, a second copy) is never logged twice. Nothing is sent
anywhere, and records carry no DICOM tag values.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from PIL import Image

from edge_runtime.bundle import sha256_file
from edge_runtime.cli import printable
from edge_runtime.predictor import Predictor

from .triage import triage_file, triage_photo

LEDGER = "results.jsonl"
log = logging.getLogger("fracture_edge.service")


class DiskFull(Exception):
    """No space to store an image or its record: stop taking work until there is."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    """Append-only JSON lines with whole-line writes and fsync; repairs a torn tail on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    def records(self) -> List[Dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # only a torn line can fail, and _repair removes it
        return out

    def append(self, record: Dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # a full disk mid-line: leave no torn line for the next record
                raise
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)


class Spool:
    """The device's own inbox: captures land in inbox/film, files dropped by hand in inbox/files."""

    def __init__(self, data: Path):
        self.film = Path(data) / "inbox" / "film"
        self.files = Path(data) / "inbox" / "files"
        for d in (self.film, self.files):
            d.mkdir(parents=True, exist_ok=True)

    def add_photo(self, photo: Image.Image) -> Path:
        """Atomically: a half-written capture is never visible to the service."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{time.time_ns() % 1_000_000:06d}"
        final = self.film / f"capture-{stamp}.jpg"
        tmp = self.film / f".{final.name}.tmp"
        with open(tmp, "wb") as fh:
            photo.save(fh, format="JPEG", quality=95)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.film)
        return final


def file_id(path: Path) -> str:
    return sha256_file(path)[:32]


def path_id(path: Path, st: os.stat_result) -> str:
    """An id for a file that cannot be read: its name and what stat says (a chmod changes ctime,
    so a file made readable later is tried again)."""
    key = f"{os.fsencode(str(path))!r}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


LOCK = "service.lock"
MAX_DEPTH = 4  # watched folders are scanned this deep (per-date CR export folders)


class ServiceError(RuntimeError):
    """The service cannot start as asked (another instance holds the data folder)."""


def take_lock(data: Path):
    """One service per data folder: a second `serve` (or `serve --once`) refuses to start. The lock
    is an flock, so it is released by the kernel when the holder dies, even by kill -9."""
    import fcntl

    fh = open(Path(data) / LOCK, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise ServiceError(f"another `python -m device serve` (pid {holder}) is using {data}; "
                           "stop it first (systemctl stop fracture-edge) or use another --data folder") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def _recover_update(bundle) -> None:
    """An update killed mid-way through moving an old install into the store leaves `bundle`
    missing beside `bundle.legacy`: put it back before loading (device/update.py)."""
    from edge_runtime.bundle import default_bundle_dir

    from .update import CURRENT, LEGACY, recover

    path = Path(bundle) if bundle is not None else default_bundle_dir()
    if path.name == CURRENT and (path.parent / LEGACY).exists():
        recover(path.parent)


class Service:
    def __init__(self, data: Path, watch: Sequence[Path] = (), bundle=None, backend: str = "auto",
                 threads: Optional[int] = None, settle_s: float = 2.0):
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.data, 0o700)  # patient images: readable by the service user only
        except OSError as exc:
            log.warning("cannot restrict %s to its owner (%s)", self.data, exc.strerror or exc)
        self._lock = take_lock(self.data)
        self.spool = Spool(self.data)
        self.store = self.data / "store"
        self.store.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ledger = Ledger(self.data / LEDGER)
        self._bundle_arg, self._backend, self._threads = bundle, backend, threads
        _recover_update(bundle)
        self.predictor = Predictor(bundle, backend, None, threads)
        self._bundle_real = str(self.predictor.bundle.root)  # resolved when it was loaded
        self.sources: List[Tuple[Path, str]] = [(self.spool.film, "film"), (self.spool.files, "file")]
        self.sources += [(Path(w), "file") for w in watch]
        self.settle_s = settle_s
        records = self.ledger.records()
        self.done: Set[str] = {r["id"] for r in records if "id" in r}
        self._last_by_source: Dict[str, str] = {r["source"]: r["id"] for r in records if "source" in r and "id" in r}
        self._ids: Dict[Tuple[str, int, int], str] = {}
        self._seen: Dict[str, Tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first seen so)
        self.status: Dict[str, str] = {}  # what the page shows until it clears: missing folders, full disk

    # --- what is waiting ---------------------------------------------------------------------

    def _files(self, folder: Path) -> Iterator[Tuple[Path, os.stat_result]]:
        """Regular files under `folder` (MAX_DEPTH deep, dot-names skipped). A symlink is followed
        only if it stays inside the folder: a link to /etc/shadow is refused, with a record."""
        root = folder.resolve()
        stack = [(folder, 0)]
        while stack:
            d, depth = stack.pop()
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                self._note(f"folder:{d}", f"cannot read folder {printable(str(d))}: {exc.strerror or exc}")
                continue
            for e in entries:
                if e.name.startswith("."):
                    continue
                path = Path(e.path)
                try:
                    if e.is_symlink():
                        target = path.resolve()
                        if target != root and root not in target.parents:
                            self._refuse(path, "a link to a file outside the watched folder: refused")
                            continue
                    if e.is_dir():
                        if depth < MAX_DEPTH and not e.is_symlink():
                            stack.append((path, depth + 1))
                        continue
                    st = path.stat()
                except OSError:
                    continue  # vanished while we looked: it is gone, nothing to record
                if stat.S_ISREG(st.st_mode):
                    yield path, st

    def _settled(self, path: Path, st: os.stat_result) -> bool:
        """Complete once its size and mtime have not changed for settle_s of our own clock (a file
        with a future mtime, or copied in chunks, is judged by what we saw, not by its timestamp)."""
        sig = (st.st_size, st.st_mtime_ns)
        seen = self._seen.get(str(path))
        now = time.monotonic()
        if seen is None or seen[:2] != sig:
            self._seen[str(path)] = (*sig, now)
            return self.settle_s <= 0
        return now - seen[2] >= self.settle_s

    def pending(self) -> Iterator[Tuple[Path, str, str]]:
        for folder, mode in self.sources:
            if not folder.is_dir():
                self._note(f"missing:{folder}", f"watched folder {printable(str(folder))} is missing "
                                                 "(an unmounted share?); it is checked again on every scan")
                continue
            self._clear(f"missing:{folder}")
            for p, st in sorted(self._files(folder), key=lambda f: (f[1].st_mtime, str(f[0]))):
                if not self._settled(p, st):
                    continue  # a CR reader may still be writing it
                key = (str(p), st.st_size, st.st_mtime_ns)
                if key not in self._ids:
                    try:
                        self._ids[key] = file_id(p)
                    except FileNotFoundError:
                        continue  # vanished between the scan and now
                    except OSError as exc:
                        self._refuse(p, f"cannot be read: {exc.strerror or type(exc).__name__}", st)
                        continue
                fid = self._ids[key]
                if fid in self.done:
                    if self._last_by_source.get(str(p)) not in (None, fid) or str(p) not in self._last_by_source:
                        log.info("%s: same content as an earlier file (%s): not processed again", printable(str(p)), fid)
                        self._last_by_source[str(p)] = fid
                    continue
                yield p, mode, fid

    # --- records that are not answers -----------------------------------------------------------

    def _note(self, key: str, message: str) -> None:
        if self.status.get(key) != message:
            log.warning("%s", message)
        self.status[key] = message

    def _clear(self, key: str) -> None:
        if self.status.pop(key, None) is not None:
            log.info("resolved: %s", key)

    def _refuse(self, path: Path, reason: str, st: Optional[os.stat_result] = None) -> None:
        """One record for a file we will not read, once (until it changes)."""
        try:
            st = st or path.lstat()
        except OSError:
            return
        rid = path_id(path, st)
        if rid in self.done:
            return
        self.ledger.append({"id": rid, "source": printable(str(path)), "file": printable(str(path)), "mode": "file",
                            "error": reason, "warnings": [], "received_utc": _now()})
        self.done.add(rid)
        log.warning("%s: %s", printable(str(path)), reason)

    # --- one file ---------------------------------------------------------------------------

    def process(self, path: Path, mode: str, fid: str) -> Optional[Dict]:
        """Copy into the store, answer, record. None when nothing could be recorded yet (the file
        vanished, or the disk is full: then it is tried again on a later scan)."""
        dest = self.store / fid
        try:
            if dest.exists():
                shutil.rmtree(dest)  # left by an interrupted run: start this image again
            dest.mkdir(mode=0o700, parents=True)
            original = dest / f"original{path.suffix.lower()}"
            shutil.copyfile(path, original)
            os.chmod(original, 0o600)
        except FileNotFoundError:
            shutil.rmtree(dest, ignore_errors=True)
            log.info("%s: removed before it could be read", printable(str(path)))
            return None
        except OSError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._note("disk", "the disk is full: new images wait until space is freed (nothing is lost)")
                raise DiskFull() from None
            self._refuse(path, f"cannot be copied: {exc.strerror or type(exc).__name__}")
            return None
        heat = dest / "gradcam.jpg"
        try:
            if mode == "film":
                rec = triage_photo(self.predictor, original, dest, heat)
            else:
                rec = triage_file(self.predictor, original, heat)
        except Exception as exc:  # a bug on one image must not crash-loop the service on it
            log.exception("%s: internal error", printable(str(path)))
            rec = {"file": str(original), "mode": mode, "internal_error": True,
                   "error": f"internal error ({type(exc).__name__}); details in the service log", "warnings": []}
        rec.update(id=fid, source=printable(str(path)), original=str(original), received_utc=_now(),
                   demonstration_only=self.predictor.bundle.demonstration_only,
                   bundle_id=self.predictor.bundle.manifest.get("manifest_sha256", "")[:16])
        previous = self._last_by_source.get(str(path))
        if previous and previous != fid:
            rec["supersedes"] = previous  # the same file name, re-exported with new content
        try:
            self.ledger.append(rec)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._note("disk", "the disk is full: new images wait until space is freed (nothing is lost)")
                raise DiskFull() from None
            raise
        self._clear("disk")
        self.done.add(fid)
        self._last_by_source[str(path)] = fid
        log.info("%s: %s", printable(str(path)), rec.get("decision") or ("retake" if rec.get("retake") else rec.get("error")))
        return rec

    def reload_if_switched(self) -> bool:
        """`device update` switches the bundle symlink atomically; pick the new one up between files.
        A bundle that does not load keeps the old one answering (and says so)."""
        real = os.path.realpath(self.predictor.bundle.path)
        if real == self._bundle_real:
            return False
        try:
            self.predictor = Predictor(self._bundle_arg, self._backend, None, self._threads)
        except Exception as exc:  # noqa: BLE001 - keep serving with the bundle that works
            log.warning("the switched bundle %s does not load (%s); still using %s", real, exc, self._bundle_real)
            self._bundle_real = real  # do not retry on every scan; the next switch is tried again
            return False
        self._bundle_real = str(self.predictor.bundle.root)
        log.info("bundle switched: now %s", self._bundle_real)
        return True

    def run_once(self) -> int:
        self.reload_if_switched()
        n = 0
        for path, mode, fid in list(self.pending()):
            if fid in self.done:
                continue  # the same bytes twice in one scan
            try:
                n += self.process(path, mode, fid) is not None
            except DiskFull:
                break  # stop taking work; the next scan tries again
        return n

    def run_forever(self, interval: float = 2.0) -> None:
        while True:
            self.run_once()
            time.sleep(interval)
