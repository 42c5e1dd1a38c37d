"""Install a new model bundle beside the current one, verify it, and switch only if it passes.

Model updates reach clinics on USB sticks, so the bundle may be damaged, from someone else, or
answer differently on this device's interpreter. Layout under ROOT (the install prefix):

    ROOT/bundles/<id>/          each installed bundle, id = its manifest digest (first 16 hex)
    ROOT/bundle -> bundles/<id>            what the runtime and the service load ($FRACTURE_EDGE_BUNDLE)
    ROOT/bundle.previous -> bundles/<id>   what `--rollback` returns to

Steps: copy (or safely unzip) into ROOT/bundles/.incoming-* only the files the bundle's manifest
lists, each a plain file (by lstat: no link, device, FIFO or hard link is followed or opened),
under a size cap; then verify (checksums, manifest digest and
schema, signature where a trusted key is configured, and the self-test: this device must reproduce
the answers export recorded), move into place, then switch with one atomic rename of a symlink. A
kill -9 at any moment leaves ROOT/bundle pointing at a complete, verified bundle: before the
rename, the old one; after it, the new one (tests/test_device_update.py kills it at every step).
The service notices the switch between files and reloads, so queued work is answered, not lost.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Union

from edge_runtime.bundle import MANIFEST, MAX_MANIFEST_BYTES, BundleError, load_bundle, not_a_bundle
from edge_runtime.signature import SIGNATURE

from .fileops import exclusive_lock, file_kind, fsync_dir, mb, remove_path

CURRENT, PREVIOUS, STORE = "bundle", "bundle.previous", "bundles"
LEGACY = "bundle.legacy"  # a pre-update install's plain folder, while it becomes a symlink
CRASH_ENV = "FRACTURE_EDGE_UPDATE_CRASH_AT"  # tests only: SIGKILL ourselves at a named step


class UpdateError(ValueError):
    pass


def _lock(root: Path):
    """One update at a time: a second waits for nothing and says so."""
    fh = exclusive_lock(root / ".update.lock")
    if fh is None:
        raise UpdateError(f"{root}: another update is running; try again when it has finished")
    return fh


def _step(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _point(root: Path, name: str, target: str) -> None:
    """Make ROOT/name a symlink to target, atomically (a new link renamed over the old one)."""
    tmp = root / f".{name}.new"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / name)
    fsync_dir(root)


def _target(root: Path, name: str) -> Optional[str]:
    link = root / name
    return os.readlink(link) if link.is_symlink() else None


def recover(root: Path) -> None:
    """Finish or undo what a killed run left: a legacy folder mid-migration, staging leftovers."""
    root = Path(root)
    legacy, current = root / LEGACY, root / CURRENT
    if legacy.is_dir() and not (current.exists() or current.is_symlink()):
        os.replace(legacy, current)  # killed between the two renames of the migration
    elif legacy.is_dir():
        shutil.rmtree(legacy)
    store = root / STORE
    if store.is_dir():  # only one update runs at a time (the lock), so any staging left is a dead run's
        for leftover in [*store.glob(".incoming-*"), *store.glob(".trash-*")]:
            remove_path(leftover, ignore_errors=True)
    for tmp in (root / f".{CURRENT}.new", root / f".{PREVIOUS}.new"):
        if tmp.is_symlink():
            tmp.unlink()


# What a bundle may hold, checked before anything is copied. A bundle is a handful of files (the
# reference bundle: 5, under 1 MB); the largest model export makes (ResNet50, float) is ~100 MB.
MAX_BUNDLE_BYTES = 512 * 2 ** 20  # everything copied or unpacked, together
MAX_MEMBERS = 64  # files listed in the manifest, and entries in a zip
MAX_ZIP_CD_BYTES = 2 ** 20  # a zip's central directory: 64 entries need a few KB
MAX_RATIO = 100  # unpacked / packed, per zip member over RATIO_FLOOR (model weights pack ~1.1:1, JSON ~10:1)
RATIO_FLOOR = 2 ** 20
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as edge_runtime/manifest.py's file names
_METHODS = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstandard", 99: "AES encryption"}


def _listed(raw: bytes, where: str) -> List[str]:
    """The names a bundle's manifest lists, read before any other file is looked at: only these
    are copied (with manifest.json and signature.json). The full schema is checked later, by
    load_bundle on the copy."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5,000-digit number, deep nesting
        raise UpdateError(f"{where}: not a readable manifest ({type(exc).__name__})") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not files:
        raise UpdateError(f"{where}: the manifest lists no files: not a bundle's manifest")
    if len(files) > MAX_MEMBERS:
        raise UpdateError(f"{where}: the manifest lists {len(files)} files, more than the {MAX_MEMBERS} a bundle may hold")
    for name in files:
        if not _PLAIN_NAME.match(name) or name in (MANIFEST, SIGNATURE):
            raise UpdateError(f"{where}: the manifest lists {name!r:.80}, not a plain file name of a bundle")
    return [MANIFEST, *files]


