"""Images -> arrays through edge_runtime's own decoder and the geometric half of its preprocess.

Unreadable or missing images are skipped and counted, each named on stderr; more than
`max_skip_fraction` of them stops the run (a broken copy of the data is not worth training on).
A split keeps its images resized but not yet normalised (`resized`); `images` normalises them,
which together is exactly edge_runtime.preprocess.preprocess. Training augments `resized` first
(train/augment.py) and normalises after, as the device normalises after what photos do.

Decoding runs on a pool of threads, delivered in the records' order; an optional on-disk cache
keeps a split's decoded arrays, keyed by the decoder's code and packages, the PreprocessSpec and
each file's sha256, for runs that read the same images again (resumed, or trained at the same
size), which read them memory-mapped: a split larger than memory still trains.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import PreprocessSpec, normalize_intensity, resize_input

from .data import DataError, Record
from .progress import progress as progress_of

CACHE_VERSION = 1  # raise when what a cached array holds changes


@dataclass
class LoadedSplit:
    records: List[Record]
    resized: np.ndarray  # (n, size, size) float32: resized, not yet normalised
    labels: np.ndarray  # (n,) int
    spec: PreprocessSpec
    skipped: List[str] = field(default_factory=list)  # "path: reason"
    shapes: List[Tuple[int, int]] = field(default_factory=list)  # decoded (h, w) of each image, for boxes
    _images: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def images(self) -> np.ndarray:
        """(n, size, size, 1) float32: the model inputs, as edge_runtime.preprocess makes them."""
        if self._images is None:
            self._images = np.stack([normalize_intensity(x, self.spec) for x in self.resized])[..., None] \
                if len(self.resized) else np.zeros((0, self.spec.size, self.spec.size, 1), np.float32)
        return self._images

    @property
    def regions(self) -> List[str]:
        return [r.region for r in self.records]


def _decode(r: Record, spec: PreprocessSpec):
    """(resized, decoded shape) or the reason it cannot be read."""
    try:
        pixels = read_image(r.path, spec).pixels
        return resize_input(pixels, spec), tuple(pixels.shape[:2])
    except ImageReadError as exc:
        return str(exc)


@functools.lru_cache(maxsize=1)
def decoder_digest() -> str:
    """sha256 of the edge runtime's code, which decodes and resizes: a new decoder, a new key."""
    import edge_runtime

    h = hashlib.sha256()
    root = Path(edge_runtime.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _decoding_packages() -> Dict[str, Optional[str]]:
    """The versions of what decodes an image besides our code: a new Pillow or pydicom, a new key."""
    from edge_runtime.environment import package_version

    return {name: package_version(name) for name in ("numpy", "pillow", "pydicom", "pylibjpeg", "gdcm")}


def cache_key(records: Sequence[Record], spec: PreprocessSpec, hashes: Dict[str, str]) -> str:
    """What the decoded arrays depend on: the decoder, the preprocessing, and each file's bytes
    and label."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "decoder": decoder_digest(), "spec": spec.to_dict(),
                                   "packages": _decoding_packages()}, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps([str(r.path), r.label, hashes.get(str(r.path), "")]).encode())
    return h.hexdigest()


def load_images(records: Sequence[Record], spec: PreprocessSpec, desc: str = "images",
                progress: bool = True, max_skip_fraction: float = 0.02, workers: int = 0,
                cache_dir: Optional[Path] = None, hashes: Optional[Dict[str, str]] = None) -> LoadedSplit:
    """Decode and resize `records` with the device's own decoder, `workers` threads at a time
    (0: one per CPU; Pillow and numpy let go of the GIL), in the records' order whatever the
    threads do. With `cache_dir`, the result is kept there as one .npz keyed by the
    PreprocessSpec and every file's sha256 (`hashes`, path -> sha256): a changed image, label or
    spec is a new key, never a stale array."""
    key = path = None
    if cache_dir is not None:
        if hashes is None:
            raise ValueError("a decoded-image cache needs the files' sha256 (hashes)")
        key = cache_key(records, spec, hashes)
        path = Path(cache_dir) / f"{key[:32]}.npz"
        hit = _read_cache(path, records, spec)
        if hit is not None:
            _check_skipped(len(records), hit.skipped, desc, max_skip_fraction)
            return hit
    threads = workers or os.cpu_count() or 1
    kept, arrays, skipped, shapes = [], [], [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for r, out in zip(records, progress_of(pool.map(lambda r: _decode(r, spec), records), desc,
                                               total=len(records), enabled=progress)):
            if isinstance(out, str):
                skipped.append(out)
                print(f"skipped: {out}", file=sys.stderr)
                continue
            arrays.append(out[0])
            shapes.append(out[1])
            kept.append(r)
    _check_skipped(len(records), skipped, desc, max_skip_fraction)
    resized = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, spec.size, spec.size), np.float32)
    loaded = LoadedSplit(kept, resized, np.array([r.label for r in kept], dtype=np.int32), spec, skipped, shapes)
    if path is not None:
        _write_cache(path, loaded, records)
    return loaded


def _check_skipped(n: int, skipped: Sequence[str], desc: str, max_skip_fraction: float) -> None:
    if n and len(skipped) / n > max_skip_fraction:
        raise DataError(f"{len(skipped)} of {n} {desc} unreadable (limit {max_skip_fraction:.0%}); first: {skipped[0]}")


def _pixels_path(path: Path) -> Path:
    return path.with_name(path.name[:-len(".npz")] + ".pixels.npy")


def _fingerprint(pixels: Path) -> str:
    """Size and the sha256 of the first and last MB: a torn or truncated pixel file shows."""
    size = pixels.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(pixels, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def _write_cache(path: Path, loaded: LoadedSplit, records: Sequence[Record]) -> None:
    """The pixels as a plain .npy (read back memory-mapped), then the index .npz that names them;
    each written to a temporary name and renamed, the .npz last: a reader never sees half an entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    where = {id(r): i for i, r in enumerate(records)}
    unique = f".{os.getpid()}-{os.urandom(6).hex()}.tmp"  # unique across hosts sharing the cache
    pixels = _pixels_path(path)
    tmp = pixels.with_name(pixels.name + unique)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(loaded.resized, dtype=np.float32))
    os.replace(tmp, pixels)
    tmp = path.with_name(path.name + unique)
    with open(tmp, "wb") as f:
        np.savez(f, kept=np.array([where[id(r)] for r in loaded.records], np.int64),
                 shapes=np.array(loaded.shapes, np.int64).reshape(-1, 2), skipped=np.array(loaded.skipped, dtype=str),
                 pixels=np.array(_fingerprint(pixels)))
    os.replace(tmp, path)


def _read_cache(path: Path, records: Sequence[Record], spec: PreprocessSpec) -> Optional[LoadedSplit]:
    """The entry, its pixels memory-mapped (read-only: the OS pages in what training touches, so a
    split larger than memory still trains), or None when it is absent or damaged in any way."""
    try:
        with np.load(path, allow_pickle=False) as z:
            kept, shapes, skipped, print_ = z["kept"], z["shapes"], z["skipped"], str(z["pixels"])
        pixels = _pixels_path(path)
        if _fingerprint(pixels) != print_:
            return None
        resized = np.load(pixels, mmap_mode="r", allow_pickle=False)
    except Exception:  # noqa: BLE001 - a torn zip, EOF, a bad CRC, a missing or short pixel file: decode again
        return None
    if resized.dtype != np.float32 or resized.shape[1:] != (spec.size, spec.size) or len(kept) != len(resized) or \
            (len(kept) and (kept.min() < 0 or kept.max() >= len(records))):
        return None
    chosen = [records[int(i)] for i in kept]
    return LoadedSplit(chosen, resized, np.array([r.label for r in chosen], dtype=np.int32), spec,
                       [str(x) for x in skipped], [tuple(int(v) for v in sh) for sh in shapes])
