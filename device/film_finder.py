"""Where is the film in a photo? Its four corners, from a small copy of the photo.

A film on a lightbox is the large, roughly quadrilateral region that is darker than the lit panel
and mostly bordered by it. The room, the lightbox housing, a wall or a window may surround the
panel, so nothing is assumed about the photo's border. For each of a few brightness thresholds:

1. lit = pixels brighter than the threshold (the bare lightbox, and the film's clearest parts);
2. the panel = the convex hull of the large lit regions (together, and each on its own), so a
   film overhanging the panel's edge, or dense film touching it, is still inside;
3. candidates = the unlit regions inside the panel, small holes filled (glare, bright bone),
   pieces of one film that a bone cut apart joined again;
4. each candidate is checked (a quadrilateral fits it, lit lightbox borders most of its outline,
   that lightbox is among the brightest things in the photo and brighter than the film) and
   scored by the fit, the lit border and the step in brightness across its outline; of
   candidates that overlap the best scored is kept, and of distinct films (two side by side)
   the one nearest the photo's centre is read.

Each candidate's quadrilateral comes from a robust line fit to each side of its outline
(fingers and clips on an edge are outliers); the corners are where the lines meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from . import geometry as geo
from .imageops import box_mean, dilate, erode

WORK_SIDE = 384  # the finder's working size: long side, px
MIN_FILM_SHARE = 0.02  # of the photo, at the finder's working size
MAX_HOLE_SHARE = 0.08  # bright regions inside a film smaller than this share of the photo are filled
MIN_QUADNESS = 0.82  # candidate area / fitted quadrilateral area
MIN_ENCLOSURE = 0.6  # share of the candidate's outline that borders lit lightbox (overhang: 3 sides of 4)
MIN_RING_LEVEL = 0.6  # the lightbox beside a film, relative to the photo's brightest (99.5th percentile)
MAX_FILM_LEVEL = 0.97  # film passes less light than the lightbox: its 75th percentile over the ring's level


class FilmNotFound(ValueError):
    """No film could be located (device/quality.py words the reason for the technician)."""


@dataclass
class Found:
    quad: np.ndarray  # (4, 2) TL, TR, BR, BL in working-image pixels (x, y)
    scale: float  # working image px per photo px
    mask: np.ndarray  # the film candidate, working size
    lit: np.ndarray  # bare lightbox, working size
    threshold: int  # which of the brightness thresholds (see _lit_masks) found it
    score: float
    cut_off: bool = False  # a corner at or beyond the photo's edge
    unlit_sides: List[int] = field(default_factory=list)  # sides (of quad) with no lit lightbox beyond them: overhang
    other_films: int = 0  # further film-like candidates (e.g. a second film beside this one)
    enclosure: float = 0.0  # share of the outline with lit lightbox just outside


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _morph(mask: np.ndarray, size: int, op: str) -> np.ndarray:
    return dilate(mask, size // 2) if op == "dilate" else erode(mask, size // 2)


def _open_close(mask: np.ndarray, size: int = 3) -> np.ndarray:
    m = _morph(_morph(mask, size, "erode"), size, "dilate")
    return _morph(_morph(m, size, "dilate"), size, "erode")


def _fill_small_holes(mask: np.ndarray, max_share: float) -> np.ndarray:
    """Fill holes (bright bone, a glare spot) smaller than `max_share` of the image; a frame (the
    lightbox housing around a lit panel) keeps its large hole and stays a frame."""
    labels, n = geo.label_components(~mask)
    if n == 0:
        return mask
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    small = [k for k, area in geo.component_areas(labels, n) if k not in border and area <= max_share * mask.size]
    return mask | np.isin(labels, small) if small else mask


def otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def _quad_from_mask(mask: np.ndarray) -> Optional[np.ndarray]:
    pts = geo.row_extremes(mask)
    if len(pts) < 8:
        return None
    hull = geo.convex_hull(pts)
    if len(hull) < 4:
        return None
    return geo.simplify_to_quad(hull)


def _refine(quad: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each side re-fitted to the outline points nearest it; corners where the lines meet."""
    q = geo.order_quad(quad)
    pts = geo.boundary_points(mask)
    size = max(geo.side_lengths(q))
    lines = []
    for a, d, n in geo.sides(q):
        length = float(np.linalg.norm(d)) or 1.0
        t = (pts - a) @ d / length ** 2
        dist = np.abs((pts - a) @ n)
        near = pts[(t > 0.08) & (t < 0.92) & (dist < 0.06 * size)]  # corners are rounded by morphology
        if len(near) < 10:
            lines.append((n, float(n @ a)))
            continue
        lines.append(geo.robust_line(near, n))
    try:
        corners = np.array([geo.intersect(lines[i - 1], lines[i]) for i in range(4)])
    except np.linalg.LinAlgError:
        return q
    if not np.isfinite(corners).all() or np.abs(corners - q).max() > 0.2 * size:
        return q
    return corners


