"""From a photo of film on a lightbox to the radiograph, with numpy and Pillow only.

The lightbox is the brightest thing in the photo; the film is the darker quadrilateral on it (its
bones are bright too, but they lie inside the film, so the film is "what the lit lightbox region
does not reach from the photo's edge"). Steps:

1. White balance on the lightbox pixels (it is white light; a cast from the camera or the tube
   shows up there), then gray.
2. Illumination: fit a smooth (quadratic) surface to the lightbox brightness around the film and
   divide by it, so an unevenly lit box gives the film's own transmission in [0, 1].
3. The film's four corners (extremes of x+y and x-y of the film mask), a perspective transform
   to a rectangle, and a small crop that drops the film's edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

WORK_SIDE = 400  # the analysis runs on a copy this size; the warp samples the full-size photo
CROP = 0.02  # share of each side trimmed after flattening (film edge, tape, clips)
MAX_PHOTO_SIDE = 3000  # larger photos are box-reduced first: the model sees 128 px anyway


class FilmNotFound(ValueError):
    """No film could be located; the reason is for the technician."""


@dataclass
class Flattened:
    pixels: np.ndarray  # 2-D float32 in [0, 1], bone bright, as the radiograph file would show
    corners: np.ndarray  # (4, 2) film corners in the photo (x, y): TL, TR, BR, BL
    film_fraction: float  # film area / photo area
    touches_edge: bool  # the film mask reaches the photo's border: probably cut off
    lightbox_level: float  # median lightbox brightness before correction, 0..1
    notes: List[str] = field(default_factory=list)
    transmission: Optional[np.ndarray] = None  # before the auto-window, for the glare check
    film_short_side_px: float = 0.0  # the film's shorter side in the photo


def _to_array(photo: Image.Image) -> np.ndarray:
    return np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0


def white_balance(rgb: np.ndarray, lightbox: np.ndarray) -> Tuple[np.ndarray, List[float]]:
    """Scale channels so the lightbox is neutral (gray-world on the one region known to be white)."""
    ref = np.median(rgb[lightbox], axis=0) if lightbox.any() else np.median(rgb.reshape(-1, 3), axis=0)
    gains = ref.mean() / np.maximum(ref, 1e-3)
    return np.clip(rgb * gains, 0.0, 1.0), [float(g) for g in gains]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def _from_border(mask: np.ndarray) -> np.ndarray:
    """The part of `mask` connected to the photo's border (geodesic growth from the border)."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    mask = np.asarray(img.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))) > 127  # close gaps
    region = np.zeros_like(mask)
    region[0], region[-1], region[:, 0], region[:, -1] = mask[0], mask[-1], mask[:, 0], mask[:, -1]
    while True:
        before = int(region.sum())
        for _ in range(8):
            grown = region.copy()
            grown[1:] |= region[:-1]
            grown[:-1] |= region[1:]
            grown[:, 1:] |= region[:, :-1]
            grown[:, :-1] |= region[:, 1:]
            region = grown & mask
        if int(region.sum()) == before:
            return region


# The clearest film base passes ~85% of the light, so anything within 8% of the lightbox's own
# (fitted) brightness is lightbox, even where the box is unevenly lit and bone runs to the edge.
LIGHTBOX_RATIO = 0.92


