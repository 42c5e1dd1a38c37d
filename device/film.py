"""From a photo of film on a lightbox to the film's transmission, with numpy and Pillow only.

1. Find the film (device/film_finder.py) on a small copy of the photo.
2. White balance from the bare lightbox beside the film: it is white light, so a cast from the
   camera or the tubes shows up there.
3. Rectify: a perspective warp of the film's quadrilateral to a rectangle, from the photo as
   decoded (a few times the model's input size, never the full 12-108 MP).
4. Light: a smooth surface fitted to the lightbox around the film, corrected side by side by the
   lightbox's brightness just outside each edge and spread over the film as a Coons patch, so
   fluorescent tubes behind the diffuser (stripes along either axis) and uneven boxes cancel.
   Dividing by it gives the film's transmission; no window or contrast is applied here: THE
   preprocessing function (edge_runtime/preprocess.py) normalises intensity for every input, as
   the bundle's spec says (bundles made before normalisation get the transmission as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from . import geometry as geo
from .film_finder import FilmNotFound, Found, locate, working_copy
from .imageops import dilate

OUT_LONG_SIDE = 1024  # the rectified film's long side at most (far above any model's input: 256 px for the fracture map, 128 for the paper's CNN, 224 for the baselines)
INSET = 0.006  # share of each side dropped after rectifying: the film's edge, not its content
PROFILE_OFFSETS = (0.015, 0.025, 0.035)  # where the lightbox is sampled outside each edge, x film size
GRID = 48  # the light correction is computed on this grid over the film, then upsampled

__all__ = ["Flattened", "FilmNotFound", "flatten_film"]


@dataclass
class Flattened:
    pixels: np.ndarray  # 2-D float32 transmission in [0, 1]: the radiograph, bone bright
    corners: np.ndarray  # (4, 2) film corners in the photo's original pixels: TL, TR, BR, BL
    film_short_side_px: float  # in the original photo's pixels
    film_share: float  # film area / photo area
    lightbox_level: float  # median of the bare lightbox beside the film, 0..1 as encoded
    cut_off: bool  # the film runs off the photo's edge
    raw_peak_share: float  # share of film pixels at the sensor's clip level (over-exposure, glare)
    glare_share: float  # share of film pixels brighter than the lightbox behind them
    edge_width: Optional[float] = None  # 10-90% width of the film's border step, share of its short side (camera blur)
    film_long_side_px: float = 0.0  # the longest side in the original photo's pixels
    off_lightbox: bool = False  # a side of the film has no lit lightbox beyond it: it hangs past the lightbox's edge
    notes: List[str] = field(default_factory=list)
    found: Optional[Found] = None


def _bilinear(img: np.ndarray, pts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Values of a 2-D array at float (x, y) points, and whether each point is inside it."""
    h, w = img.shape
    x, y = pts[..., 0], pts[..., 1]
    ok = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = x - x0, y - y0
    v = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy)
         + img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)
    return v, ok


def _quadratic_fit(g: np.ndarray, mask: np.ndarray):
    """Coefficients of a quadratic surface through g on mask (image coordinates); None if too few."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 50:
        return None
    if len(xs) > 8000:
        step = len(xs) // 8000
        xs, ys = xs[::step], ys[::step]
    vals = g[ys, xs]
    for _ in range(2):  # fingers and clips on the lightbox: drop the darkest fifth and refit
        basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1).astype(np.float64) / \
            np.array([1, g.shape[1], g.shape[0], g.shape[1] ** 2, g.shape[0] * g.shape[1], g.shape[0] ** 2])
        coef, *_ = np.linalg.lstsq(basis, vals, rcond=None)
        resid = vals - basis @ coef
        keep = resid > np.percentile(resid, 20)
        xs, ys, vals = xs[keep], ys[keep], vals[keep]
    return coef, g.shape


def _eval_quadratic(fit, pts: np.ndarray) -> np.ndarray:
    coef, (h, w) = fit
    x, y = pts[..., 0], pts[..., 1]
    return (coef[0] + coef[1] * x / w + coef[2] * y / h + coef[3] * x * x / w ** 2 + coef[4] * x * y / (w * h)
            + coef[5] * y * y / h ** 2)


def _coons(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The surface on [0,1]^2 that matches four boundary curves; exact for anything that varies
    along one axis only (tubes) plus a bilinear gradient."""
    n = len(top)
    u = np.linspace(0, 1, n)[None, :]
    v = np.linspace(0, 1, n)[:, None]
    ruled_v = (1 - v) * top[None, :] + v * bottom[None, :]
    ruled_u = (1 - u) * left[:, None] + u * right[:, None]
    corners = ((1 - u) * (1 - v) * top[0] + u * (1 - v) * top[-1] + (1 - u) * v * bottom[0] + u * v * bottom[-1])
    return ruled_v + ruled_u - corners