def _outside_lit(quad: np.ndarray, lit: np.ndarray, shape: Tuple[int, int],
                 g: Optional[np.ndarray] = None) -> Tuple[List[float], float]:
    """For each side: share of points just outside it that are lit lightbox (NaN: off the photo);
    and the median brightness of those lit points in `g` (NaN without g)."""
    h, w = shape
    size = max(geo.side_lengths(quad))
    shares, values = [], []
    for a, d, n in geo.sides(quad):
        t = np.linspace(0.1, 0.9, 24)[:, None]
        hits, total = 0, 0
        for off in (0.015, 0.03):  # a film may nearly fill its panel: the lightbox margin is narrow
            p = a + d * t + n * off * size
            ok = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
            xi, yi = p[ok, 0].astype(int), p[ok, 1].astype(int)
            on = lit[yi, xi]
            hits += int(on.sum())
            total += int(ok.sum())
            if g is not None:
                values.extend(g[yi[on], xi[on]].tolist())
        shares.append(hits / total if total else float("nan"))
    return shares, (float(np.median(values)) if values else float("nan"))


def _ring_level(g: np.ndarray, region: np.ndarray, lit: np.ndarray, width: int) -> float:
    ring = _morph(region, 2 * width + 1, "dilate") & ~region & lit
    return float(np.median(g[ring])) if ring.sum() > 20 else float(np.percentile(g, 99))


def _bare_gap(g: np.ndarray, a: np.ndarray, b: np.ndarray, strip: np.ndarray, level: float) -> bool:
    """Is there a run of bare-lightbox brightness between pieces a and b on most lines joining them?

    Film, even its clearest base, passes visibly less light than the lightbox beside it: bone
    between two pieces of one film stays below the lightbox's level, a gap between two films not.
    """
    ca = np.argwhere(a).mean(axis=0)[::-1]
    cb = np.argwhere(b).mean(axis=0)[::-1]
    d = cb - ca
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) or 1.0)
    spread = 0.25 * np.sqrt(min(a.sum(), b.sum()))
    h, w = g.shape
    t = np.linspace(0, 1, max(32, int(np.linalg.norm(d))))[:, None]
    crossings = 0
    offsets = np.linspace(-spread, spread, 7)
    for off in offsets:
        p = ca + d * t + n * off
        ok = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
        xi, yi = p[ok, 0].astype(int), p[ok, 1].astype(int)
        bright = (g[yi, xi] >= 0.93 * level) & strip[yi, xi]
        run = best = 0
        for v in bright:
            run = run + 1 if v else 0
            best = max(best, run)
        crossings += best >= 2
    return crossings > len(offsets) // 2


def _nested(a: np.ndarray, b: np.ndarray) -> bool:
    """Does either region's convex hull hold the other's centre (a frame around a film)?"""
    for outer, inner in ((a, b), (b, a)):
        cy, cx = np.argwhere(inner).mean(axis=0)
        hull = geo.convex_hull(geo.row_extremes(outer))
        if len(hull) >= 3 and geo.fill_polygon(outer.shape, hull)[int(cy), int(cx)]:
            return True
    return False


def _merge_split_film(g: np.ndarray, lit: np.ndarray, cands: List[np.ndarray]) -> List[np.ndarray]:
    """Join pieces of one film that a bright bone running edge to edge cut apart.

    Two pieces whose joint convex hull is a clean quadrilateral are one film unless the strip
    between them is bare lightbox (two films side by side).
    """
    h, w = g.shape
    cands = sorted(cands, key=lambda m: -int(m.sum()))
    merged = True
    while merged and len(cands) > 1:
        merged = False
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                a, b = cands[i], cands[j]
                if _nested(a, b):
                    continue
                union = a | b
                hull = geo.convex_hull(geo.row_extremes(union))
                if len(hull) < 4:
                    continue
                whole = geo.fill_polygon(g.shape, hull)
                if union.sum() < 0.6 * whole.sum():
                    continue
                quad = geo.simplify_to_quad(hull)
                if geo.polygon_area(quad) < 0.95 * geo.polygon_area(hull):
                    continue
                strip = whole & ~union
                if strip.sum() < 10:
                    continue
                level = _ring_level(g, whole, lit, max(2, round(0.02 * max(h, w))))
                if _bare_gap(g, a, b, strip, level):
                    continue  # bare lightbox between them: two films
                cands = [m for k, m in enumerate(cands) if k not in (i, j)] + [whole]
                merged = True
                break
            if merged:
                break
    return cands


