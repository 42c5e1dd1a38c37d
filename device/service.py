"""The clinic service: watched folders and camera captures feed one queue; every image is
processed exactly once, also across a restart or a power cut; results go to an append-only log.

Durability, in order: the original is copied into store/<id>/ beside its result; only then is the
result appended to results.jsonl as one whole line in a single write, followed by fsync. A kill
at any point before that write leaves no record, and the image is processed again on restart
(the store folder is simply rewritten); a power cut *during* the write can leave a torn last line,
which the next start cuts off before appending. The id is the sha256 of the file's bytes, so a
file seen again (a rescan, a restart, a second copy) is never logged twice. Nothing is sent
anywhere unless an outbox is given (device/outbox.py: positive DICOM studies, queued before the
record), and records carry no DICOM tag values.

Nothing found on disk is trusted: a watched file is opened once (no link followed on the way, no
blocking, a regular file only), its first bytes must be an image's, it is hashed and copied from
that one descriptor (exactly the size it had when opened), and its id is the hash of the bytes
copied, which are the bytes the model reads; whatever is swapped in between the scan and the copy
is never used. Links out of the folder, loops, FIFOs, files too deep, too large, sparse or not
images get a record with the reason and leave no copy; folders that cannot be read or entered get
a banner; a data folder that cannot be written, or a full disk, pauses the work with a banner; a
data folder that overlaps a watched one (by path, by device and inode, or by its marker file) is
refused at start and skipped if it comes to overlap later; a watched folder that comes to lead
elsewhere than at start is not read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from PIL import Image

from edge_runtime.bundle import load_bundle
from edge_runtime.cli import printable
from edge_runtime.content import HEAD_BYTES, PILLOW_FORMATS, READABLE, describe, sniff
from edge_runtime.dicom import SUFFIXES as DICOM_SUFFIXES
from edge_runtime.imageio import MAX_DECODE_BYTES
from edge_runtime.predictor import Predictor

from . import filenames
from .fileops import (disk_space, exclusive_lock, file_kind, fsync_dir, identity, mb, open_beneath, open_dir,
                      remove_path)
from .ledger import Ledger
from .pause import DataUnavailable, DiskFull, Paused  # noqa: F401 - re-exported
from .readers import InProcessReader, ReaderCrashed, ReaderUnavailable, WorkerReader  # noqa: F401 - re-exported
from .triage import Triaged

LEDGER = "results.jsonl"
log = logging.getLogger("fracture_edge.service")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# An overlay that could not be written for one of these is the data folder's fault, not the image's.
DATA_ERRNOS = DISK_FULL + (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


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
    referral: Optional[str] = None  # "queued" for the PACS (device/outbox.py), or why it could not be


def _private(folder: Path) -> None:
    """Every plain file the reader wrote in `folder` (its overlay, the flattened film) made 0600,
    as the copied original is: Pillow creates files by the process's umask."""
    try:
        names = os.listdir(folder)
    except OSError:
        return  # quarantined or gone: nothing of ours left to tighten
    for name in names:
        try:
            st = os.lstat(folder / name)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
                os.chmod(folder / name, 0o600)
        except OSError:
            continue  # removed under us: nothing to protect


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Spool:
    """The device's own inbox: captures land in inbox/film, files dropped by hand in inbox/files,
    instances received over DICOM in inbox/dicom (device/dicom_receiver.py)."""

    def __init__(self, data: Path, create: bool = True):
        self.film = Path(data) / "inbox" / "film"
        self.files = Path(data) / "inbox" / "files"
        self.dicom = Path(data) / "inbox" / "dicom"
        if create:
            self.create()

    def create(self) -> None:
        for d in (self.film, self.files, self.dicom):
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


class Changed(Exception):
    """The file changed while it was read (its size or bytes are not what was opened)."""


class Unreadable(Exception):
    """The watched file could not be read while it was copied (the reason)."""


@dataclass(frozen=True)
class Opened:
    """A watched file as the service opened it: the name it was found under, and the one
    descriptor every byte is read from (never the name again, which could be swapped)."""

    path: Path
    fd: int
    size: int

    @property
    def name(self) -> str:
        return self.path.name


def _hash_fd(fd: int, size: int) -> str:
    """The id of the first `size` bytes (what fstat said when opened); Changed if the file is
    now shorter or longer: nothing past `size` is read but one byte, to know."""
    h = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(COPY_CHUNK, size - offset), offset)
        if not chunk:
            raise Changed("it shrank while it was read")
        offset += len(chunk)
        h.update(chunk)
    if os.pread(fd, 1, size):
        raise Changed("it grew while it was read")
    return h.hexdigest()[:32]


def file_id(source: Opened) -> str:
    """The record id: sha256 of the bytes, read from the descriptor the file was opened as."""
    return _hash_fd(source.fd, source.size)


def path_id(path: Path, st: os.stat_result) -> str:
    """An id for a file that cannot be read: its name and what stat says (a chmod changes ctime,
    so a file made readable later is tried again)."""
    key = f"{os.fsencode(str(path))!r}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


LOCK = "service.lock"
MAX_DEPTH = 4  # watched folders are read this deep (per-date CR export folders)
DEEP_LIMIT = MAX_DEPTH + 8  # deeper files are named in a record down to here; below, the folder is
MAX_FILE_BYTES = MAX_DECODE_BYTES  # one input file: the runtime's budget for one image (256 MB)
RESERVE_BYTES = 16 * 2 ** 20  # kept free beside a copy: the overlay, the log line, the index
INCOMING = ".incoming"  # DATA/.incoming/: copies being made, moved into the store when whole
# DATA/.fracture-edge-data-<random>, made once: a watched folder holding it is this data folder
# reached another way (the same NFS/SMB export mounted twice), which no path or inode shows.
MARKER_PREFIX = ".fracture-edge-data-"
SPARSE_MIN_BYTES = 2 ** 20  # a file this long or longer, with under 1/SPARSE_RATIO of it stored
SPARSE_RATIO = 8  # on disk, and a hole in it, is sparse: not an image a scanner wrote
COPY_CHUNK = 2 ** 20


