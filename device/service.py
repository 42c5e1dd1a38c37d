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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from PIL import Image

from edge_runtime.bundle import load_bundle, sha256_file
from edge_runtime.cli import printable
from edge_runtime.predictor import Predictor

from . import filenames
from .fileops import exclusive_lock, fsync_dir
from .triage import Triaged, triage_file, triage_photo

LEDGER = "results.jsonl"
log = logging.getLogger("fracture_edge.service")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)



@dataclass
class Record(Triaged):
    """What the service keeps for one input, one line of the results log: the answer, and where,
    when and with which bundle it was read. `source` is the watched path (the decoder's size and
    mode are not kept in the log)."""

    id: Optional[str] = None  # sha256-based: the same bytes are read once
    received_utc: Optional[str] = None
    original: Optional[str] = None  # the copy in the store (or in quarantine)
    demonstration_only: Optional[bool] = None
    bundle_id: Optional[str] = None  # the bundle's digest, 16 hex digits
    supersedes: Optional[str] = None  # the id of an earlier result for the same file name
    quarantined: Optional[bool] = None


class DiskFull(Exception):
    """No space to store an image or its record: stop taking work until there is."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Ledger:
    """Append-only JSON lines with whole-line writes and fsync; repairs a torn tail on open.

    Beside the log, an index (sqlite, standard library) maps each line's offset to its id and
    source, so that neither start-up nor the page reads years of results: the page seeks to the
    last lines, the service asks the index whether an id was seen. The index is derived data:
    the log is the truth, the index catches up with it on open (after a kill between the two
    writes) and is rebuilt if it does not match."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.index_path = self.path.with_name(self.path.name + ".index.sqlite")
        self._repair()
        self._catch_up()

    def _repair(self) -> None:
        """Cut a line torn by a power cut; only the tail is read."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            pos = size
            while pos > 0:
                step = min(1 << 16, pos)
                fh.seek(pos - step)
                chunk = fh.read(step)
                k = chunk.rfind(b"\n")
                if k >= 0:
                    pos = pos - step + k + 1
                    break
                pos -= step
            fh.truncate(max(pos, 0))
            fh.flush()
            os.fsync(fh.fileno())

    def _db(self):
        import sqlite3

        db = sqlite3.connect(self.index_path, timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS lines (offset INTEGER PRIMARY KEY, length INTEGER, id TEXT, source TEXT)")
        db.execute("CREATE INDEX IF NOT EXISTS by_id ON lines(id)")
        db.execute("CREATE INDEX IF NOT EXISTS by_source ON lines(source)")
        return db

    def _catch_up(self) -> None:
        """Index the lines written since the index was last updated."""
        db = self._db()
        try:
            row = db.execute("SELECT offset, length FROM lines ORDER BY offset DESC LIMIT 1").fetchone()
            start = row[0] + row[1] if row else 0
            size = self.path.stat().st_size if self.path.exists() else 0
            if start > size or (row and not self._line_at(row[0], row[1])):
                db.execute("DELETE FROM lines")  # the log was replaced or truncated: rebuild
                start = 0
            if start < size:
                with open(self.path, "rb") as fh:
                    fh.seek(start)
                    offset = start
                    for line in fh:
                        self._index(db, offset, line)
                        offset += len(line)
            db.commit()
        finally:
            db.close()
        try:
            os.chmod(self.index_path, 0o600)
        except OSError:
            pass

    def _line_at(self, offset: int, length: int) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                line = fh.read(length)
            return line.endswith(b"\n") and bool(json.loads(line))
        except (OSError, ValueError):
            return False

    @staticmethod
    def _index(db, offset: int, line: bytes) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return
        if isinstance(rec, dict):
            db.execute("INSERT OR REPLACE INTO lines VALUES (?, ?, ?, ?)",
                       (offset, len(line), str(rec.get("id", "")), str(rec.get("source", ""))))

    def records(self) -> List[Dict]:
        """Every record (tests and exports; the service and the page use the index)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # only a torn line can fail, and _repair removes it
        return out

    def _query(self, sql: str, args: tuple) -> list:
        """One query on a connection of its own (the page's threads and the service share the index)."""
        db = self._db()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def latest(self, n: int) -> List[Dict]:
        """The last n records, oldest first, read by seeking: the cost does not grow with the log."""
        rows = self._query("SELECT offset, length FROM lines ORDER BY offset DESC LIMIT ?", (n,))
        out = []
        with open(self.path, "rb") as fh:
            for offset, length in reversed(rows):
                fh.seek(offset)
                try:
                    out.append(json.loads(fh.read(length)))
                except ValueError:
                    continue
        return out

    def has(self, rid: str) -> bool:
        return bool(self._query("SELECT 1 FROM lines WHERE id = ? LIMIT 1", (rid,)))

    def last_id_for(self, source: str) -> Optional[str]:
        rows = self._query("SELECT id FROM lines WHERE source = ? ORDER BY offset DESC LIMIT 1", (source,))
        return rows[0][0] if rows else None

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
            fsync_dir(self.path.parent)
        db = self._db()
        try:  # after the log: a kill in between is caught up on the next open
            self._index(db, size, data)
            db.commit()
        finally:
            db.close()


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
        fsync_dir(self.film)
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
    """One service per data folder: a second `serve` (or `serve --once`) refuses to start."""
    fh = exclusive_lock(Path(data) / LOCK, note_pid=True)
    if fh is None:
        try:
            holder = (Path(data) / LOCK).read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise ServiceError(f"another `python -m device serve` (pid {holder}) is using {data}; "
                           "stop it first (systemctl stop fracture-edge) or use another --data folder")
    return fh


