"""Install a new model bundle beside the current one, verify it, and switch only if it passes.

Model updates reach clinics on USB sticks, so the bundle may be damaged, from someone else, or
answer differently on this device's interpreter. Layout under ROOT (the install prefix):

    ROOT/bundles/<id>/          each installed bundle, id = its manifest digest (first 16 hex)
    ROOT/bundle -> bundles/<id>            what the runtime and the service load ($FRACTURE_EDGE_BUNDLE)
    ROOT/bundle.previous -> bundles/<id>   what `--rollback` returns to

Steps: copy (or safely unzip) into ROOT/bundles/.incoming-*, verify (checksums, manifest digest and
schema, signature where a trusted key is configured, and the self-test: this device must reproduce
the answers export recorded), move into place, then switch with one atomic rename of a symlink. A
kill -9 at any moment leaves ROOT/bundle pointing at a complete, verified bundle: before the
rename, the old one; after it, the new one (tests/test_device_update.py kills it at every step).
The service notices the switch between files and reloads, so queued work is answered, not lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
import zipfile
from pathlib import Path
from typing import Dict, Optional, Union

from edge_runtime.bundle import BundleError, load_bundle

from .fileops import exclusive_lock, fsync_dir

CURRENT, PREVIOUS, STORE = "bundle", "bundle.previous", "bundles"
LEGACY = "bundle.legacy"  # a pre-update install's plain folder, while it becomes a symlink
MAX_ZIP_BYTES = 512 * 2 ** 20
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
            shutil.rmtree(leftover, ignore_errors=True)
    for tmp in (root / f".{CURRENT}.new", root / f".{PREVIOUS}.new"):
        if tmp.is_symlink():
            tmp.unlink()


def _unzip(src: Path, dest: Path) -> None:
    """Only plain files, at the top or under one folder, of bounded total size: a zip cannot write
    outside dest or fill the disk."""
    try:
        with zipfile.ZipFile(src) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise UpdateError(f"{src}: unpacks to more than {MAX_ZIP_BYTES // 2 ** 20} MB")
            names = [Path(m.filename) for m in members]
            prefixes = {n.parts[0] for n in names if len(n.parts) == 2}
            strip = len(prefixes) == 1 and all(len(n.parts) == 2 for n in names)
            dest.mkdir(parents=True)
            for m, n in zip(members, names):
                parts = n.parts[1:] if strip else n.parts
                if len(parts) != 1 or parts[0] in ("", ".", "..") or n.is_absolute():
                    raise UpdateError(f"{src}: unexpected entry {m.filename!r} (a bundle is one flat folder)")
                with zf.open(m) as fin, open(dest / parts[0], "wb") as fout:
                    shutil.copyfileobj(fin, fout)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UpdateError(f"{src}: not a readable zip ({exc})") from None


def _stage(src: Path, store: Path) -> Path:
    staging = store / f".incoming-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    if src.is_dir():
        shutil.copytree(src, staging, symlinks=False)
    elif zipfile.is_zipfile(src):
        _unzip(src, staging)
    else:
        raise UpdateError(f"{src}: neither a bundle folder nor a .zip of one")
    for f in staging.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(staging)
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
    if not dest.exists():
        staging = _stage(current, store)
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
    except OSError:
        raise UpdateError(f"{src}: not found") from None
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
    _step("staged")
    try:
        info = verify(staging, self_test, backend)
    except UpdateError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _step("verified")
    current = root / CURRENT
    if not allow_older and current.is_dir() and _created(staging) and _created(staging) < _created(current):
        shutil.rmtree(staging, ignore_errors=True)
        raise UpdateError(f"the new bundle was exported {_created(staging)}, before the current one "
                          f"({_created(current)}): an old bundle, even a validly signed one, is not installed "
                          "over a newer one; use --rollback, or --allow-older if this is intended")
    dest = store / info["id"]
    if dest.exists() and _intact(dest):
        shutil.rmtree(staging)  # this very bundle is installed already, and intact
    else:
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
