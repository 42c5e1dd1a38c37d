"""Float image filters in numpy: Pillow's filters refuse 32-bit float images, and the device has no SciPy."""

from __future__ import annotations

import numpy as np


def box_mean(arr: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean over a window of 2r + 1 along `axis`, edges extended."""
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(arr, pad, mode="edge"), axis=axis, dtype=np.float64)
    n = arr.shape[axis]
    hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return ((hi - lo) / (2 * r + 1)).astype(np.float32)


def gaussian_blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Three box passes per axis (close to a Gaussian; sigma to the nearest box width, within ~20%):
    float images, which Pillow cannot blur."""
    r = int(round((np.sqrt(4 * sigma * sigma + 1) - 1) / 2))  # 3 boxes of 2r+1 have variance ~ sigma^2
    if r < 1:
        return arr.astype(np.float32)
    out = arr.astype(np.float32)
    for axis in (0, 1):
        for _ in range(3):
            out = box_mean(out, r, axis)
    return out


def _grow(mask: np.ndarray, r: int, axis: int, op) -> np.ndarray:
    out = mask.copy()
    for k in range(1, r + 1):
        lead = [slice(None)] * 2
        tail = [slice(None)] * 2
        lead[axis], tail[axis] = slice(k, None), slice(None, -k)
        shifted = np.ones_like(mask) if op is np.logical_and else np.zeros_like(mask)
        shifted[tuple(lead)] = mask[tuple(tail)]
        out = op(out, shifted)
        shifted = np.ones_like(mask) if op is np.logical_and else np.zeros_like(mask)
        shifted[tuple(tail)] = mask[tuple(lead)]
        out = op(out, shifted)
    return out


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r + 1) square: shifted copies for small r, box sums for large."""
    m = np.asarray(mask, bool)
    if r <= 3:
        return _grow(_grow(m, r, 0, np.logical_or), r, 1, np.logical_or)
    f = m.astype(np.float32)
    return box_mean(box_mean(f, r, 0), r, 1) > 1e-6


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r + 1) square (outside the image counts as inside the mask)."""
    m = np.asarray(mask, bool)
    if r <= 3:
        return _grow(_grow(m, r, 0, np.logical_and), r, 1, np.logical_and)
    f = m.astype(np.float32)
    return box_mean(box_mean(f, r, 0), r, 1) > 1 - 1e-6