def _sig(st: os.stat_result) -> tuple:
    """What tells a file apart from the one seen before: a re-export changes size, mtime or
    inode, and any write or rename changes ctime, which nothing can set back."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _ident_of(path) -> Optional[Tuple[int, int]]:
    """(device, inode) of what `path` leads to now, or None if nothing can be looked at there."""
    try:
        return identity(os.stat(path))
    except OSError:
        return None


def _ancestors(path: str) -> Iterator[str]:
    """A resolved path, its parent, and so on up to /."""
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def content_problem(head: bytes, name: str) -> Optional[str]:
    """Why a file whose first bytes are `head` is not an image the runtime reads (None: it is),
    judged by content as the runtime judges it (edge_runtime/content.py): a JPEG, PNG, TIFF, BMP,
    GIF or WebP, DICOM with its preamble, or content of no known kind under a DICOM name (DICOM
    without a preamble, which the runtime reads by its name)."""
    kind = sniff(head)
    if kind == "DICOM" or kind in PILLOW_FORMATS:
        return None
    if kind is None and os.path.splitext(name)[1].lower() in DICOM_SUFFIXES:
        return None
    if not head:
        return "is empty (0 bytes): nothing to read"
    if kind is None:
        return (f"not an image: its first bytes are none of the formats this device reads ({READABLE}); "
                "refused without copying it")
    return (f"not an image this device reads: the content is {describe(kind)} (whatever its name says), and it "
            f"reads {READABLE}; refused without copying it")


def sparse_problem(fd: int, st: os.stat_result) -> Optional[str]:
    """Why an open file is sparse (None: it is not): long, with little of it stored on disk and a
    hole in it (read as zeros). A compressing file system stores little too, but has no hole,
    so SEEK_HOLE tells the two apart where the file system supports it."""
    stored = getattr(st, "st_blocks", None)
    if stored is None or st.st_size < SPARSE_MIN_BYTES or stored * 512 * SPARSE_RATIO >= st.st_size:
        return None
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) >= st.st_size:
            return None  # no hole: the data is all there, compressed
    except (OSError, AttributeError):
        pass  # no SEEK_HOLE here: what is stored decides
    return (f"is a sparse file: {mb(st.st_size)} long with {mb(stored * 512)} of it stored on disk (the rest holes, "
            "read as zeros), which no scanner writes: refused without copying it")


def _copy_range(src: int, dst: int, size: int) -> str:
    """Exactly `size` bytes from the start of `src` to `dst`, read by offset (never past `size`,
    however much the file grows meanwhile); the id (file_id) of the bytes copied, hashed as they
    pass, so the copy is never read back. Unreadable if `src` cannot be read, Changed if it is
    shorter than `size` now; an OSError writing `dst` is the destination's."""
    h = hashlib.sha256()
    offset = 0
    while offset < size:
        try:
            chunk = os.pread(src, min(COPY_CHUNK, size - offset), offset)
        except OSError as exc:
            raise Unreadable(exc.strerror or type(exc).__name__) from None
        if not chunk:
            raise Changed("it shrank while it was copied")
        h.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        offset += len(chunk)
    return h.hexdigest()[:32]


@dataclass
class Pin:
    """A watched folder as the service first found it: where its path led, and which folder
    (device, inode) was there. A path that comes to lead elsewhere is not read."""

    real: str
    ident: Optional[Tuple[int, int]] = None


@dataclass
class _Walk:
    """One source folder's walk: where it is, what the walk may not enter, what it found."""

    root: str  # resolved
    mode: str
    guard: bool  # a watched folder (not the service's own inbox): never enter the data folder
    data_ids: Set[Tuple[int, int]]  # (device, inode) of the data folder and its own folders
    found: List["Entry"]
    present: Set[str]
    notes: Set[str]


@dataclass
class Entry:
    """One thing a scan found under a watched folder: a file to read (`rel`, below `root`, the
    folder resolved; an inside link's target) or one to refuse (`refuse`, the reason)."""

    path: Path  # as found, under the folder as configured: what records name
    mode: str
    root: str
    at: Tuple[str, ...]  # where it was found, below root
    rel: Tuple[str, ...]  # what to open, below root (an inside link's target)
    st: os.stat_result  # the file to read (a link's target), as the scan saw it
    lst: os.stat_result  # the entry itself, not followed
    sig: tuple
    refuse: Optional[str] = None
    key: str = ""  # str(path): what the scan's caches are keyed by

    def __post_init__(self):
        self.key = self.key or str(self.path)


class ServiceError(RuntimeError):
    """The service cannot start as asked (another instance holds the data folder)."""


