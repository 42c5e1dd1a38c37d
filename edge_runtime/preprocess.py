"""THE preprocessing function: training imports it, the device runs it. Change it in one place.

    decoded pixels (2-D, [0, 1]) -> resize to size x size -> intensity normalisation -> (size, size, 1)

Resize: stretch (the default) resizes the whole radiograph, as the paper's Keras pipeline did;
letterbox keeps the aspect ratio and pads.

Intensity normalisation makes the answer depend on the anatomy, not on how the image was
exposed, windowed, stored or photographed: the same radiograph as an 8-bit JPEG, a 16-bit PNG,
a DICOM with or without a window, or a photo of the printed film differs by an unknown monotone
mapping of its gray levels.
- `window`: a robust window, the 1st to 99th percentile -> [0, 1] (removes any affine mapping:
  offset, gain, DICOM windows, 10-16-bit scaling).
- `clahe`: contrast-limited adaptive histogram equalisation on a 4 x 4 grid (removes any affine
  mapping too, and equalises contrast locally).
- `none`: the pixels as decoded (older bundles).

Views: `dihedral` answers with the mean over the image's eight orientations (four rotations,
mirrored or not), so a film turned on the lightbox, photographed sideways or hung back to front
gets the same answer as the file. `single` runs the image as it is.

Every choice is recorded in PreprocessSpec, hence in each run and bundle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
from PIL import Image

RESIZE_MODES = ("stretch", "letterbox")
NORMALIZATIONS = ("none", "window", "clahe")
VIEW_MODES = ("single", "dihedral")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "area": Image.Resampling.BOX}
CLAHE_GRID = 4
CLAHE_CLIP = 3.0  # histogram bins are capped at this multiple of the mean bin
# Content check on the resized image before normalisation (normalising would make noise look like
# an image): on 297 real radiographs and 1,200 phantoms the smallest contrast is 0.42 and the
# smallest structure ratio 0.71, far above these (tests/test_edge_runtime.py checks both ways).
MIN_CONTRAST = 0.03  # 1st-99th percentile spread, as a share of full scale
MIN_STRUCTURE = 0.35  # std of 8 x 8-block means / std of pixels: white noise ~0.125, radiographs ~0.8+
# A file far smaller than the model's input is blown up from detail it does not hold: a 64-px
# thumbnail of a wrist has no fracture line left in it, and "no fracture found" on it would be
# false reassurance. The side that fills the input (the long one when letterboxed, the short one
# when stretched) must reach MIN_FILL of the input size: below it, more than three quarters of the
# input's pixels are interpolated. A choice, not a measurement: far below every real radiograph at
# hand (the smallest real long side is 296 px) and above a thumbnail. A photographed film is
# bounded by the film path instead (device.quality.assess: its size in the photo's pixels, and its
# flattened copy held to this same bound, since a large photo is decoded reduced).
MIN_FILL = 0.5


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 128
    resize: str = "stretch"
    resample: str = "bilinear"
    pad_value: float = 0.0
    channels: int = 1
    normalize: str = "none"
    window_percentiles: Tuple[float, float] = (1.0, 99.0)
    views: str = "single"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 8 <= self.size <= 4096:
            raise ValueError(f"preprocess size must be an integer within 8..4096, got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {tuple(_RESAMPLE)}, got {self.resample!r}")
        if not 0.0 <= self.pad_value <= 1.0:
            raise ValueError(f"pad_value must be within [0, 1], got {self.pad_value}")
        if self.channels != 1:
            raise ValueError("models take one grayscale channel; 3-channel bases replicate it inside")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        lo, hi = self.window_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"window_percentiles must satisfy 0 <= low < high <= 100, got {self.window_percentiles}")
        if self.views not in VIEW_MODES:
            raise ValueError(f"views must be one of {VIEW_MODES}, got {self.views!r}")

    @property
    def n_views(self) -> int:
        return 8 if self.views == "dihedral" else 1

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["window_percentiles"] = list(self.window_percentiles)
        return {**d, "range": [0.0, 1.0], "dtype": "float32", "layout": "NHWC"}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PreprocessSpec":
        """Older manifests lack the later keys: they meant no normalisation and a single view."""
        keys = ("size", "resize", "resample", "pad_value", "channels", "normalize", "window_percentiles", "views")
        kw = {k: d[k] for k in keys if k in d}
        if "window_percentiles" in kw:
            kw["window_percentiles"] = tuple(float(v) for v in kw["window_percentiles"])
        return cls(**kw)


def resize_input(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """2-D grayscale array in [0, 1] -> (size, size) float32: the geometric half of preprocessing."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"preprocess expects a 2-D grayscale array, got shape {arr.shape}")
    resample = _RESAMPLE[spec.resample]
    img = Image.fromarray(np.ascontiguousarray(arr))  # mode "F"
    if spec.resize == "stretch":
        out = np.asarray(img.resize((spec.size, spec.size), resample), dtype=np.float32)
    else:
        top, left, nh, nw = content_box(arr.shape, spec)
        small = np.asarray(img.resize((nw, nh), resample), dtype=np.float32)
        out = np.full((spec.size, spec.size), spec.pad_value, dtype=np.float32)
        out[top:top + nh, left:left + nw] = small
    return np.clip(out, 0.0, 1.0)