def _candidates(g: np.ndarray, lit: np.ndarray):
    """(lit lightbox, unlit regions inside the convex hull of each large lit region)."""
    h, w = g.shape
    lit = _open_close(lit)
    labels, n = geo.label_components(lit)
    big = [k for k, area in geo.component_areas(labels, n) if area >= 0.004 * h * w]
    if not big:
        return lit, []
    lit_big = np.isin(labels, big)
    cands: List[np.ndarray] = []
    # The panel: the hull of all lit regions (the frame may cut the lightbox around the film into
    # pieces), and of each on its own (a bright patch of room must not stretch the panel).
    groups = [lit_big] + ([labels == k for k in big] if len(big) > 1 else [])
    for region in groups:
        panel = geo.fill_polygon(g.shape, geo.convex_hull(geo.row_extremes(region)))
        unlit = _fill_small_holes(_open_close(panel & ~lit_big), MAX_HOLE_SHARE)
        clabels, cn = geo.label_components(unlit)
        found = [clabels == j for j, area in geo.component_areas(clabels, cn) if area >= 0.25 * MIN_FILM_SHARE * h * w]
        cands.extend(_merge_split_film(g, lit_big, found))
    return lit_big, [m for m in cands if m.sum() >= MIN_FILM_SHARE * h * w]


def edge_contrast(quad: np.ndarray, g: np.ndarray) -> float:
    """Brightness just outside the outline minus just inside (1.5% of the size either way),
    median per side, mean over the sides, over the photo's top brightness.

    A film on a lightbox has the lit lightbox outside every edge and film inside: a strong step
    all round. A panel seen against a brighter wall has the opposite step (housing outside,
    lightbox inside); a piece of film cut off by bone has a weak one where the bone bounds it.
    """
    h, w = g.shape
    size = max(geo.side_lengths(quad))
    top = max(float(np.percentile(g, 99.5)), 1e-3)
    sides = []
    for a, d, n in geo.sides(quad):
        t = np.linspace(0.1, 0.9, 24)[:, None]
        out = a + d * t + n * 0.015 * size
        inn = a + d * t - n * 0.015 * size
        ok = (out[:, 0] >= 0) & (out[:, 0] < w) & (out[:, 1] >= 0) & (out[:, 1] < h)
        if ok.sum() < 4:
            continue  # off the photo: no evidence either way
        vo = g[out[ok, 1].astype(int), out[ok, 0].astype(int)]
        vi = g[np.clip(inn[ok, 1].astype(int), 0, h - 1), np.clip(inn[ok, 0].astype(int), 0, w - 1)]
        sides.append(float(np.median(vo - vi)) / top)
    return float(np.mean(sides)) if sides else 0.0


def _distinct_films(valid: List[Found]) -> List[Found]:
    """The films among the candidates of every threshold: of candidates that overlap (the same
    film at several thresholds, a film and the panel around it, a film and a piece of it cut off
    by bone) the best scored is kept; what remains are distinct films."""
    areas = [float(f.mask.sum()) for f in valid]
    order = sorted(range(len(valid)), key=lambda k: -valid[k].score)
    kept: List[int] = []
    for k in order:
        if all((valid[k].mask & valid[j].mask).sum() < 0.5 * min(areas[k], areas[j]) for j in kept):
            kept.append(k)
    films = [valid[k] for k in kept]
    largest = max(float(f.mask.sum()) for f in films)
    return [f for f in films if f.mask.sum() >= 0.3 * largest]