def take_lock(data: Path):
    """One service per data folder: a second `serve` (or `serve --once`) refuses to start. On a
    data folder that cannot be written, an existing lock file is locked read-only; OSError if
    there is none yet (the service waits for the folder, and takes the lock then)."""
    fh = exclusive_lock(Path(data) / LOCK, note_pid=True, read_only_ok=True)
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
                 keep_days: Optional[float] = None, max_store_gb: Optional[float] = None, outbox=None):
        """`isolate`: read images in a separate process under a memory limit (what `serve` does).
        Raises ServiceError for a configuration that cannot work (another instance on the data
        folder, a data folder that overlaps a watched one). A data folder that cannot be written
        is not an error: the service shows why and waits for it (`run_once` tries again)."""
        self.data = Path(data)
        self.outbox = outbox  # device/outbox.py: answers referred to a PACS; None: nothing leaves the device
        self.status: Dict[str, str] = {}  # what the page shows until it clears: missing folders, full disk
        self.between: Optional[Callable[[str, Path], None]] = None  # a seam for tests and the fs fuzzer
        self.watch = [Path(w) for w in watch]
        self._marker = find_marker(self.data)
        check_layout(self.data, self.watch, self._marker)
        # Where each watched path leads now, and what is there: a path that comes to lead elsewhere
        # (its last folder swapped for a link) is not read until a restart (docs/robustness.md).
        self._pins: Dict[Path, Pin] = {w: Pin(os.path.realpath(w), _ident_of(w)) for w in self.watch}
        self.spool = Spool(self.data, create=False)
        self.store = self.data / "store"
        self._incoming = self.data / INCOMING
        self.ledger = Ledger(self.data / LEDGER, deferred=True)  # opened under the lock
        self._lock = None
        self._ready = False
        self._prepare(starting=True)
        try:
            check_layout(self.data, self.watch, self._marker)  # with the marker made just now
        except ServiceError:
            if self._lock is not None:
                self._lock.close()
            raise
        self._bundle_arg, self._backend, self._threads = bundle, backend, threads
        _recover_update(bundle)
        self._isolate, self._reader_memory_mb, self._file_timeout_s = isolate, reader_memory_mb, file_timeout_s
        self.keep_days, self.max_store_gb = keep_days, max_store_gb
        self._pruned_at = float("-inf")
        self._load()
        self.sources: List[Tuple[Path, str]] = [(self.spool.film, "film"), (self.spool.files, "file"),
                                                (self.spool.dicom, "file")]
        self.sources += [(w, "file") for w in self.watch]
        self.settle_s = settle_s
        self._noted: Set[Tuple[str, str]] = set()  # identical copies already mentioned in the log
        self._seen: Dict[str, Tuple[tuple, float]] = {}  # path -> (signature, first seen so)
        self._handled: Dict[str, tuple] = {}  # path -> signature it was dealt with at: skipped by name
        self._links: Dict[str, Tuple[tuple, str]] = {}  # link path -> (its signature, where it resolved)
        self._root_ids: Dict[str, Tuple[int, int]] = {}  # each source's resolved path -> (device, inode) at the scan
        self._waiting_space: List[Tuple[Path, int]] = []
        self._received_done: Dict[str, bool] = {}  # inbox/dicom key -> its bytes are safe in the store

    # --- the data folder ----------------------------------------------------------------------

    def _prepare(self, starting: bool = False) -> bool:
        """Make the data folder usable: the lock, the folders, the log. False (with a banner)
        while it cannot be written; tried again on every scan until it can."""
        if self._ready:
            return True
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            if self._lock is None:
                self._lock = take_lock(self.data)
            self.spool.create()
            self.store.mkdir(mode=0o700, exist_ok=True)
            if os.path.islink(self.store) or not self.store.is_dir():
                raise OSError(errno.ENOTDIR, f"{self.store} is not a folder")
            self._clean_incoming()
            probe = self.data / ".write-test"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(probe)
            if self._marker is None:
                self._marker = make_marker(self.data)
            try:
                os.chmod(self.data, 0o700)  # patient images: readable by the service user only
            except OSError as exc:
                log.warning("cannot restrict %s to its owner (%s)", self.data, exc.strerror or exc)
            self.ledger.open()
            if self.outbox is not None:
                self.outbox.recover(recorded=self.ledger.has)  # under the lock: no other service's half-made referral
        except ServiceError as exc:
            if starting:
                raise
            self._note("data", f"{exc}; waiting")
            return False
        except OSError as exc:
            self._note("data", self._unwritable_message(exc))
            return False
        self._clear("data")
        self._ready = True
        return True

    def _unwritable_message(self, exc: OSError) -> str:
        return (f"the data folder {printable(str(self.data))} cannot be used ({exc.strerror or exc}): "
                "images wait and nothing is lost; it is tried again on every scan")

    def _clean_incoming(self) -> None:
        """Copies left by a kill mid-copy are removed; the folder is the service's own."""
        if os.path.islink(self._incoming) or self._incoming.is_file():
            os.unlink(self._incoming)
        shutil.rmtree(self._incoming, ignore_errors=True)
        self._incoming.mkdir(mode=0o700, exist_ok=True)

    @contextmanager
    def _writing(self):
        """Around the service's own reads and writes in its data folder: a full disk or a folder
        that cannot be written pauses the work (a banner; no file is blamed), never a crash."""
        try:
            yield
        except Paused:
            raise
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise self._disk_full() from None
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: OSError) -> DataUnavailable:
        self._ready = False
        self._note("data", self._unwritable_message(exc))
        return DataUnavailable()

    # --- what is waiting ---------------------------------------------------------------------

    def _scan(self) -> Tuple[List[Entry], Set[str]]:
        """Files to read and entries to refuse under the sources, and the path of everything
        present. Folders are read through descriptors opened O_NOFOLLOW from the one above, so a
        folder swapped for a link mid-scan is never entered. A file already dealt with, unchanged,
        costs its lstat and nothing more (no Path, no Entry, no query)."""
        found: List[Entry] = []
        present: Set[str] = set()
        notes: Set[str] = set()
        data_ids = self._data_ids()
        for folder, mode in self.sources:
            guard = folder in self._pins
            opened = self._open_source(folder, guard, data_ids, notes)
            if opened is None:
                continue
            fd, root = opened
            walk = _Walk(root, mode, guard, data_ids, [], present, notes)
            try:
                self._walk(walk, fd, str(folder), (), 0)
            finally:
                os.close(fd)
            found += sorted(walk.found, key=lambda e: (e.st.st_mtime, e.key))
        for key in [k for k in self.status if k.startswith("folder:") and k not in notes]:
            self._clear(key)  # a folder that is readable (or gone, or back where it was) again
        return found, present

    def _data_ids(self) -> Set[Tuple[int, int]]:
        """(device, inode) of the data folder and the folders the service writes in it."""
        ids = set()
        for p in (self.data, self.store, self._incoming, self.data / "quarantine", self.spool.film.parent,
                  self.spool.film, self.spool.files, self.spool.dicom):
            got = _ident_of(p)
            if got is not None:
                ids.add(got)
        return ids

    def _folder_note(self, notes: Set[str], folder, message: str) -> None:
        """A banner about one folder, kept while scans keep noticing it, cleared when one does not."""
        key = f"folder:{folder}"
        notes.add(key)
        self._note(key, message)

    def _open_source(self, folder: Path, guard: bool, data_ids: Set[Tuple[int, int]],
                     notes: Set[str]) -> Optional[Tuple[int, str]]:
        """(descriptor, resolved path) of a source folder to walk, or None with a banner saying why
        not: missing, not a folder, unreadable; and for a watched folder: leading elsewhere than
        at start, no longer the folder it was, or overlapping the data folder."""
        root = os.path.realpath(folder)
        name = printable(str(folder))
        if guard:
            pin = self._pins[folder]
            if root != pin.real:
                self._folder_note(notes, folder, f"watched folder {name} now leads to {printable(root)}, not to "
                                                 f"{printable(pin.real)} as when the service started: not read (a link "
                                                 "put in its place?); restart the service to accept the new place")
                return None
            problem = layout_problem(self.data, folder, self._marker)
            if problem:
                self._folder_note(notes, folder, f"{problem} (checked on every scan: not read)")
                return None
        try:
            fd = open_dir(root)
        except FileNotFoundError:
            self._note(f"missing:{folder}", f"watched folder {name} is missing (an unmounted share?); it is checked "
                                             "again on every scan")
            return None
        except NotADirectoryError:
            self._note(f"missing:{folder}", f"watched folder {name} is not a folder; it is checked again on every scan")
            return None
        except OSError as exc:
            self._note(f"missing:{folder}", f"watched folder {name} cannot be read ({exc.strerror or exc}); it is "
                                             "checked again on every scan")
            return None
        self._clear(f"missing:{folder}")
        now = identity(os.fstat(fd))
        why = self._moved(folder, root, now) if guard else None
        if why is None and guard and now in data_ids:
            why = (f"watched folder {name} is the data folder {printable(str(self.data))} (or one of its folders): "
                   "not read")
        if why is not None:
            os.close(fd)
            self._folder_note(notes, folder, why)
            return None
        self._root_ids[root] = now
        return fd, root

    def _moved(self, folder: Path, root: str, now: Tuple[int, int]) -> Optional[str]:
        """Why a watched folder is no longer the one pinned at start (None: it is). A file system
        mounted there again (a share remounted: a new device number) is the administrator's, and
        is read; another folder put in its place on the same file system is not."""
        pin = self._pins[folder]
        if pin.ident is None or pin.ident == now:
            pin.ident = now  # first seen now (missing at start), or unchanged
            return None
        if os.path.ismount(root):
            log.info("watched folder %s is a file system mounted again: read as before", printable(str(folder)))
            pin.ident = now
            return None
        return (f"watched folder {printable(str(folder))} is no longer the folder it was when the service started "
                "(another folder put in its place, or its share unmounted): not read until that folder is back, "
                "or the service is restarted")

    def _walk(self, w: _Walk, dfd: int, dpath: str, rel: Tuple[str, ...], depth: int) -> None:
        try:
            with os.scandir(dfd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self._folder_note(w.notes, dpath, f"cannot read folder {printable(dpath)}: {exc.strerror or exc}")
            return
        if w.guard:
            marker = next((e.name for e in entries if e.name.startswith(MARKER_PREFIX)), None)
            if marker is not None:
                self._folder_note(w.notes, dpath, f"folder {printable(dpath)} is a fracture-edge data folder (it "
                                                  f"holds {marker}): not read; the service never reads a data folder "
                                                  "as images")
                return
        handled, denied = self._handled, None
        for e in entries:
            if e.name.startswith("."):
                continue
            key = os.path.join(dpath, e.name)
            try:
                lst = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished while we looked: it is gone, nothing to record
            except OSError as exc:
                denied = denied or exc  # listed but not looked at (no x on the folder): the folder's banner
                continue
            if stat.S_ISDIR(lst.st_mode):
                self._enter(w, dfd, e.name, key, rel, depth, lst)
                continue
            w.present.add(key)
            if stat.S_ISLNK(lst.st_mode):
                if self._link_unchanged(key, lst):
                    continue
            elif handled.get(key) == _sig(lst):
                continue  # dealt with, unchanged: the idle scan's common case
            entry = self._classify(Path(key), w.mode, w.root, rel + (e.name,), depth, lst)
            if entry is not None:
                w.found.append(entry)
        if denied is not None:
            self._folder_note(w.notes, dpath, self._unlooked(dpath, denied))

    @staticmethod
    def _unlooked(dpath: str, exc: OSError) -> str:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (f"folder {printable(dpath)} can be listed but not entered ({exc.strerror}): nothing in it is "
                    "read; the service's user needs the x (search) permission on it; checked again on every scan")
        return (f"the entries of folder {printable(dpath)} cannot be looked at ({exc.strerror or exc}): they are "
                "not read; checked again on every scan")

    def _enter(self, w: _Walk, dfd: int, name: str, key: str, rel: Tuple[str, ...], depth: int,
               lst: os.stat_result) -> None:
        """Walk a sub-folder, opened O_NOFOLLOW from its parent; never the data folder."""
        if depth + 1 > DEEP_LIMIT:
            w.present.add(key)
            w.found.append(self._refusal(Path(key), w.mode, w.root, rel + (name,), lst,
                                         f"a folder more than {DEEP_LIMIT} folders deep: nothing in it is read "
                                         f"(this service reads files up to {MAX_DEPTH} folders deep)"))
            return
        try:
            cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
                          | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone or replaced since it was listed: the next scan sees what is there
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: a link now; the next scan judges it
                self._folder_note(w.notes, key, f"cannot read folder {printable(key)}: {exc.strerror or exc}")
            return
        try:
            if w.guard and identity(os.fstat(cfd)) in w.data_ids:
                self._folder_note(w.notes, key, f"folder {printable(key)} is the data folder "
                                                f"{printable(str(self.data))} (or one of its folders), reached "
                                                "through a mount: not read")
                return
            self._walk(w, cfd, key, rel + (name,), depth + 1)
        finally:
            os.close(cfd)

    def _link_unchanged(self, key: str, lst: os.stat_result) -> bool:
        """A link dealt with before, itself and its target unchanged: one lstat of the target it
        resolved to instead of resolving it again (a target whose folders were swapped for links
        since is skipped, never read: reading opens every folder O_NOFOLLOW)."""
        cached = self._links.get(key)
        handled = self._handled.get(key)
        if cached is None or handled is None or cached[0] != _sig(lst):
            return False
        try:
            return handled == cached[0] + _sig(os.lstat(cached[1]))
        except OSError:
            return False

    def _refusal(self, path: Path, mode: str, root: str, rel: Tuple[str, ...], lst: os.stat_result,
                 reason: str, sig: Optional[tuple] = None) -> Entry:
        return Entry(path, mode, root, rel, rel, lst, lst, sig or _sig(lst), refuse=reason)

    def _classify(self, path: Path, mode: str, root: str, rel: Tuple[str, ...], depth: int,
                  lst: os.stat_result) -> Optional[Entry]:
        """What to do with one entry that is not a folder, from what lstat says (nothing opened).
        A link is followed only if it stays inside the folder; a loop, a dangling link, a link
        out, a FIFO, socket or device, a file too deep or too large: a refusal, with the reason."""
        if depth > MAX_DEPTH:
            return self._refusal(path, mode, root, rel, lst,
                                 f"{depth} folders deep: this service reads files up to {MAX_DEPTH} folders deep "
                                 "in a watched folder; move it up to have it read")
        st, target_rel, sig = lst, rel, _sig(lst)
        if stat.S_ISLNK(lst.st_mode):
            got = self._follow(path, mode, root, rel, lst)
            if not isinstance(got, tuple):
                return got  # a refusal, or None: a link to a folder inside, or gone
            target, st = got
            target_rel, sig = tuple(os.path.relpath(target, root).split(os.sep)), sig + _sig(st)
        if not stat.S_ISREG(st.st_mode):
            link = "a link to " if stat.S_ISLNK(lst.st_mode) else ""
            return self._refusal(path, mode, root, rel, lst,
                                 f"{link}{file_kind(st.st_mode)}, not a file: refused without opening it", sig)
        if st.st_size > MAX_FILE_BYTES:
            return self._refusal(path, mode, root, rel, lst,
                                 f"is {mb(st.st_size)}, larger than the {mb(MAX_FILE_BYTES)} this device accepts "
                                 "for one image: refused without copying it", sig)
        return Entry(path, mode, root, rel, target_rel, st, lst, sig)

    def _follow(self, path: Path, mode: str, root: str, rel: Tuple[str, ...], lst: os.stat_result):
        """A link's (target, its lstat) when it leads to a file inside the folder; else a refusal
        (a loop, a link to nothing or out of the folder, a target that cannot be looked at), or
        None (a link to a folder inside, whose files are read where they are; or gone). What it
        resolved to is remembered, so that an idle scan need not resolve it again."""
        try:
            target = os.path.realpath(os.path.join(root, *rel), strict=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._refusal(path, mode, root, rel, lst, "a symbolic link loop: refused")
            if exc.errno == errno.ENOENT:
                return self._refusal(path, mode, root, rel, lst,
                                     "a link to nothing (its target does not exist): refused")
            return self._refusal(path, mode, root, rel, lst,
                                 f"a link whose target cannot be reached ({exc.strerror or exc}): refused")
        except (RuntimeError, ValueError):  # a loop, as older Pythons say it
            return self._refusal(path, mode, root, rel, lst, "a symbolic link loop: refused")
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None  # the target went away while we looked
        except OSError as exc:
            return self._refusal(path, mode, root, rel, lst,
                                 f"a link whose target cannot be looked at ({exc.strerror or exc}): refused")
        key, sig = str(path), _sig(lst) + _sig(st)
        self._links[key] = (_sig(lst), target)
        if not _within(target, root):
            what = "folder" if stat.S_ISDIR(st.st_mode) else "file"
            return self._refusal(path, mode, root, rel, lst, f"a link to a {what} outside the watched folder: refused",
                                 sig)
        if stat.S_ISDIR(st.st_mode):
            self._handled[key] = sig  # nothing to do for it until it or its target changes
            return None
        return target, st

    def _settled(self, key: str, sig: tuple) -> bool:
        """Complete once its size and mtime (its whole signature) have not changed for settle_s of
        our own clock (a file with a future mtime, or copied in chunks, is judged by what we saw,
        not by its timestamp)."""
        seen = self._seen.get(key)
        now = time.monotonic()
        if seen is None or seen[0] != sig:
            self._seen[key] = (sig, now)
            return self.settle_s <= 0
        return now - seen[1] >= self.settle_s

    def pending(self) -> Iterator[Tuple[Path, str, Entry]]:
        """(path, mode, entry) for each settled file not dealt with yet; entries to refuse are
        recorded on the way. An idle scan costs a stat per file and no query: a file dealt with
        is skipped by its name and signature."""
        todo: List[Entry] = []
        found, present = self._scan()
        for e in found:
            if self._handled.get(e.key) == e.sig or not self._settled(e.key, e.sig):
                continue
            todo.append(e)
        # Forget files that are gone: the caches hold what is in the folders, not their history.
        self._seen = {k: v for k, v in self._seen.items() if k in present}
        self._handled = {k: v for k, v in self._handled.items() if k in present}
        self._links = {k: v for k, v in self._links.items() if k in present}
        for e in todo:
            if e.refuse:
                self._refuse(e, e.refuse)
            else:
                yield e.path, e.mode, e

    def _attempt(self, fid: str, done: bool = False) -> int:
        """Count a try at `fid` before it is made (persisted, so a crash of the whole device counts
        too); forget it once the file has a record. Returns the number of this try."""
        path = self.data / ATTEMPTS
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            counts = {}
        if not isinstance(counts, dict):
            counts = {}  # damaged: counting starts again
        if done:
            if fid not in counts:
                return 0
            counts.pop(fid)
        else:
            try:
                counts[fid] = int(counts.get(fid, 0)) + 1
            except (TypeError, ValueError):
                counts[fid] = 1
        tmp = path.with_name(f".{ATTEMPTS}.tmp")
        with self._writing():
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, path)
        return counts.get(fid, 0)

    def _quarantine(self, dest: Path, mode: str, original: Path, why: str) -> Record:
        """After MAX_ATTEMPTS crashes or hangs: a record, and the copy moved out of the store."""
        qdir = self.data / "quarantine"
        target = qdir / dest.name
        with self._writing():
            qdir.mkdir(mode=0o700, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(dest, target)
        return Record(file=str(original), mode=mode, quarantined=True, original=str(target / original.name),
                      error=f"quarantined: reading this image failed {MAX_ATTEMPTS} times ({why}); "
                            "it was moved to the quarantine folder and will not be tried again")

    def done(self, rid: str) -> bool:
        """Recorded already (the ledger's index answers; nothing grows in memory)."""
        with self._writing():
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

    def _refuse(self, entry, reason: str, st: Optional[os.stat_result] = None, now: bool = False) -> None:
        """One record for a file we will not read, once (until it changes). `entry`: an Entry, or
        a path (then `st`, or lstat now, says which version of it). `now`: the version on disk now
        (it changed since the scan, e.g. a chmod), so that the next scan does not record it again."""
        if isinstance(entry, Entry):
            path, st = entry.path, entry.lst
            if now:  # found while processing: record (and skip) what is there now, as a scan sees it
                try:
                    st = os.lstat(os.path.join(entry.root, *entry.at))
                    entry = self._classify(path, entry.mode, entry.root, entry.at, len(entry.at) - 1, st) or entry
                except OSError:
                    pass
        else:
            path = Path(entry)
            try:
                st = st or path.lstat()
            except OSError:
                return
        rid = path_id(path, st)
        if not self.done(rid):
            with self._writing():
                self.ledger.append(Record(file=printable(str(path)), id=rid, source=printable(str(path)),
                                          mode=entry.mode if isinstance(entry, Entry) else "file",
                                          error=reason, received_utc=_now()).to_dict())
            log.warning("%s: %s", printable(str(path)), reason)
        if isinstance(entry, Entry):
            self._handled[entry.key] = entry.sig

    def _changed(self, entry: Entry, why: str) -> None:
        """The file is not what the scan saw (swapped, rewritten, replaced by a link): nothing of
        it is used. What is there now is judged as a fresh scan would judge it: a link out, a
        FIFO, a loop is refused now; anything else is taken again once it has settled."""
        log.info("%s: %s; looked at again on the next scan", printable(str(entry.path)), why)
        self._seen.pop(entry.key, None)
        self._handled.pop(entry.key, None)
        try:
            lst = os.lstat(os.path.join(entry.root, *entry.at))
        except OSError:
            return
        if stat.S_ISDIR(lst.st_mode) or stat.S_ISREG(lst.st_mode):
            return  # a file or folder now: taken (or refused) once it has settled
        now = self._classify(entry.path, entry.mode, entry.root, entry.at, len(entry.at) - 1, lst)
        if now is not None and now.refuse:
            self._refuse(now, now.refuse)

    # --- one file ---------------------------------------------------------------------------

    def _step(self, name: str, path: Path) -> None:
        if self.between is not None:
            self.between(name, path)

    def process(self, path: Path, mode: str, entry: Entry) -> Optional[Record]:
        """Open once, check, hash, copy into the store from that same descriptor, answer, record.
        The id is the hash of the bytes copied (and so read by the model): a file swapped at any
        step can never pair one image's id with another's answer. None when nothing could be
        recorded yet (the file vanished or changed, the disk is full: then it is tried again
        later), or when it was refused (a record says why)."""
        if entry.refuse:
            self._refuse(entry, entry.refuse)
            return None
        self._step("scanned", path)
        fd = self._open_entry(entry)
        if fd is None:
            return None
        try:
            got = self._copy_in(path, entry, fd)
        finally:
            os.close(fd)
        if got is None:
            return None
        fid, original = got
        return self._answer(path, mode, entry, fid, original)

    def _open_entry(self, entry: Entry) -> Optional[int]:
        """The entry's file, opened below its source folder (that very folder, as scanned) with
        no link followed on the way; None if that is not possible (recorded or retaken later)."""
        try:
            rootfd = open_dir(entry.root)
            try:
                scanned = self._root_ids.get(entry.root)
                if scanned is not None and identity(os.fstat(rootfd)) != scanned:
                    self._changed(entry, "its watched folder was replaced before it could be read")
                    return None
                return open_beneath(rootfd, entry.rel)
            finally:
                os.close(rootfd)
        except (FileNotFoundError, NotADirectoryError):
            self._changed(entry, "removed or replaced before it could be read")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._changed(entry, "replaced by a link before it could be read")
            else:
                self._refuse(entry, f"cannot be read: {exc.strerror or type(exc).__name__}", now=True)
        return None

    def _copy_in(self, path: Path, entry: Entry, fd: int) -> Optional[Tuple[str, Path]]:
        """(id, the copy in the store) or None (refused, a duplicate, changed, waiting for space)."""
        st = self._check_opened(entry, fd)
        if st is None or not self._fits(path, entry, st.st_size):
            return None
        self._step("opened", path)
        try:
            fid = file_id(Opened(path, fd, st.st_size))
        except Changed as exc:
            self._changed(entry, str(exc))
            return None
        except OSError as exc:
            self._refuse(entry, f"cannot be read: {exc.strerror or type(exc).__name__}", now=True)
            return None
        if self._known(path, entry, fid) or not self._an_image(entry, fd):
            return None
        self._step("hashed", path)
        return self._store(path, entry, fd, st, fid)

    def _check_opened(self, entry: Entry, fd: int) -> Optional[os.stat_result]:
        """What fstat says of the opened file, if it is the file the scan saw and may be read:
        a regular file, not too large, not sparse. Else None, with a record for a refusal, or
        nothing (it changed: it is looked at again)."""
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._changed(entry, "replaced by a folder before it could be read")  # its files are read where they are
            return None
        if not stat.S_ISREG(st.st_mode):
            self._refuse(entry, f"{file_kind(st.st_mode)}, not a file: refused without reading it", now=True)
            return None
        if not _same_file(st, entry.st):
            self._changed(entry, "changed since it was found")
            return None
        problem = (f"is {mb(st.st_size)}, larger than the {mb(MAX_FILE_BYTES)} this device accepts for one image: "
                   "refused without copying it" if st.st_size > MAX_FILE_BYTES else None) or sparse_problem(fd, st)
        if problem:
            self._refuse(entry, problem)
            return None
        return st

    def _an_image(self, entry: Entry, fd: int) -> bool:
        """Its first bytes, read from the descriptor, are an image the runtime reads; if not, a
        record says what they are instead, and nothing is copied. (After the hash, so that a
        file recorded before, as a result or a refusal, is not looked at again.)"""
        try:
            problem = content_problem(os.pread(fd, HEAD_BYTES, 0), entry.path.name)
        except OSError as exc:
            self._refuse(entry, f"cannot be read: {exc.strerror or type(exc).__name__}", now=True)
            return False
        if problem:
            self._refuse(entry, problem)
        return problem is None

    def _fits(self, path: Path, entry: Entry, size: int) -> bool:
        """Room for a copy of `size` bytes in the data folder: if not now, it waits (the others go
        on); if never (larger than the disk), a refusal."""
        with self._writing():
            free, total = disk_space(self.store)
        if size + RESERVE_BYTES > total:
            self._refuse(entry, f"is {mb(size)}: it can never fit on the data disk ({mb(total)} in all)")
            return False
        if size + RESERVE_BYTES > free:
            self._waiting_space.append((path, size))
            log.info("%s: %s does not fit in the %s free: it waits, the other files go on",
                     printable(str(path)), mb(size), mb(free))
            return False
        return True

    def _known(self, path: Path, entry: Entry, fid: str) -> bool:
        """These bytes were recorded before (under this name or another): nothing more to do."""
        if not self.done(fid):
            return False
        src = printable(str(path))
        with self._writing():
            same_name = self.ledger.last_id_for(src) == fid
        if not same_name and (src, fid) not in self._noted:
            log.info("%s: same content as an earlier file (%s): not processed again", src, fid)
            self._noted.add((src, fid))
        self._handled[entry.key] = entry.sig
        self._mark_safe(entry)  # recorded before: a second copy is not needed
        return True

    def _store(self, path: Path, entry: Entry, fd: int, st: os.stat_result,
               fid: str) -> Optional[Tuple[str, Path]]:
        """Copy the opened file's bytes (as many as it had when opened) into store/<fid>/. None if
        it cannot be read, or changed meanwhile (grew, shrank, other bytes): then nothing is kept
        and it is taken again once it has settled."""
        try:
            original, copied = self._copy(fd, path, st.st_size)
        except Unreadable as exc:
            self._refuse(entry, f"cannot be read: {exc}", now=True)
            return None
        except Changed as exc:
            self._changed(entry, str(exc))
            return None
        try:
            try:
                now = os.fstat(fd)
            except OSError:
                now = None
            if copied != fid or now is None or not _same_file(now, st):
                self._changed(entry, "it changed while it was copied (it grew, or its bytes changed)")
                return None
            self._step("copied", path)
            dest = self.store / fid
            with self._writing():
                remove_path(dest)  # left by an interrupted run: this image starts again
                try:
                    os.rename(original.parent, dest)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.move(str(original.parent), str(dest))  # a store on another file system
        finally:
            shutil.rmtree(original.parent, ignore_errors=True)  # gone already, unless it failed
        return fid, dest / original.name

    def _copy(self, fd: int, path: Path, size: int) -> Tuple[Path, str]:
        """Exactly `size` bytes of the open file (its size when it was opened) into a new folder
        under DATA/.incoming (0700, 0600), read from the descriptor, never the name: a file that
        grows meanwhile cannot make the copy larger than was measured (and free space checked
        for). (the copy, the id of the bytes copied). Unreadable if the source cannot be read,
        Changed if it is shorter now; a full or unwritable data folder pauses."""
        with self._writing():
            tmpdir = Path(tempfile.mkdtemp(dir=self._incoming))
        dst = tmpdir / filenames.original(path.suffix)
        try:
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                          | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                copied = _copy_range(fd, out, size)
            finally:
                os.close(out)
        except (Unreadable, Changed):
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(tmpdir, ignore_errors=True)
            if exc.errno in DISK_FULL:
                raise self._disk_full() from None
            raise self._unavailable(exc) from None
        return dst, copied

    def _answer(self, path: Path, mode: str, entry: Entry, fid: str, original: Path) -> Optional[Record]:
        dest = original.parent
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
        if rec.heatmap_errno in DATA_ERRNOS:  # the overlay could not be written: not final, try again later
            shutil.rmtree(dest, ignore_errors=True)
            self._attempt(fid, done=True)
            if rec.heatmap_errno in DISK_FULL:
                raise self._disk_full()
            raise self._unavailable(OSError(rec.heatmap_errno, os.strerror(rec.heatmap_errno)))
        _private(dest)  # the overlay and the flattened film show the patient's image too
        self._step("answered", path)
        rec.id, rec.source, rec.received_utc = fid, printable(str(path)), _now()
        rec.original = rec.original or str(original)
        drop = self._unreadable_content(rec, mode)
        if drop:
            rec.file, rec.original = printable(str(path)), None
        rec.demonstration_only, rec.bundle_id = self.bundle.demonstration_only, self.bundle.digest[:16]
        if self.outbox is not None and not drop:
            self._refer(rec, fid, original, heat)
        with self._writing():
            previous = self.ledger.last_id_for(printable(str(path)))
            if previous and previous != fid:
                rec.supersedes = previous  # the same file name, re-exported with new content
            self.ledger.append(rec.to_dict())
        if drop:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            self._mark_safe(entry)
        self._clear("disk")
        self._handled[entry.key] = entry.sig
        self._attempt(fid, done=True)
        log.info("%s: %s", printable(str(path)), rec.decision or rec.error)
        return rec

    def _refer(self, rec: Record, fid: str, original: Path, heat: Path) -> None:
        """Queue the answer for the PACS before its record is written (device/outbox.py): a kill
        in between reads the image again and finds the referral already queued."""
        record = rec.to_dict()
        if not self.outbox.wanted(record):
            with self._writing():
                self.outbox.discard(fid)  # queued by an earlier reading (another bundle) that was not recorded
            return
        from .referral import NotReferable, build

        try:
            items = build(original, heat, record)
        except NotReferable as exc:
            rec.referral = f"not referred: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug in one referral must not stop the queue
            log.exception("%s: the referral could not be made", fid)
            rec.referral = f"not referred: internal error ({type(exc).__name__}); details in the service log"
        else:
            with self._writing():
                self.outbox.add(fid, items, record)
            rec.referral = "queued"
            return
        log.info("%s: %s", fid, rec.referral)
        with self._writing():
            self.outbox.note_unreferred(fid, rec.referral)

    @staticmethod
    def _unreadable_content(rec: Record, mode: str) -> bool:
        """The reader could not read a watched file as an image (corrupt, truncated, not what
        its first bytes promised): its record says why, and no copy of it is kept."""
        return (mode == "file" and bool(rec.error) and rec.probability is None and not rec.internal_error
                and not rec.quarantined)

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
        """The reader, the index connection and the data folder's lock go."""
        self.reader.close()
        self.ledger.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

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
        try:
            entries = list(os.scandir(self.store))
        except OSError as exc:
            log.warning("retention: cannot read the store (%s)", exc.strerror or exc)
            return 0
        for e in entries:
            if e.name.startswith("."):
                continue  # store/.incoming: copies being made
            try:
                if e.is_dir(follow_symlinks=False):
                    size = sum(f.stat(follow_symlinks=False).st_size for f in os.scandir(e.path)
                               if f.is_file(follow_symlinks=False))
                    folders.append((e.stat(follow_symlinks=False).st_mtime, size, Path(e.path)))
            except OSError:
                continue  # gone while we looked
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
        """One scan: what is waiting is processed, in order; a full or unwritable data folder, or
        a reader that cannot start, stops the scan (a banner) and the next one tries again."""
        self.reload_if_switched()
        if not self._prepare():
            return 0
        self.prune_store()
        self._waiting_space = []
        n = 0
        try:
            for path, mode, entry in list(self.pending()):
                n += self.process(path, mode, entry) is not None
                self._clear("reader")
        except Paused:
            pass  # stop taking work; the next scan tries again
        self._drop_received()
        if self._waiting_space:
            big = max(self._waiting_space, key=lambda w: w[1])
            self._note("space", f"{len(self._waiting_space)} file(s) wait for space on the data disk (the largest: "
                                f"{printable(str(big[0]))}, {mb(big[1])}); the others go on")
        else:
            self._clear("space")
        return n

    def _mark_safe(self, entry: Entry) -> None:
        if entry.key.startswith(str(self.spool.dicom) + os.sep):
            self._received_done[entry.key] = True

    def _drop_received(self) -> None:
        """Instances received over DICOM leave the inbox once dealt with: deleted when the store
        keeps the copy that was read (or these bytes were recorded before), moved to DATA/unread/
        otherwise (unreadable, refused): a received instance is never lost, and the inbox holds
        only what is still to be read."""
        inbox = str(self.spool.dicom) + os.sep
        unread = self.data / "unread"
        for key, sig in list(self._handled.items()):
            if not key.startswith(inbox):
                continue
            try:
                if _sig(os.lstat(key)) != sig:
                    continue  # replaced since it was dealt with: the next scan takes it
                if self._received_done.pop(key, False):
                    os.unlink(key)
                else:
                    unread.mkdir(mode=0o700, exist_ok=True)
                    os.replace(key, unread / os.path.basename(key))
                    fsync_dir(unread)
                    log.warning("a received instance could not be read or was refused: kept in %s", unread)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot move a received instance out of the inbox (%s)", exc.strerror or exc)
                continue
            self._handled.pop(key, None)

    def run_forever(self, interval: float = 2.0) -> None:
        while True:
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - a bug in one scan must not crash-loop the service
                log.exception("scan failed")
                self._note("scan", f"a scan failed ({type(exc).__name__}); details in the service log; retrying")
            else:
                self._clear("scan")
            time.sleep(interval)


def find_marker(data: Path) -> Optional[str]:
    """The name of the data folder's marker file, if it has one yet (None: none, or unreadable)."""
    try:
        names = sorted(n for n in os.listdir(data) if n.startswith(MARKER_PREFIX))
    except OSError:
        return None
    return names[0] if names else None


def make_marker(data: Path) -> str:
    """A marker file with a random name in the data folder (OSError if it cannot be written)."""
    name = MARKER_PREFIX + secrets.token_hex(8)
    fd = os.open(Path(data) / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, b"This folder is a fracture-edge service's data folder. The service reads no watched folder "
                     b"that holds this file: it would read its own results as new images.\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(Path(data))
    return name


def layout_problem(data: Path, w: Path, marker: Optional[str] = None) -> Optional[str]:
    """Why watching `w` would read the data folder (None: it would not). By resolved path; by
    (device, inode) of the two folders and their parents, which a bind mount shares (and a path
    does not show); and by the data folder's marker file at the top of `w`, which the same NFS or
    SMB export mounted twice shares (and neither path nor inode shows)."""
    d, r = os.path.realpath(data), os.path.realpath(w)
    wp, dp = printable(str(w)), printable(str(data))
    own = "the service would read its own log and store as new images"
    if r == d:
        return f"the watched folder {wp} is the data folder: {own}; use a --data folder outside every --watch folder"
    if _within(d, r):
        return (f"the data folder {dp} is inside the watched folder {wp}: {own}; use a --data folder outside every "
                "--watch folder")
    if _within(r, d):
        return f"the watched folder {wp} is inside the data folder {dp}: {own}; watch a folder outside --data"
    did, rid = _ident_of(d), _ident_of(r)
    if did is not None and rid is not None:
        if any(_ident_of(a) == did for a in _ancestors(r)):
            return (f"the watched folder {wp} is the data folder {dp}, or inside it, reached another way (the same "
                    f"device and inode: a bind mount): {own}; watch a folder outside --data")
        if any(_ident_of(a) == rid for a in _ancestors(d)):
            return (f"the data folder {dp} is inside the watched folder {wp}, reached another way (the same device "
                    f"and inode: a bind mount): {own}; use a --data folder outside every --watch folder")
    if marker and os.path.lexists(os.path.join(r, marker)):
        return (f"the watched folder {wp} holds {marker}, the data folder's own marker file: it is the data folder "
                f"{dp} mounted a second way (the same share mounted twice?): {own}; watch a folder outside --data")
    return None


def check_layout(data: Path, watch: Sequence[Path], marker: Optional[str] = None) -> None:
    """Refuse a data folder that is, contains or sits inside a watched folder, by path, by device
    and inode, or by its marker file: the service would read its own lock, log, index, store and
    overlays as new images, without end."""
    for w in watch:
        problem = layout_problem(data, w, marker)
        if problem:
            raise ServiceError(problem)
