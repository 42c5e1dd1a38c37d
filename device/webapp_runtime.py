"""The phone app's WASM runtime (onnxruntime-web), put in place without Node.

A checkout gets it with `npm ci && npm run vendor` (webapp/scripts/vendor.mjs), and a wheel built
after that ships it. A clinic device installed from a clone has neither Node nor those files, so
`python -m device webapp --fetch-runtime` fetches the very tarball that `webapp/package-lock.json`
pins from the npm registry (or reads it from a file carried on a USB stick: `--from`), checks the
lock's `integrity` (sha512 of the whole tarball) before reading anything out of it, and writes the
three files the app loads, with the same VENDOR.json that vendor.mjs writes. Nothing is written
unless every check passes, and the vendor folder is replaced whole: never half a runtime.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, TextIO, Tuple

PACKAGE = "onnxruntime-web"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
MAX_TARBALL_BYTES = 200 * 1024 * 1024  # the pinned tarball is 33 MB; a registry answer past this is not it
VENDOR_INFO = "VENDOR.json"


class RuntimeFetchError(RuntimeError):
    """The runtime could not be put in place; the message names the file or address and why."""


@dataclass(frozen=True)
class Pin:
    version: str
    integrity: str  # as npm writes it in package-lock.json: SRI, "sha512-<base64>" (maybe several, spaced)
    lockfile: Path

    def sha512s(self) -> list:
        """The sha512 digests the lock accepts (SRI: space-separated, each may carry ?options)."""
        return [t.split("?", 1)[0] for t in self.integrity.split() if t.startswith("sha512-")]

    def tarball_name(self) -> str:
        return f"{PACKAGE}-{self.version}.tgz"

    def url(self, registry: Optional[str] = None) -> str:
        base = (registry or os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
                or DEFAULT_REGISTRY).rstrip("/")
        return f"{base}/{PACKAGE}/-/{self.tarball_name()}"


def pinned(root: Path) -> Pin:
    """The version and integrity of onnxruntime-web in the app's package-lock.json."""
    lock = root / "package-lock.json"
    try:
        entry = json.loads(lock.read_text(encoding="utf-8"))["packages"][f"node_modules/{PACKAGE}"]
        version, integrity = str(entry["version"]), str(entry["integrity"])
    except FileNotFoundError:
        raise RuntimeFetchError(f"{lock}: missing, so the pinned {PACKAGE} version is unknown") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeFetchError(f"{lock}: no pinned {PACKAGE} with an integrity ({exc})") from None
    pin = Pin(version, integrity, lock)
    if not pin.sha512s():
        raise RuntimeFetchError(f"{lock}: {PACKAGE}'s integrity names no sha512 ({integrity[:30]}...)")
    return pin