class _Budget:
    """Bytes left to copy, over the whole bundle: a file that grows while it is read, or a zip
    member that inflates past what it declared, stops at the cap."""

    def __init__(self):
        self.left = MAX_BUNDLE_BYTES

    def take(self, n: int, where: str) -> None:
        self.check(n, where)
        self.left -= n

    def check(self, n: int, where: str) -> None:
        if n > self.left:
            raise UpdateError(f"{where}: {mb(n)} more would make the bundle larger than {mb(MAX_BUNDLE_BYTES)}, "
                              "more than a bundle can be")


def _copy_stream(fin, dest: Path, budget: _Budget, where: str, limit: Optional[int] = None) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fout:
        done = 0
        while True:
            chunk = fin.read(2 ** 20)
            if not chunk:
                break
            done += len(chunk)
            if limit is not None and done > limit:
                raise UpdateError(f"{where}: grew while it was copied")
            budget.take(len(chunk), where)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def _open_regular(dirfd: int, name: str, where: str, missing: Optional[str] = "missing (the manifest lists it)"):
    """`name` in the folder open as dirfd, as a file object, if it is a regular file with one link.
    lstat first (a device is never opened, a symlink never followed), then O_NOFOLLOW and a check
    that the same file was opened. When absent: UpdateError saying `missing`, or None if that is None."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        if missing:
            raise UpdateError(f"{where}: {missing}") from None
        return None
    if not stat.S_ISREG(st.st_mode):
        raise UpdateError(f"{where}: {file_kind(st.st_mode)}, not a regular file; a bundle holds only plain files")
    if st.st_nlink > 1:
        raise UpdateError(f"{where}: a hard link ({st.st_nlink} names for one file); copy the bundle afresh")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise UpdateError(f"{where}: changed while it was read")
    return os.fdopen(fd, "rb")


def _copy_folder(src: Path, dest: Path, names: Optional[List[str]] = None) -> None:
    """Copy the manifest's files (`names`: these instead, for an install of our own) from the
    folder src. Nothing else is looked at: links, FIFOs, devices, sub-folders and anything the
    manifest does not list stay where they are."""
    budget = _Budget()
    dirfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        raw = None
        if names is None:
            with _open_regular(dirfd, MANIFEST, f"{src / MANIFEST}", not_a_bundle(src)) as fh:
                raw = fh.read(MAX_MANIFEST_BYTES + 1)
            if len(raw) > MAX_MANIFEST_BYTES:
                raise UpdateError(f"{src / MANIFEST}: larger than {mb(MAX_MANIFEST_BYTES)}, not a bundle's manifest")
            names = [*_listed(raw, str(src / MANIFEST))[1:], SIGNATURE]
        dest.mkdir(mode=0o755)
        if raw is not None:  # the very bytes the file list came from
            _copy_stream(io.BytesIO(raw), dest / MANIFEST, budget, str(src / MANIFEST))
        for name in names:
            fh = _open_regular(dirfd, name, str(src / name), None if name == SIGNATURE else "missing (the manifest lists it)")
            if fh is None:
                continue
            with fh:
                size = os.fstat(fh.fileno()).st_size
                budget.check(size, str(src / name))
                _copy_stream(fh, dest / name, budget, str(src / name), limit=size)
    finally:
        os.close(dirfd)


def _end_record(src: Path, fh, size: int):
    """(the central directory's size in bytes, the entries it declares, where it ends), read
    exactly where CPython's zipfile reads them (zipfile._EndRecData): the end record in the last
    22 bytes if it has no
    comment, else the last signature in the final 64 KB; then a zip64 end record, if a locator
    sits just before the end record, read from just before that locator, whatever offset the
    locator gives. A locator whose offset points elsewhere (a decoy end record declaring 1 entry
    while the real one declares a million) is refused: the two would disagree about the zip."""
    fh.seek(max(0, size - 22))
    last = fh.read(22)
    if len(last) == 22 and last[:4] == b"PK\x05\x06" and last[-2:] == b"\0\0":
        at = size - 22
    else:
        start = max(0, size - 65536 - 22)
        fh.seek(start)
        tail = fh.read()
        found = tail.rfind(b"PK\x05\x06")
        if found < 0 or len(tail) - found < 22:
            raise UpdateError(f"{src}: not a readable zip (no end of central directory)")
        at = start + found
        fh.seek(at)
        last = fh.read(22)
    entries, cd_size = struct.unpack("<HL", last[10:16])
    if at < 20:
        return cd_size, entries, at
    fh.seek(at - 20)
    locator = fh.read(20)
    if locator[:4] != b"PK\x06\x07":
        return cd_size, entries, at
    (pointed,) = struct.unpack("<Q", locator[8:16])
    read_at = at - 20 - 56
    if read_at < 0:
        return cd_size, entries, at
    fh.seek(read_at)
    record = fh.read(56)
    if record[:4] != b"PK\x06\x06":
        return cd_size, entries, at
    if pointed != read_at:
        raise UpdateError(f"{src}: not a readable zip (its zip64 locator points at byte {pointed}, not at the zip64 "
                          f"end record before it at byte {read_at}): a zip made to read differently by different tools")
    entries, cd_size = struct.unpack("<QQ", record[32:48])
    return cd_size, entries, read_at


def _zip_entries(src: Path, fh) -> int:
    """The entries of a zip's central directory, counted before zipfile builds an object per entry
    (a 512 MB zip can declare millions). They are counted, not taken from a count field: the
    central directory is the `size` bytes before the end record, as zipfile finds it, read whole
    only if it is at most MAX_ZIP_CD_BYTES, and walked header by header as zipfile will."""
    size = fh.seek(0, os.SEEK_END)
    cd_size, declared, end_at = _end_record(src, fh, size)
    too_many = (f"{src}: its central directory lists more than {MAX_MEMBERS} entries (it declares {declared}), "
                "more than a bundle's zip may hold; refused before reading them")
    if declared > MAX_MEMBERS:
        raise UpdateError(too_many)
    if cd_size > MAX_ZIP_CD_BYTES:
        raise UpdateError(f"{src}: its central directory is {cd_size} bytes, more than the {mb(MAX_ZIP_CD_BYTES)} "
                          f"the {MAX_MEMBERS} entries a bundle's zip may hold need; refused before reading it")
    fh.seek(max(0, end_at - cd_size))  # zipfile: the central directory ends where its end record begins
    directory = fh.read(cd_size)
    count = pos = 0
    while pos + 46 <= len(directory) and directory[pos:pos + 4] == b"PK\x01\x02":
        name, extra, comment = struct.unpack_from("<HHH", directory, pos + 28)
        pos += 46 + name + extra + comment
        count += 1
        if count > MAX_MEMBERS:
            raise UpdateError(too_many)
    return count


def _member_problem(m: zipfile.ZipInfo) -> Optional[str]:
    """Why this member, unpacked or not, shows the zip is not one a bundle export makes."""
    if m.flag_bits & 0x1:
        return "is encrypted; a bundle zip must not have a password"
    if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        method = _METHODS.get(m.compress_type, f"method {m.compress_type}")
        return (f"is packed with {method}, which this updater does not unpack; zip the bundle with plain deflate "
                "(zip, or Python's zipfile)")
    if m.file_size > RATIO_FLOOR and m.file_size > MAX_RATIO * max(1, m.compress_size):
        return f"inflates {m.file_size / max(1, m.compress_size):.0f}-fold, more than {MAX_RATIO}-fold: a zip bomb"
    p = m.filename.replace("\\", "/")
    if p.startswith("/") or ".." in p.split("/") or ":" in p.split("/")[0]:
        return "is a path outside the bundle: unexpected entry"
    return None


def _zip_layout(src: Path, members: List[zipfile.ZipInfo]):
    """(the folder the bundle is in, "" for the top; its files by name)."""
    tops = [m for m in members if m.filename == MANIFEST]
    nested = [m for m in members if m.filename.count("/") == 1 and m.filename.endswith("/" + MANIFEST)]
    if len(tops) + len(nested) != 1:
        raise UpdateError(f"{src}: unexpected entry layout: {len(tops) + len(nested)} manifest.json found "
                          "(a bundle zip holds one flat folder, at the top or in one folder)")
    prefix = (tops or nested)[0].filename[:-len(MANIFEST)]
    by_name: Dict[str, zipfile.ZipInfo] = {}
    for m in members:
        name = m.filename[len(prefix):]
        if m.filename.startswith(prefix) and name and "/" not in name:
            if name in by_name:
                raise UpdateError(f"{src}: {m.filename!r:.80} appears twice")
            by_name[name] = m
    return prefix, by_name


def _unzip(src: Path, dest: Path) -> None:
    """The manifest's files, from the top of the zip or from one folder in it, as plain files of
    bounded size; nothing else is unpacked. Every member's metadata is checked first (count,
    encryption, method, ratio, path, total size): a zip that carries a bomb or a member no tool
    of ours writes is refused whole, naming the member."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO swapped in after the stat would block
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UpdateError(f"{src}: neither a bundle folder nor a .zip of one")
        with os.fdopen(fd, "rb") as raw_fh:
            _zip_entries(src, raw_fh)
            raw_fh.seek(0)
            with zipfile.ZipFile(raw_fh) as zf:
                members = zf.infolist()
                if len(members) > MAX_MEMBERS:  # counted by _zip_entries already: a second line of defence
                    raise UpdateError(f"{src}: holds {len(members)} entries, more than the {MAX_MEMBERS} a bundle's "
                                      "zip may")
                declared = _Budget()
                for m in members:
                    why = _member_problem(m)
                    if why:
                        raise UpdateError(f"{src}: {m.filename!r:.80} {why}")
                    declared.take(m.file_size, f"{src}: {m.filename!r:.80}")
                prefix, by_name = _zip_layout(src, members)
                m = by_name[MANIFEST]
                if m.file_size > MAX_MANIFEST_BYTES:
                    raise UpdateError(f"{src}: {m.filename!r:.80} is larger than {mb(MAX_MANIFEST_BYTES)}, "
                                      "not a bundle's manifest")
                with zf.open(m) as fin:
                    names = _listed(fin.read(MAX_MANIFEST_BYTES + 1), f"{src}: {m.filename!r:.80}")
                missing = [n for n in names if n not in by_name]
                if missing:
                    raise UpdateError(f"{src}: {prefix + missing[0]!r:.80} is missing (the manifest lists it)")
                names += [SIGNATURE] if SIGNATURE in by_name else []
                for name in names:
                    m, mode = by_name[name], by_name[name].external_attr >> 16
                    odd = stat.S_IFMT(mode) not in (0, stat.S_IFREG)  # 0: a zip without Unix modes
                    if m.is_dir() or odd:
                        raise UpdateError(f"{src}: {m.filename!r:.80}: {file_kind(mode) if odd else 'a folder'}, "
                                          "not a regular file; a bundle holds only plain files")
                dest.mkdir(mode=0o755)
                copied = _Budget()
                for name in names:
                    with zf.open(by_name[name]) as fin:  # stops at the declared size; the CRC is checked
                        _copy_stream(fin, dest / name, copied, f"{src}: {by_name[name].filename!r:.80}",
                                     limit=by_name[name].file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error,
            struct.error, ValueError) as exc:  # UpdateError is a ValueError: re-raised as it is
        if isinstance(exc, UpdateError):
            raise
        raise UpdateError(f"{src}: not a readable zip ({type(exc).__name__}: {str(exc)[:120]})") from None