def _side_ratio(gray: np.ndarray, fit, quad: np.ndarray, side: int, n: int, level: float) -> np.ndarray:
    """Lightbox brightness just outside one side, relative to the fitted surface, along the side
    (1 where the lightbox is not visible there: off the photo, a finger, the housing)."""
    a, d, nrm = geo.sides(quad)[side]
    size = max(geo.side_lengths(quad))
    t = np.linspace(0, 1, n)[:, None]
    ratios = []
    for off in PROFILE_OFFSETS:
        p = a + d * t + nrm * off * size
        v, ok = _bilinear(gray, p)
        f = _eval_quadratic(fit, p)
        r = v / np.maximum(f, 1e-3)
        ok &= (v > 0.75 * level) & (r > 0.7) & (r < 1.4)
        ratios.append(np.where(ok, r, np.nan))
    stack = np.array(ratios)
    good = np.isfinite(stack).any(axis=0)
    if good.mean() < 0.3:
        return np.ones(n)
    r = np.full(n, np.nan)
    r[good] = np.nanmedian(stack[:, good], axis=0)
    idx = np.arange(n)
    return np.interp(idx, idx[good], r[good])


def edge_width(gray: np.ndarray, quad: np.ndarray, level: float) -> Optional[float]:
    """How wide the film's own border is in the photo: the 10-90% width of the step from lightbox
    to film, median over profiles across the sides, as a share of the film's short side.

    The border of a film is a sharp step whatever the radiograph shows, so this measures the
    camera's blur (focus, shake) and not how soft the radiograph itself is. None when no side
    shows a clear step (dense film against dark housing everywhere)."""
    short = min(geo.side_lengths(quad))
    reach = max(4.0, 0.04 * short)
    steps = np.linspace(-reach, reach, int(4 * reach) + 1)  # quarter-pixel samples across the border
    widths = []
    for a, d, n in geo.sides(quad):
        t = np.linspace(0.15, 0.85, 24)
        pts = (a + d * t[:, None])[:, None, :] + steps[None, :, None] * n[None, None, :]
        prof, ok = _bilinear(gray, pts)  # (24, samples): inside -> outside
        for row, good in zip(prof, ok.all(axis=1)):
            k = max(2, len(row) // 6)
            lo, hi = float(np.median(row[:k])), float(np.median(row[-k:]))
            if not good or hi - lo < 0.2 * level:
                continue
            u = (row - lo) / (hi - lo)
            if u[:k].max() > 0.5 or u[-k:].min() < 0.5:
                continue  # a finger, a clip, a bone at the border: not a clean step
            x10 = steps[np.argmax(u >= 0.1)]
            x90 = steps[len(u) - 1 - np.argmax(u[::-1] <= 0.9)]
            widths.append(max(0.0, float(x90 - x10)))
    if len(widths) < 6:
        return None
    return float(np.median(widths)) / max(short, 1.0)


def _light_field(gray: np.ndarray, lit: np.ndarray, quad: np.ndarray, out_to_small: np.ndarray,
                 size: Tuple[int, int], level: float) -> np.ndarray:
    """The lightbox's brightness behind every pixel of the rectified film (oh, ow), estimated on
    the small working copy (`gray`, `lit`, `quad` in its pixels): light varies slowly."""
    ow, oh = size
    film = geo.fill_polygon(gray.shape, quad)
    ring = dilate(film, max(3, int(0.12 * max(geo.side_lengths(quad))))) & lit & ~film
    fit = _quadratic_fit(gray, ring)
    if fit is None:
        return np.full((oh, ow), max(level, 1e-3), np.float32)
    uu, vv = np.meshgrid(np.linspace(0, ow, GRID), np.linspace(0, oh, GRID))
    pts = geo.apply_homography(out_to_small, np.column_stack([uu.ravel(), vv.ravel()])).reshape(GRID, GRID, 2)
    base = _eval_quadratic(fit, pts)
    sides = [_side_ratio(gray, fit, quad, k, GRID, level) for k in range(4)]
    top, right, bottom, left = sides[0], sides[1], sides[2][::-1], sides[3][::-1]
    light = np.clip(base * _coons(top, bottom, left, right), 0.02, None).astype(np.float32)
    return np.asarray(Image.fromarray(light).resize((ow, oh), Image.Resampling.BILINEAR), np.float32)


def flatten_film(photo: Image.Image, out_long_side: int = OUT_LONG_SIDE,
                 original_size: Optional[Tuple[int, int]] = None,
                 small: Optional[Tuple[np.ndarray, float]] = None) -> Flattened:
    """Locate the film in `photo` (RGB, as decoded), undo cast, light and perspective.

    Raises FilmNotFound. `original_size` is the photo's size as stored, when `photo` was reduced
    while decoding; reported sizes and corners are in those pixels. `small` is the finder's
    working copy when the caller already made it.
    """
    W, H = photo.size
    to_original = (original_size[0] / W) if original_size else 1.0
    small, s = small if small is not None else working_copy(photo)
    found = locate(small, s)
    gray_small = small @ np.array([0.299, 0.587, 0.114], np.float32)
    near = dilate(found.mask, max(3, int(0.06 * max(small.shape)))) & found.lit & ~found.mask
    if near.sum() < 20:
        near = found.lit
    ref = np.median(small[near], axis=0)
    gains = float(ref.mean()) / np.maximum(ref, 1e-3)
    level = float(np.median(gray_small[near]))

    quad = found.quad / s  # in the decoded photo's pixels
    fw, fh = geo.side_lengths(quad)
    k = min(1.0, out_long_side / max(fw, fh))
    ow, oh = max(16, round(fw * k)), max(16, round(fh * k))
    # Gray with the lightbox's white balance; reduce first when the film is far larger than the
    # output (Pillow's perspective warp samples without averaging).
    gains = gains / (0.299 * gains[0] + 0.587 * gains[1] + 0.114 * gains[2])  # the lightbox keeps its gray level
    wts = np.array([0.299, 0.587, 0.114]) * gains
    gray_img = photo.convert("L", matrix=(float(wts[0]), float(wts[1]), float(wts[2]), 0.0))
    factor = int(max(fw, fh) / max(ow, oh) / 1.5)
    if factor >= 2:
        gray_img = gray_img.reduce(factor)
        quad_g = quad / factor
    else:
        factor, quad_g = 1, quad
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], float)
    out_to_photo = geo.homography_from_points(dst, quad_g)
    warped = np.asarray(gray_img.transform((ow, oh), Image.Transform.PERSPECTIVE, geo.pil_perspective(out_to_photo),
                                           Image.Resampling.BILINEAR), np.float32) / 255.0
    balanced_small = (small * gains.astype(np.float32)[None, None, :]) @ np.array([0.299, 0.587, 0.114], np.float32)
    out_to_small = geo.homography_from_points(dst, found.quad)
    light = _light_field(balanced_small, found.lit, found.quad, out_to_small, (ow, oh), level)
    width = edge_width(np.asarray(gray_img, np.float32) / 255.0, quad_g, level)
    transmission = warped / light
    cy, cx = int(round(oh * INSET)), int(round(ow * INSET))
    transmission = transmission[cy:oh - cy, cx:ow - cx]
    raw = warped[cy:oh - cy, cx:ow - cx]

    notes = []
    if max(abs(g - 1) for g in gains) > 0.05:
        notes.append("colour cast corrected")
    if found.other_films:
        notes.append(f"{found.other_films + 1} films in the photo: read the one nearest the centre")
    corners = quad * to_original
    sides = geo.side_lengths(corners)
    short = min(sides)
    return Flattened(
        pixels=np.clip(transmission, 0.0, 1.0).astype(np.float32), corners=corners, film_short_side_px=short,
        film_long_side_px=max(sides),
        film_share=float(found.mask.mean()), lightbox_level=level, cut_off=found.cut_off,
        off_lightbox=bool(found.unlit_sides),
        raw_peak_share=float((raw >= 0.985).mean()), glare_share=float((transmission > 1.03).mean()),
        edge_width=width, notes=notes, found=found)