def _lightbox_mask(gray: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(lightbox pixels reachable from the border, fitted illumination surface)."""
    rough = _from_border(gray > _otsu(gray))
    illum = _illumination(gray, rough) if rough.mean() > 0.01 else np.full_like(gray, max(gray.max(), 1e-3))
    for _ in range(2):
        box = _from_border(gray / illum > LIGHTBOX_RATIO)
        if box.mean() < 0.01:
            break
        illum = _illumination(gray, box)
    return _from_border(gray / illum > LIGHTBOX_RATIO), illum


def _corners(film: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(film)
    s, d = xs + ys, xs - ys
    return np.array([[xs[s.argmin()], ys[s.argmin()]], [xs[d.argmax()], ys[d.argmax()]],
                     [xs[s.argmax()], ys[s.argmax()]], [xs[d.argmin()], ys[d.argmin()]]], dtype=np.float64)


def _illumination(gray: np.ndarray, lightbox: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface through the lightbox brightness, evaluated everywhere."""
    h, w = gray.shape
    yy, xx = np.mgrid[0:h, 0:w]
    x, y = xx / w - 0.5, yy / h - 0.5
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    idx = np.flatnonzero(lightbox.reshape(-1))
    if idx.size > 4000:
        idx = idx[:: idx.size // 4000]
    coef, *_ = np.linalg.lstsq(basis[idx], gray.reshape(-1)[idx], rcond=None)
    return np.clip((basis @ coef).reshape(h, w), 0.05, None).astype(np.float32)


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> List[float]:
    """Pillow's PERSPECTIVE maps output (x, y) to input; solve the 8 coefficients from 4 pairs."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return np.linalg.solve(np.array(rows, float), np.array(rhs, float)).tolist()


def flatten_film(photo: Image.Image, out_long_side: int = 1024) -> Flattened:
    """Locate the film, undo the cast, the uneven light and the perspective; raise FilmNotFound."""
    reduced = 1.0
    if max(photo.size) > MAX_PHOTO_SIDE:  # a 12 MP still would cost ~0.5 GB of float arrays on a Pi
        reduced = MAX_PHOTO_SIDE / max(photo.size)
        photo = photo.resize((round(photo.size[0] * reduced), round(photo.size[1] * reduced)), Image.Resampling.BOX)
    W, H = photo.size
    scale = WORK_SIDE / max(W, H)
    small = photo.convert("RGB").resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.BOX)
    rgb = _to_array(small)
    lightbox, _ = _lightbox_mask(_gray(rgb))  # first pass: only to find the white reference
    if lightbox.mean() < 0.03:
        raise FilmNotFound("no lit lightbox around the film: photograph the film on a lit lightbox")
    rgb, gains = white_balance(rgb, lightbox)
    gray = _gray(rgb)
    lightbox, illum = _lightbox_mask(gray)  # again on the balanced photo, where a cast no longer skews it
    film = ~lightbox
    img = Image.fromarray((film * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(5)).filter(ImageFilter.MaxFilter(5))
    film = np.asarray(img) > 127
    frac = float(film.mean())
    if frac < 0.05:
        raise FilmNotFound("film not found: nothing darker than the lightbox covers enough of the photo")
    h, w = film.shape
    edge = np.concatenate([film[0], film[-1], film[:, 0], film[:, -1]])
    touches = bool(edge.mean() > 0.02)
    corners_small = _corners(film)
    level = float(np.median(gray[lightbox]))

    # Full resolution: balance, divide by the (upsampled) illumination, then warp the quad.
    full = _to_array(photo)
    full = np.clip(full * np.array(gains, np.float32), 0.0, 1.0)
    illum_full = np.asarray(Image.fromarray(illum).resize((W, H), Image.Resampling.BILINEAR), np.float32)
    transmission = np.clip(_gray(full) / illum_full, 0.0, 1.0)
    corners = corners_small / scale
    top, bottom = np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[2] - corners[3])
    left, right = np.linalg.norm(corners[3] - corners[0]), np.linalg.norm(corners[2] - corners[1])
    fw, fh = (top + bottom) / 2, (left + right) / 2
    k = out_long_side / max(fw, fh) if max(fw, fh) > out_long_side else 1.0
    ow, oh = max(16, round(fw * k)), max(16, round(fh * k))
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], float)
    coeffs = _perspective_coeffs(dst, corners)
    warped = Image.fromarray(transmission).transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs,
                                                     Image.Resampling.BILINEAR)
    arr = np.asarray(warped, np.float32)
    cy, cx = int(oh * CROP), int(ow * CROP)
    arr = arr[cy:oh - cy, cx:ow - cx]
    raw = arr  # transmission: film base passes <= ~85%, so values near 1 mean extra light (glare)
    lo, hi = np.percentile(arr, [0.5, 99.5])  # a viewer's auto-window, as a CR export would be
    arr = (arr - lo) / (hi - lo) if hi - lo > 1e-3 else np.zeros_like(arr)
    notes = []
    if max(abs(g - 1) for g in gains) > 0.05:
        notes.append("colour cast corrected")
    spread = float(illum.max() / max(illum.min(), 1e-3))
    if spread > 1.15:
        notes.append(f"uneven lightbox corrected ({spread:.2f}x brighter at its brightest)")
    film_px = float(min(fw, fh))
    return Flattened(np.clip(arr, 0, 1).astype(np.float32), corners / reduced, frac, touches, level, notes,
                     transmission=np.clip(raw, 0, 1).astype(np.float32), film_short_side_px=film_px / reduced)