def _sha512_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _download(url: str, stream: TextIO, timeout_s: float = 60.0, deadline_s: float = 900.0) -> bytes:
    """The tarball's bytes, with a progress line at every tenth of the way; `timeout_s` per read,
    `deadline_s` for the whole (a registry that trickles is given up on, not waited for forever)."""
    import time

    t_end = time.monotonic() + deadline_s
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - a fixed https registry address
            total = int(resp.headers.get("Content-Length") or 0)
            if total > MAX_TARBALL_BYTES:
                raise RuntimeFetchError(f"{url}: {total} bytes, far more than the runtime's tarball")
            buf = io.BytesIO()
            step, shown = max(total // 10, 1), 0
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                buf.write(chunk)
                if buf.tell() > MAX_TARBALL_BYTES:
                    raise RuntimeFetchError(f"{url}: more than {MAX_TARBALL_BYTES} bytes, not the runtime's tarball")
                if time.monotonic() > t_end:
                    raise RuntimeFetchError(f"{url}: still downloading after {deadline_s:.0f} s; offline, carry the "
                                            "file and pass --from FILE")
                if total and buf.tell() // step > shown:
                    shown = buf.tell() // step
                    print(f"  downloading {PACKAGE}: {buf.tell() / 1e6:.1f} / {total / 1e6:.1f} MB", file=stream)
            return buf.getvalue()
    except RuntimeFetchError:
        raise
    except OSError as exc:  # URLError, HTTPError, timeouts: all OSError
        raise RuntimeFetchError(f"{url}: cannot download ({exc}); offline, carry the file and pass --from FILE") from None


def _members(data: bytes, origin: str, names) -> Dict[str, bytes]:
    """The files the app needs (package/dist/<name>) and package.json, read as regular files only."""
    wanted = {f"package/dist/{n}": n for n in names}
    wanted["package/package.json"] = "package.json"
    out: Dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar:
                if m.name in wanted and m.isreg():
                    fh = tar.extractfile(m)
                    if fh is not None:
                        out[wanted[m.name]] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RuntimeFetchError(f"{origin}: not a readable .tgz ({exc})") from None
    missing = sorted(set(wanted.values()) - set(out))
    if missing:
        raise RuntimeFetchError(f"{origin}: the tarball lacks {', '.join(missing)}")
    return out


class VendorMismatch(ValueError):
    """A runtime file does not match the sha256 VENDOR.json records for it."""


def read_vendor(vendor: Path, names) -> Tuple[Dict, Dict[str, bytes]]:
    """(VENDOR.json, name -> bytes) of a runtime in place, each file checked against the sha256
    VENDOR.json records for it: VendorMismatch names the first that is not; OSError, ValueError
    or KeyError when VENDOR.json itself is missing or unusable."""
    info = json.loads((vendor / VENDOR_INFO).read_text(encoding="utf-8"))
    sums = info["sha256"]
    files = {}
    for n in names:
        content = (vendor / n).read_bytes()
        if hashlib.sha256(content).hexdigest() != sums.get(n):
            raise VendorMismatch(f"{vendor / n} does not match {VENDOR_INFO}")
        files[n] = content
    return info, files


def installed_ok(vendor: Path, pin: Pin, names) -> bool:
    """Whether `vendor` already holds the pinned version's files, each matching its recorded sha256."""
    try:
        info, _ = read_vendor(vendor, names)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return info.get("package") == PACKAGE and info.get("version") == pin.version


def fetch_runtime(root: Path, names, source: Optional[Path] = None, registry: Optional[str] = None,
                  force: bool = False, stream: Optional[TextIO] = None) -> Dict:
    """Put the pinned runtime's `names` in root/vendor; return what was done.

    `source`: a local copy of the tarball (offline); else it is downloaded from the registry."""
    stream = stream or sys.stderr
    pin = pinned(root)
    vendor = root / "vendor"
    if source is not None and source.is_dir():  # a folder carried offline (install.sh --wheels DIR)
        source = source / pin.tarball_name()
    with _locked(root):
        _recover(vendor)
        if not force and installed_ok(vendor, pin, names):
            return {"vendor": str(vendor), "version": pin.version, "changed": False, "source": None}
        return _fetch(pin, vendor, names, source, registry, stream)


def _fetch(pin: Pin, vendor: Path, names, source: Optional[Path], registry: Optional[str], stream: TextIO) -> Dict:
    if source is not None:
        origin = str(source)
        try:
            if source.stat().st_size > MAX_TARBALL_BYTES:
                raise RuntimeFetchError(f"{source}: far larger than the runtime's tarball")
            data = source.read_bytes()
        except OSError as exc:
            raise RuntimeFetchError(f"{source}: cannot read ({exc.strerror or exc})") from None
    else:
        origin = pin.url(registry)
        print(f"fetching {PACKAGE} {pin.version} from {origin}", file=stream)
        data = _download(origin, stream)
    got = _sha512_integrity(data)
    if got not in pin.sha512s():
        raise RuntimeFetchError(f"{origin}: integrity check failed: {pin.lockfile.name} pins {PACKAGE} "
                                f"{pin.version} as {pin.sha512s()[0][:27]}..., this file is {got[:27]}... "
                                "(a different version, or damaged); nothing was written")
    files = _members(data, origin, names)
    meta = json.loads(files.pop("package.json"))
    if meta.get("name") != PACKAGE or meta.get("version") != pin.version:
        raise RuntimeFetchError(f"{origin}: holds {meta.get('name')} {meta.get('version')}, not {PACKAGE} {pin.version}")
    info = {"package": PACKAGE, "version": pin.version, "license": meta.get("license"),
            **({"homepage": meta["homepage"]} if meta.get("homepage") else {}),  # as vendor.mjs writes it
            "sha256": {n: hashlib.sha256(files[n]).hexdigest() for n in names}}
    _replace_dir(vendor, {**files, VENDOR_INFO: (json.dumps(info, indent=2) + "\n").encode()})
    return {"vendor": str(vendor), "version": pin.version, "changed": True, "source": origin}


OLD_PREFIX = ".vendor-old-"  # the runtime being replaced, kept until the new one is in place


@contextmanager
def _locked(root: Path):
    """One fetch at a time per app folder (an flock, released by the kernel if we die)."""
    import fcntl

    try:
        fh = open(root / ".vendor.lock", "a+")
    except OSError:
        yield  # a folder we cannot write: the fetch will say so, with the reason, when it writes
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _recover(vendor: Path) -> None:
    """A fetch killed between its two renames left the runtime only under its backup name: put
    it back; a backup left after a finished swap is removed."""
    olds = sorted((p for p in vendor.parent.glob(f"{OLD_PREFIX}*") if p.is_dir() and not p.is_symlink()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        if not vendor.exists() and (old / "vendor").is_dir():
            try:
                (old / "vendor").rename(vendor)
            except OSError:
                continue
        shutil.rmtree(old, ignore_errors=True)


def _write_error(where: Path, exc: OSError) -> RuntimeFetchError:
    import errno

    hint = ("the package lives on a read-only file system: run the fetch where it is installed writable"
            if exc.errno == errno.EROFS else
            "run as the user that installed the package (sudo on a clinic device)" if exc.errno in (errno.EACCES,
                                                                                                   errno.EPERM)
            else "is the disk full?" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else "")
    return RuntimeFetchError(f"{where}: cannot write the runtime there ({exc.strerror or exc})"
                             + (f"; {hint}" if hint else "") + "; the earlier runtime, if any, is kept")


def _replace_dir(target: Path, files: Dict[str, bytes]) -> None:
    """Write `files` into a new folder beside `target` (each fsynced), then swap it in; on any
    failure the earlier folder stays (or is put back) and RuntimeFetchError says why."""
    from .fileops import fsync_dir

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".vendor-new-", dir=target.parent))
    except OSError as exc:
        raise _write_error(target.parent, exc) from None
    old = None
    try:
        for name, content in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX, dir=target.parent))
            target.rename(old / "vendor")
        tmp.rename(target)
        fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "vendor").exists() and not target.exists():
            (old / "vendor").rename(target)  # the earlier runtime stays rather than none
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise _write_error(target, exc) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