def content_box(shape: Tuple[int, int], spec: PreprocessSpec) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the model's square input: all of it when
    stretched; the unpadded part when letterboxed (a heatmap is cropped to it before it is drawn)."""
    if spec.resize == "stretch":
        return 0, 0, spec.size, spec.size
    h, w = shape[:2]
    scale = spec.size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return (spec.size - nh) // 2, (spec.size - nw) // 2, nh, nw


def window(x: np.ndarray, percentiles: Tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    lo, hi = np.percentile(x, percentiles)
    if hi - lo < 1e-6:
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def clahe(x: np.ndarray, grid: int = CLAHE_GRID, clip: float = CLAHE_CLIP, bins: int = 128) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld 1994), bilinear between tiles."""
    x = window(x, (0.5, 99.5))
    h, w = x.shape
    grid = max(1, min(grid, h // 4, w // 4))  # tiles of at least 4 x 4 pixels
    th, tw = max(1, h // grid), max(1, w // grid)
    idx = np.clip((x * bins).astype(np.int64), 0, bins - 1)
    maps = np.zeros((grid, grid, bins), np.float32)
    for i in range(grid):
        for j in range(grid):
            tile = idx[i * th:(i + 1) * th if i < grid - 1 else h, j * tw:(j + 1) * tw if j < grid - 1 else w]
            hist = np.bincount(tile.ravel(), minlength=bins).astype(np.float64)
            limit = clip * tile.size / bins
            hist = np.minimum(hist, limit) + np.maximum(hist - limit, 0).sum() / bins
            cdf = np.cumsum(hist)
            maps[i, j] = cdf / cdf[-1]
    cy = np.clip((np.arange(h) + 0.5) / th - 0.5, 0, grid - 1)
    cx = np.clip((np.arange(w) + 0.5) / tw - 0.5, 0, grid - 1)
    y0, x0 = np.minimum(cy.astype(int), grid - 2 if grid > 1 else 0), np.minimum(cx.astype(int), grid - 2 if grid > 1 else 0)
    y1, x1 = np.minimum(y0 + 1, grid - 1), np.minimum(x0 + 1, grid - 1)
    fy, fx = (cy - y0)[:, None], (cx - x0)[None, :]
    Y0, X0, Y1, X1 = y0[:, None], x0[None, :], y1[:, None], x1[None, :]
    top = maps[Y0, X0, idx] * (1 - fx) + maps[Y0, X1, idx] * fx
    bottom = maps[Y1, X0, idx] * (1 - fx) + maps[Y1, X1, idx] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def normalize_intensity(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The intensity half of preprocessing, on the resized (size, size) image."""
    if spec.normalize == "window":
        return window(x, spec.window_percentiles)
    if spec.normalize == "clahe":
        return clahe(x)
    return np.asarray(x, np.float32)


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """2-D grayscale array in [0, 1] -> (size, size, 1) float32 in [0, 1]."""
    return normalize_intensity(resize_input(pixels, spec), spec)[:, :, None]


def checked_input(pixels: np.ndarray, spec: PreprocessSpec,
                  file: bool = True) -> Tuple[Optional[np.ndarray], Optional[str], np.ndarray]:
    """(model input (size, size, 1) or None, why there is nothing to read or None, the resized
    image before normalisation): the resolution and content checks around the first half of
    preprocessing, as every reader of decoded pixels needs them (the predictor, evaluation through
    a bundle). Decoding reduces a file only while both sides stay >= the input size, so the
    decoded shape is too small exactly when the file is. `file` False (a flattened film, whose
    size the film path bounds in the photo; the self-test's drawn images): no resolution check."""
    small = resize_input(pixels, spec)
    problem = (resolution_problem(np.shape(pixels), spec) if file else None) or content_problem(small)
    if problem:
        return None, problem, small
    return normalize_intensity(small, spec)[:, :, None], None, small


def map_on_image(heat: np.ndarray, shape: Tuple[int, int], spec: PreprocessSpec) -> np.ndarray:
    """A map over the model's input grid (e.g. Grad-CAM's h x w) upsampled bilinearly to the input
    size, then cropped to the image's own part when letterboxed (`shape`: the decoded image's)."""
    size = spec.size
    full = np.asarray(Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    top, left, nh, nw = content_box(shape, spec)
    return full[top:top + nh, left:left + nw]


def filled_side(resize: str) -> str:
    """Which side of an image fills the model's input: the long one when letterboxed, the short one
    when stretched (a file here, a photographed film in device.quality)."""
    return "long" if resize == "letterbox" else "short"


def length_along(shape: Tuple[int, ...], side: str) -> int:
    """An image's length in pixels along `side` ("long" or "short"), from its (height, width, ...)."""
    h, w = int(shape[0]), int(shape[1])
    return max(h, w) if side == "long" else min(h, w)


def min_filled_side(spec: PreprocessSpec) -> Tuple[str, int]:
    """(which side of a file fills the model's input, the least length it may have in pixels)."""
    return filled_side(spec.resize), int(math.ceil(MIN_FILL * spec.size))


def resolution_problem(shape: Tuple[int, ...], spec: PreprocessSpec) -> Optional[str]:
    """Why an image of `shape` (height, width, ...) is too small for this model to read, or None."""
    h, w = int(shape[0]), int(shape[1])
    side, need = min_filled_side(spec)
    if length_along(shape, side) >= need:
        return None
    return (f"image is {w}x{h} px, too small for this model: its {side} side is enlarged to the model's "
            f"{spec.size}-px input and needs at least {need} px, or the detail a fracture shows is not "
            "there to read (a thumbnail or a downscaled copy?); use the full-resolution file")


def content_problem(x: np.ndarray) -> Optional[str]:
    """Why a resized input (before normalisation) holds nothing to read, or None.

    A blank, flat or pure-noise image has no anatomy; normalising it would stretch its last gray
    step or its noise into a full-contrast picture, and the model would answer it confidently.
    """
    x = np.asarray(x, np.float32)
    lo, hi = np.percentile(x, (1.0, 99.0))
    if hi - lo < MIN_CONTRAST:
        return f"blank image: no contrast (gray levels {lo:.3f}-{hi:.3f}); nothing to read"
    h, w = x.shape
    b = max(4, min(8, min(h, w) // 8))  # 8 x 8 blocks from 64 px up (a 128 px input: 16 x 16 of them); 4 x 4 for tiny inputs
    blocks = x[:h - h % b, :w - w % b].reshape(h // b, b, w // b, b).mean(axis=(1, 3))
    ratio = float(blocks.std() / (x.std() + 1e-9))
    if ratio < MIN_STRUCTURE:
        return f"no image structure (noise only, structure ratio {ratio:.2f}): not a radiograph"
    return None


def views(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(n, size, size, 1) model inputs: the image itself, or its eight orientations."""
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.views == "single":
        return x[None]
    return np.stack([np.rot90(v, k, axes=(0, 1)) for v in (x, x[:, ::-1]) for k in range(4)])


def merge_maps(maps: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Average per-view heatmaps (n, h, w) back in the original orientation."""
    maps = np.asarray(maps, np.float32)
    if spec.views == "single":
        return maps[0]
    back = []
    for i, m in enumerate(maps):
        flip, k = divmod(i, 4)
        u = np.rot90(m, -k)
        back.append(u[:, ::-1] if flip else u)
    return np.mean(back, axis=0)