def _stage(src: Path, store: Path, names: Optional[List[str]] = None) -> Path:
    """Copy src into a fresh staging folder, or raise UpdateError with nothing left behind."""
    staging = store / f".incoming-{os.getpid()}"
    remove_path(staging, ignore_errors=True)
    try:
        if src.is_dir():
            _copy_folder(src, staging, names)
        elif src.is_file() and zipfile.is_zipfile(src):
            _unzip(src, staging)
        else:
            raise UpdateError(f"{src}: neither a bundle folder nor a .zip of one")
        fsync_dir(staging)
    except BaseException as exc:
        remove_path(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            where = exc.filename or src
            raise UpdateError(f"{where}: cannot be copied ({exc.strerror or exc})") from None
        raise
    return staging


def verify(path: Path, self_test: bool = True, backend: str = "auto") -> Dict:
    """Load (checksums, digest, schema, signature) and self-test; UpdateError says what failed."""
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise UpdateError(f"the new bundle does not verify: {exc}") from None
    result = {"id": bundle.digest[:16], "model": bundle.model_name,
              "signed_by": bundle.signed_by, "self_test": None}
    if self_test:
        from edge_runtime import selftest
        st = selftest.run(bundle, backend)
        result["self_test"] = st
        if st["passed"] is not True:
            why = st.get("reason") or (f"answers differ from export's by {st['max_abs_diff']:.2g} "
                                       f"(tolerance {st['tolerance']:.2g}) on {st['artifact']} via {st['backend']}")
            raise UpdateError(f"the new bundle failed its self-test on this device: {why}")
    return result


def _migrate_legacy(root: Path) -> None:
    """An install from before updates has ROOT/bundle as a plain folder: move it into the store."""
    current = root / CURRENT
    if current.is_symlink() or not current.is_dir():
        return
    try:  # it is what is installed: moved as it is, whatever its state; only its id is needed
        ident = json.loads((current / "manifest.json").read_text())["manifest_sha256"][:16]
        if not (isinstance(ident, str) and ident.isalnum()):
            raise ValueError(ident)
    except (OSError, ValueError, KeyError, TypeError):
        ident = f"legacy-{int(time.time())}"
    store = root / STORE
    dest = store / ident
    if not dest.exists():  # our own install: its plain files, whatever its manifest says
        names = [e.name for e in os.scandir(current) if e.is_file(follow_symlinks=False)
                 and e.stat(follow_symlinks=False).st_nlink == 1]
        staging = _stage(current, store, names)
        os.replace(staging, dest)
    os.replace(current, root / LEGACY)  # recover() (also run by the service) undoes this if we die here
    _point(root, CURRENT, f"{STORE}/{ident}")
    shutil.rmtree(root / LEGACY)


def install(src: Union[str, Path], root: Union[str, Path], self_test: bool = True, backend: str = "auto",
            keep: int = 3, allow_older: bool = False) -> Dict:
    """Verify `src` and make it the current bundle; the one it replaces becomes the previous.
    A copy of the same bundle already in the store is used only if it still verifies; a damaged
    one is replaced by the fresh, verified copy."""
    src, root = Path(src), Path(root)
    try:
        st = src.stat()
    except FileNotFoundError:
        raise UpdateError(f"{src}: not found") from None
    except OSError as exc:  # a link loop, a permission problem, an unreadable stick
        raise UpdateError(f"{src}: cannot be read ({exc.strerror or exc})") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise UpdateError(f"{src}: neither a bundle folder nor a .zip of one")  # a FIFO would block
    root.mkdir(parents=True, exist_ok=True)
    rs, rr = src.resolve(), root.resolve()
    if rs == rr or rr in rs.parents or rs in rr.parents:
        raise UpdateError(f"{src}: the bundle to install must not be inside {root}, nor contain it")
    lock = _lock(root)
    try:
        return _install(src, root, self_test, backend, keep, allow_older)
    finally:
        lock.close()


def _created(path: Path) -> str:
    try:
        return str(json.loads((path / "manifest.json").read_text()).get("created_utc", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _install(src: Path, root: Path, self_test: bool, backend: str, keep: int, allow_older: bool) -> Dict:
    store = root / STORE
    store.mkdir(exist_ok=True)
    recover(root)
    _migrate_legacy(root)
    staging = _stage(src, store)
    try:  # whatever happens, the staging copy does not outlive this run (a kill -9: recover() removes it)
        return _switch(src, staging, root, self_test, backend, keep, allow_older)
    finally:
        remove_path(staging, ignore_errors=True)


def _switch(src: Path, staging: Path, root: Path, self_test: bool, backend: str, keep: int,
            allow_older: bool) -> Dict:
    store = root / STORE
    _step("staged")
    try:
        info = verify(staging, self_test, backend)
    except UpdateError as exc:  # name the file as the user knows it, not the staging copy about to go
        raise UpdateError(str(exc).replace(str(staging), str(src))) from None
    _step("verified")
    current = root / CURRENT
    if not allow_older and current.is_dir() and _created(staging) and _created(staging) < _created(current):
        raise UpdateError(f"the new bundle was exported {_created(staging)}, before the current one "
                          f"({_created(current)}): an old bundle, even a validly signed one, is not installed "
                          "over a newer one; use --rollback, or --allow-older if this is intended")
    dest = store / info["id"]
    if not (dest.exists() and _intact(dest)):  # else this very bundle is installed already, and intact
        if dest.exists():  # damaged since (a bad SD card, a hand edit, a killed prune): replace it
            _discard(dest)
        os.replace(staging, dest)
        fsync_dir(store)
    _step("moved")
    new = f"{STORE}/{info['id']}"
    old = _target(root, CURRENT)
    if old == new:
        return {**info, "switched": False, "current": str(root / new), "previous": _target(root, PREVIOUS)}
    if old is not None:
        _point(root, PREVIOUS, old)
    _step("previous")
    _point(root, CURRENT, new)
    _step("switched")
    _prune(root, keep)
    return {**info, "switched": True, "current": str(root / new), "previous": old}


def _intact(path: Path) -> bool:
    try:
        load_bundle(path)
        return True
    except BundleError:
        return False


def _discard(path: Path) -> None:
    """Out of the store's namespace in one rename, then deleted: a kill mid-delete leaves a
    .trash-* folder that recover() removes, never a half-deleted bundle under a live name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rollback(root: Union[str, Path]) -> Dict:
    root = Path(root)
    lock = _lock(root)
    try:
        return _rollback(root)
    finally:
        lock.close()


def _rollback(root: Path) -> Dict:
    recover(root)
    old, prev = _target(root, CURRENT), _target(root, PREVIOUS)
    if prev is None or not (root / prev).is_dir():
        raise UpdateError(f"{root}: no previous bundle to go back to")
    try:
        load_bundle(root / prev)
    except BundleError as exc:
        raise UpdateError(f"the previous bundle no longer verifies: {exc}") from None
    _point(root, CURRENT, prev)
    if old is not None:
        _point(root, PREVIOUS, old)
    return {"current": str(root / prev), "previous": old, "switched": True}


def _prune(root: Path, keep: int) -> None:
    """Keep the current, the previous and the newest others up to `keep` in all."""
    store = root / STORE
    live = {Path(t).name for t in (_target(root, CURRENT), _target(root, PREVIOUS)) if t}
    others = sorted((d for d in store.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in live),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for d in others[max(0, keep - len(live)):]:
        _discard(d)
