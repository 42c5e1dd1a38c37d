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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, TextIO

PACKAGE = "onnxruntime-web"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
MAX_TARBALL_BYTES = 200 * 1024 * 1024  # the pinned tarball is 33 MB; a registry answer past this is not it
VENDOR_INFO = "VENDOR.json"


class RuntimeFetchError(RuntimeError):
    """The runtime could not be put in place; the message names the file or address and why."""


@dataclass(frozen=True)
class Pin:
    version: str
    integrity: str  # "sha512-<base64>", as npm writes it in package-lock.json
    lockfile: Path

    def tarball_name(self) -> str:
        return f"{PACKAGE}-{self.version}.tgz"

    def url(self, registry: Optional[str] = None) -> str:
        base = (registry or os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
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
    if not integrity.startswith("sha512-"):
        raise RuntimeFetchError(f"{lock}: {PACKAGE}'s integrity is not a sha512 ({integrity[:20]}...)")
    return Pin(version, integrity, lock)


def _sha512_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _download(url: str, stream: TextIO, timeout_s: float = 60.0) -> bytes:
    """The tarball's bytes, with a progress line at every tenth of the way."""
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


def installed_ok(vendor: Path, pin: Pin, names) -> bool:
    """Whether `vendor` already holds the pinned version's files, each matching its recorded sha256."""
    try:
        info = json.loads((vendor / VENDOR_INFO).read_text(encoding="utf-8"))
        if info.get("package") != PACKAGE or info.get("version") != pin.version:
            return False
        return all(hashlib.sha256((vendor / n).read_bytes()).hexdigest() == info["sha256"][n] for n in names)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def fetch_runtime(root: Path, names, source: Optional[Path] = None, registry: Optional[str] = None,
                  force: bool = False, stream: Optional[TextIO] = None) -> Dict:
    """Put the pinned runtime's `names` in root/vendor; return what was done.

    `source`: a local copy of the tarball (offline); else it is downloaded from the registry."""
    stream = stream or sys.stderr
    pin = pinned(root)
    vendor = root / "vendor"
    if not force and installed_ok(vendor, pin, names):
        return {"vendor": str(vendor), "version": pin.version, "changed": False, "source": None}
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
    if got != pin.integrity:
        raise RuntimeFetchError(f"{origin}: integrity check failed: {pin.lockfile.name} pins {PACKAGE} "
                                f"{pin.version} as {pin.integrity[:27]}..., this file is {got[:27]}... "
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


def _replace_dir(target: Path, files: Dict[str, bytes]) -> None:
    """Write `files` into a new folder beside `target`, then swap it in."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise RuntimeFetchError(f"{target.parent}: cannot write there ({exc.strerror or exc}); "
                                "run as the user that installed the package (sudo on a clinic device)") from None
    old = target.with_name(f".{target.name}.old")
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content)
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)  # the earlier runtime stays rather than none
        raise