MAX_ATTEMPTS = 3  # a file that kills or hangs the reader this often is quarantined
ATTEMPTS = "attempts.json"


class ReaderCrashed(Exception):
    """The reader process died or hung on a file."""


class ReaderUnavailable(Exception):
    """The reader process cannot start (its bundle does not load): no file is to blame."""


class InProcessReader:
    """Reads in the service's own process (library use and tests)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def triage(self, mode: str, original: Path, dest: Path, heat: Path, source: str = "") -> Triaged:
        if mode == "film":
            return triage_photo(self.predictor, original, dest, heat)
        return triage_file(self.predictor, original, heat)

    def close(self) -> None:
        pass


class WorkerReader:
    """Reads in a separate process (device/worker.py) under a memory limit, with a time limit per
    file: a file that kills or hangs it costs that process, never the service."""

    def __init__(self, bundle_dir: Path, backend: str, threads: Optional[int], memory_mb: int = 512,
                 timeout_s: float = 120.0):
        self.args = [sys.executable, "-m", "device.worker", "--bundle", str(bundle_dir), "--backend", backend,
                     "--memory-mb", str(memory_mb)] + (["--threads", str(threads)] if threads else [])
        self.timeout_s = timeout_s
        self.proc: Optional[subprocess.Popen] = None

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=str(Path(__file__).resolve().parent.parent))
        ready = self._readline(60.0)
        if not ready or not json.loads(ready).get("ready"):
            self.close()
            raise ReaderUnavailable("the image reader did not start (its reason is in the service log)")

    def _readline(self, timeout: float) -> Optional[str]:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
            return self.proc.stdout.readline() or None
        finally:
            sel.close()

    def triage(self, mode: str, original: Path, dest: Path, heat: Path, source: str = "") -> Triaged:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps({"mode": mode, "original": str(original), "dest": str(dest),
                                              "heat": str(heat), "source": source}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            raise ReaderCrashed("the reader process had died") from None
        line = self._readline(self.timeout_s)
        if line is None:
            hung = self.proc.poll() is None
            self.close()
            raise ReaderCrashed("the reader hung on this file" if hung else "the reader process died on this file")
        return Triaged.from_dict(json.loads(line))

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None


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
                 threads: Optional[int] = None, settle_s: float = 2.0, isolate: bool = False,
                 reader_memory_mb: int = 512, file_timeout_s: float = 120.0,
                 keep_days: Optional[float] = None, max_store_gb: Optional[float] = None):
        """`isolate`: read images in a separate process under a memory limit (what `serve` does)."""
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
        self._isolate, self._reader_memory_mb, self._file_timeout_s = isolate, reader_memory_mb, file_timeout_s
        self.keep_days, self.max_store_gb = keep_days, max_store_gb
        self._pruned_at = float("-inf")
        self._load()
        self.sources: List[Tuple[Path, str]] = [(self.spool.film, "film"), (self.spool.files, "file")]
        self.sources += [(Path(w), "file") for w in watch]
        self.settle_s = settle_s
        self._noted: Set[Tuple[str, str]] = set()  # identical copies already mentioned in the log
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
        seen_keys, seen_paths = set(), set()
        yield from self._pending(seen_keys, seen_paths)
        # Forget files that are gone: the caches hold what is in the folders, not their history.
        self._ids = {k: v for k, v in self._ids.items() if k in seen_keys}
        self._seen = {k: v for k, v in self._seen.items() if k in seen_paths}

    def _pending(self, seen_keys: Set, seen_paths: Set) -> Iterator[Tuple[Path, str, str]]:
        for folder, mode in self.sources:
            if not folder.is_dir():
                self._note(f"missing:{folder}", f"watched folder {printable(str(folder))} is missing "
                                                 "(an unmounted share?); it is checked again on every scan")
                continue
            self._clear(f"missing:{folder}")
            for p, st in sorted(self._files(folder), key=lambda f: (f[1].st_mtime, str(f[0]))):
                seen_paths.add(str(p))
                seen_keys.add((str(p), st.st_size, st.st_mtime_ns))
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
                if self.done(fid):
                    src = printable(str(p))
                    if self.ledger.last_id_for(src) != fid and (src, fid) not in self._noted:
                        log.info("%s: same content as an earlier file (%s): not processed again", src, fid)
                        self._noted.add((src, fid))
                    continue
                yield p, mode, fid

    def _attempt(self, fid: str, done: bool = False) -> int:
        """Count a try at `fid` before it is made (persisted, so a crash of the whole device counts
        too); forget it once the file has a record. Returns the number of this try."""
        path = self.data / ATTEMPTS
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            counts = {}
        if done:
            if fid not in counts:
                return 0
            counts.pop(fid)
        else:
            counts[fid] = int(counts.get(fid, 0)) + 1
        tmp = path.with_name(f".{ATTEMPTS}.tmp")
        tmp.write_text(json.dumps(counts))
        os.replace(tmp, path)
        return counts.get(fid, 0)

    def _quarantine(self, dest: Path, mode: str, original: Path, why: str) -> Record:
        """After MAX_ATTEMPTS crashes or hangs: a record, and the copy moved out of the store."""
        qdir = self.data / "quarantine"
        qdir.mkdir(mode=0o700, exist_ok=True)
        target = qdir / dest.name
        shutil.rmtree(target, ignore_errors=True)
        os.replace(dest, target)
        return Record(file=str(original), mode=mode, quarantined=True, original=str(target / original.name),
                      error=f"quarantined: reading this image failed {MAX_ATTEMPTS} times ({why}); "
                            "it was moved to the quarantine folder and will not be tried again")

    def done(self, rid: str) -> bool:
        """Recorded already (the ledger's index answers; nothing grows in memory)."""
        return self.ledger.has(rid)

    # --- records that are not answers -----------------------------------------------------------

    def _disk_full(self) -> "DiskFull":
        self._note("disk", "the disk is full: new images wait until space is freed (nothing is lost)")
        return DiskFull()

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
        if self.done(rid):
            return
        self.ledger.append(Record(file=printable(str(path)), id=rid, source=printable(str(path)), mode="file",
                                  error=reason, received_utc=_now()).to_dict())
        log.warning("%s: %s", printable(str(path)), reason)

    # --- one file ---------------------------------------------------------------------------

    def process(self, path: Path, mode: str, fid: str) -> Optional[Record]:
        """Copy into the store, answer, record. None when nothing could be recorded yet (the file
        vanished, or the disk is full: then it is tried again on a later scan)."""
        dest = self.store / fid
        try:
            if dest.exists():
                shutil.rmtree(dest)  # left by an interrupted run: start this image again
            dest.mkdir(mode=0o700, parents=True)
            original = dest / filenames.original(path.suffix)
            shutil.copyfile(path, original)
            os.chmod(original, 0o600)
        except FileNotFoundError:
            shutil.rmtree(dest, ignore_errors=True)
            log.info("%s: removed before it could be read", printable(str(path)))
            return None
        except OSError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if exc.errno in DISK_FULL:
                raise self._disk_full() from None
            self._refuse(path, f"cannot be copied: {exc.strerror or type(exc).__name__}")
            return None
        heat = dest / filenames.GRADCAM
        attempts = self._attempt(fid)
        try:
            rec = self.reader.triage(mode, original, dest, heat, str(path)).as_(Record)
        except ReaderUnavailable as exc:
            shutil.rmtree(dest, ignore_errors=True)
            self._attempt(fid, done=True)
            self._note("reader", f"{exc}: images wait; nothing is lost")
            raise
        except ReaderCrashed as exc:
            log.error("%s: %s (attempt %d of %d)", printable(str(path)), exc, attempts, MAX_ATTEMPTS)
            if attempts < MAX_ATTEMPTS:
                return None  # tried again on the next scan, with a fresh reader
            rec = self._quarantine(dest, mode, original, str(exc))
        except Exception as exc:  # a bug on one image must not crash-loop the service on it
            log.exception("%s: internal error", printable(str(path)))
            rec = Record(file=str(original), mode=mode, internal_error=True,
                         error=f"internal error ({type(exc).__name__}); details in the service log")
        if rec.heatmap_errno in DISK_FULL:  # the overlay hit a full disk: not final, try again later
            shutil.rmtree(dest, ignore_errors=True)
            self._attempt(fid, done=True)
            raise self._disk_full()
        rec.id, rec.source, rec.received_utc = fid, printable(str(path)), _now()
        rec.original = rec.original or str(original)
        rec.demonstration_only, rec.bundle_id = self.bundle.demonstration_only, self.bundle.digest[:16]
        previous = self.ledger.last_id_for(printable(str(path)))
        if previous and previous != fid:
            rec.supersedes = previous  # the same file name, re-exported with new content
        try:
            self.ledger.append(rec.to_dict())
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise self._disk_full() from None
            raise
        self._clear("disk")
        self._attempt(fid, done=True)
        log.info("%s: %s", printable(str(path)), rec.decision or rec.error)
        return rec

    def _load(self) -> None:
        """The bundle, and a reader on exactly that (resolved) bundle."""
        if self._isolate:
            self.bundle = load_bundle(self._bundle_arg)
            self.predictor = None
            self.reader = WorkerReader(self.bundle.root, self._backend, self._threads, self._reader_memory_mb,
                                       self._file_timeout_s)
        else:
            self.predictor = Predictor(self._bundle_arg, self._backend, None, self._threads)
            self.bundle = self.predictor.bundle
            self.reader = InProcessReader(self.predictor)
        self._bundle_real = str(self.bundle.root)  # resolved when it was loaded

    def close(self) -> None:
        self.reader.close()

    def reload_if_switched(self) -> bool:
        """`device update` switches the bundle symlink atomically; pick the new one up between files.
        A bundle that does not load keeps the old one answering (and says so)."""
        real = os.path.realpath(self.bundle.path)
        if real == self._bundle_real:
            return False
        old = (self.bundle, self.predictor, self.reader)
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - keep serving with the bundle that works
            log.warning("the switched bundle %s does not load (%s); still using %s", real, exc, self._bundle_real)
            self.bundle, self.predictor, self.reader = old
            self._bundle_real = real  # do not retry on every scan; the next switch is tried again
            return False
        old[2].close()
        log.info("bundle switched: now %s", self._bundle_real)
        return True

    def prune_store(self, force: bool = False) -> int:
        """Retention: delete stored images (originals, overlays) older than keep_days, then the
        oldest until the store fits max_store_gb. Result lines are never dropped; a pruned
        record's card simply has no picture. At most once an hour unless forced."""
        if self.keep_days is None and self.max_store_gb is None:
            return 0
        now = time.monotonic()
        if not force and now - self._pruned_at < 3600:
            return 0
        self._pruned_at = now
        folders = []
        for e in os.scandir(self.store):
            if e.is_dir(follow_symlinks=False):
                size = sum(f.stat().st_size for f in os.scandir(e.path) if f.is_file(follow_symlinks=False))
                folders.append((e.stat().st_mtime, size, Path(e.path)))
        folders.sort()
        cutoff = time.time() - self.keep_days * 86400 if self.keep_days is not None else None
        total = sum(f[1] for f in folders)
        limit = self.max_store_gb * 2 ** 30 if self.max_store_gb is not None else None
        removed = 0
        for mtime, size, path in folders:
            old = cutoff is not None and mtime < cutoff
            over = limit is not None and total > limit
            if not (old or over):
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            removed += 1
        if removed:
            log.info("retention: removed %d stored image folder(s); their results stay in the log", removed)
        return removed

    def run_once(self) -> int:
        self.reload_if_switched()
        self.prune_store()
        n = 0
        for path, mode, fid in list(self.pending()):
            if self.done(fid):
                continue  # the same bytes twice in one scan
            try:
                n += self.process(path, mode, fid) is not None
            except (DiskFull, ReaderUnavailable):
                break  # stop taking work; the next scan tries again
            self._clear("reader")
        return n

    def run_forever(self, interval: float = 2.0) -> None:
        while True:
            self.run_once()
            time.sleep(interval)