def _illumination(g: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface through the lit pixels, evaluated everywhere."""
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    x, y = (xx / w - 0.5).ravel(), (yy / h - 0.5).ravel()
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    idx = np.flatnonzero(lit.ravel())
    if idx.size > 6000:
        idx = idx[:: idx.size // 6000]
    coef, *_ = np.linalg.lstsq(basis[idx], g.ravel()[idx], rcond=None)
    return np.clip(basis @ coef, 0.02, None).reshape(h, w).astype(np.float32)


def _lit_masks(g: np.ndarray):
    """Brightness thresholds to try: global ones, and ones relative to the lightbox's own
    (fitted, uneven) brightness; near that level, bone is no longer mistaken for lightbox."""
    top = float(np.percentile(g, 99.5))
    t0 = otsu(g)
    for t in sorted({round(t, 3) for t in (t0, 0.45 * top, 0.6 * top, 0.75 * top) if 0.02 < t < 0.99}):
        yield g > t
    rough = _open_close(g > t0)
    labels, n = geo.label_components(rough)
    stats = geo.component_areas(labels, n)
    if stats:
        k = max(stats, key=lambda s: s[1])[0]
        illum = _illumination(g, labels == k)
        for r in (0.9, 0.95):
            yield g > r * illum


def locate(rgb: np.ndarray, scale: float) -> Found:
    """Find the film in `rgb` (float (h, w, 3) in [0, 1], the photo at WORK_SIDE); raise FilmNotFound.

    `scale` is this image's size relative to the photo, recorded with the result.
    """
    g = box_mean(box_mean(_gray(rgb), 1, 0), 1, 1)
    h, w = g.shape
    top = float(np.percentile(g, 99.5))
    if top < 0.08:
        raise FilmNotFound("the photo is almost black")
    valid: List[Found] = []
    r_open = max(2, round(0.012 * max(h, w)))
    for thr, lit_raw in enumerate(_lit_masks(g)):
        lit, cands = _candidates(g, lit_raw)
        for m in cands:
            # Thin attachments (a dim strip of lightbox, a finger, a clip) would pull the hull's
            # corners; opening removes anything thinner than ~2.4% of the photo.
            m = _morph(_morph(m, 2 * r_open + 1, "erode"), 2 * r_open + 1, "dilate")
            if m.sum() < MIN_FILM_SHARE * h * w:
                continue
            quad = _quad_from_mask(m)
            if quad is None:
                continue
            quad = geo.order_quad(_refine(quad, m))  # sides refitted to the outline: exact corners
            if not geo.film_shaped(quad):
                continue  # a triangle or a sliver: a rectangle in perspective is neither
            q = geo.fill_polygon(g.shape, quad)
            iou = float((m & q).sum()) / max(float((m | q).sum()), 1.0)
            if iou < MIN_QUADNESS:
                continue
            shares, ring = _outside_lit(quad, lit, g.shape, g)
            enclosure = float(np.nanmean(shares)) if not np.isnan(shares).all() else 0.0
            framed = float(np.mean([0.5 if np.isnan(x) else x for x in shares]))  # a side off the photo: unknown
            if enclosure < MIN_ENCLOSURE or not ring >= MIN_RING_LEVEL * top:
                continue
            if np.percentile(g[m], 75) > MAX_FILM_LEVEL * ring:
                continue  # brighter than the "lightbox" around it: not a film on a lightbox
            # Of two readings of one film, prefer the one inside the photo: a narrow, dim lightbox
            # margin can let the film merge with the housing out to the photo's edge.
            inside = 0.7 if any(_off_frame(c, w, h, 0.006 * max(h, w)) for c in quad) else 1.0
            contrast = edge_contrast(quad, g)
            if contrast <= 0.05:
                continue
            valid.append(Found(quad, scale, m, lit, thr, iou * framed * inside * contrast, enclosure=enclosure))
    if not valid:
        raise FilmNotFound("no film-shaped region darker than a lit lightbox around it")
    films = _distinct_films(valid)

    def off_centre(f: Found) -> float:
        cy, cx = np.argwhere(f.mask).mean(axis=0)
        return float(np.hypot((cx - w / 2) / w, (cy - h / 2) / h))

    best = min(films, key=off_centre)
    best.other_films = len(films) - 1
    # Cut off: a corner of the fitted outline at or beyond the photo's edge. (The mask alone
    # would also count a finger that reaches the edge.)
    best.cut_off = any(_off_frame(c, w, h, 0.006 * max(h, w)) for c in best.quad)
    shares, _ = _outside_lit(best.quad, best.lit, g.shape)
    best.unlit_sides = [i for i, s in enumerate(shares) if not np.isnan(s) and s < 0.25]
    return best


def _off_frame(p: np.ndarray, w: int, h: int, margin: float) -> bool:
    return bool(p[0] < margin or p[1] < margin or p[0] > w - 1 - margin or p[1] > h - 1 - margin)


def working_copy(photo: Image.Image, side: int = WORK_SIDE) -> Tuple[np.ndarray, float]:
    """(float RGB at `side` px on the long side, its scale relative to `photo`)."""
    W, H = photo.size
    scale = side / max(W, H)
    small = photo.convert("RGB").resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0, scale
