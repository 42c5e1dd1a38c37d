"""Plane geometry for the film reader, in numpy: homographies, convex hulls, robust lines, quads.

The device has numpy and Pillow only (no OpenCV, no SciPy), so the few primitives a document
scanner needs are written here, each small enough to test on its own.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src, from four or more point pairs (least squares, h33 = 1)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    h, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, float)
    p = np.column_stack([pts, np.ones(len(pts))]) @ np.asarray(H, float).T
    return p[:, :2] / p[:, 2:3]


def pil_perspective(out_to_in: np.ndarray) -> Tuple[float, ...]:
    """Pillow's PERSPECTIVE coefficients (output pixel -> input pixel) from a 3x3 matrix."""
    m = np.asarray(out_to_in, float)
    return tuple((m / m[2, 2]).reshape(-1)[:8])


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull (in image coordinates, y down) by Andrew's monotone chain."""
    pts = sorted(set(map(tuple, np.asarray(points, float).tolist())))
    if len(pts) < 3:
        return np.array(pts, float)

    def half(seq):
        out: List[Tuple[float, float]] = []
        for p in seq:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1], float)


def polygon_area(poly: np.ndarray) -> float:
    x, y = np.asarray(poly, float).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def simplify_to_quad(hull: np.ndarray) -> np.ndarray:
    """Drop the hull vertex whose removal loses the least area until four remain (Visvalingam)."""
    poly = [tuple(map(float, p)) for p in hull]

    def loss(i: int) -> float:
        (ax, ay), (bx, by), (cx, cy) = poly[i - 1], poly[i], poly[(i + 1) % len(poly)]
        return abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))

    while len(poly) > 4:
        poly.pop(min(range(len(poly)), key=loss))
    return np.array(poly)


def fit_line(points: np.ndarray) -> Tuple[np.ndarray, float]:
    """Total least squares: unit normal n and offset c with n . p = c."""
    pts = np.asarray(points, float)
    centre = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    n = vt[-1]
    return n, float(n @ centre)


def robust_line(points: np.ndarray, outward: np.ndarray, keep: float = 0.6, rounds: int = 3) -> Tuple[np.ndarray, float]:
    """A film edge from boundary points that fingers, clips and bites disturb.

    Each round refits on the points nearest the current line, dropping the worst (1 - keep) by
    distance. `outward` only orients the normal, so callers can tell inside from outside.
    """
    pts = np.asarray(points, float)
    n, c = fit_line(pts)
    for _ in range(rounds):
        d = np.abs(pts @ n - c)
        k = max(2, int(len(pts) * keep))
        n, c = fit_line(pts[np.argsort(d, kind="stable")[:k]])
    if n @ outward < 0:
        n, c = -n, -c
    return n, c


def intersect(l1: Tuple[np.ndarray, float], l2: Tuple[np.ndarray, float]) -> np.ndarray:
    (n1, c1), (n2, c2) = l1, l2
    a = np.array([n1, n2])
    if abs(np.linalg.det(a)) < 1e-9:
        raise np.linalg.LinAlgError("parallel lines")
    return np.linalg.solve(a, np.array([c1, c2]))


def order_quad(quad: np.ndarray) -> np.ndarray:
    """Corners as TL, TR, BR, BL of the rectangle nearest the photo's own axes.

    The film may be turned by any angle; of its four rotations, the one whose first edge is
    closest to the photo's x axis is taken. With a bundle whose views are dihedral (the runtime
    averages over the film's eight orientations) the answer does not depend on this choice,
    only the kept picture does.
    """
    q = np.asarray(quad, float)
    centre = q.mean(axis=0)
    ang = np.arctan2(q[:, 1] - centre[1], q[:, 0] - centre[0])
    q = q[np.argsort(ang, kind="stable")]  # clockwise on screen (y down): increasing angle
    best, best_i = None, 0
    for i in range(4):
        r = np.roll(q, -i, axis=0)
        top = r[1] - r[0]
        score = abs(np.arctan2(top[1], top[0]))
        if best is None or score < best:
            best, best_i = score, i
    return np.roll(q, -best_i, axis=0)


def film_shaped(quad: np.ndarray, min_ratio: float = 0.5, angles: Tuple[float, float] = (45.0, 135.0)) -> bool:
    """Could this quadrilateral be a rectangle seen in perspective? Opposite sides within a factor
    of two, every corner between 45 and 135 degrees (a phone tilted 30 degrees stays far inside)."""
    q = np.asarray(quad, float)
    sides = [float(np.linalg.norm(q[(i + 1) % 4] - q[i])) for i in range(4)]
    if min(sides) <= 0:
        return False
    for i in range(2):
        a, b = sides[i], sides[i + 2]
        if min(a, b) < min_ratio * max(a, b):
            return False
    for i in range(4):
        u, v = q[i - 1] - q[i], q[(i + 1) % 4] - q[i]
        ang = np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1)))
        if not angles[0] <= ang <= angles[1]:
            return False
    return True


def sides(quad: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(start corner, edge vector, unit outward normal) for each of a quad's four sides: what every
    measurement across the film's border samples along."""
    centre = quad.mean(axis=0)
    out = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        d = b - a
        n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) or 1.0)
        out.append((a, d, -n if n @ (a - centre) < 0 else n))
    return out


def side_lengths(quad: np.ndarray) -> Tuple[float, float]:
    """(mean width, mean height) of a TL, TR, BR, BL quad."""
    q = np.asarray(quad, float)
    w = (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2
    h = (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2
    return float(w), float(h)


def label_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """4-connected components of a boolean image: (labels with 0 = background, count).

    Run-length union-find: rows become runs, runs that overlap a run in the row above are joined.
    Fast enough in Python at the reader's working size (a few hundred pixels a side).
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(diff == 1)
    ends_r, ends_c = np.nonzero(diff == -1)
    n = len(starts_r)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(starts_r, np.arange(h + 1))
    for r in range(1, h):
        a0, a1 = row_first[r - 1], row_first[r]
        b1 = row_first[r + 1]
        i = a0
        for j in range(a1, b1):
            s, e = starts_c[j], ends_c[j]
            while i < a1 and ends_c[i] <= s:
                i += 1
            k = i
            while k < a1 and starts_c[k] < e:
                ri, rj = find(k), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
                k += 1
    roots = np.array([find(i) for i in range(n)], int)
    uniq, lab = np.unique(roots, return_inverse=True)
    labels = np.zeros((h, w), np.int32)
    for j in range(n):
        labels[starts_r[j], starts_c[j]:ends_c[j]] = lab[j] + 1
    return labels, len(uniq)


def component_areas(labels: np.ndarray, count: int) -> List[Tuple[int, int]]:
    """(label, area) of each component."""
    area = np.bincount(labels.ravel(), minlength=count + 1)
    return [(k, int(area[k])) for k in range(1, count + 1) if area[k]]


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """(x, y) of mask pixels with a 4-neighbour outside the mask."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    ys, xs = np.nonzero(m & ~inner)
    return np.column_stack([xs, ys]).astype(float)


def row_extremes(mask: np.ndarray) -> np.ndarray:
    """Leftmost and rightmost pixel of every row: enough points for the convex hull."""
    m = np.asarray(mask, bool)
    rows = np.nonzero(m.any(axis=1))[0]
    if rows.size == 0:
        return np.zeros((0, 2))
    sub = m[rows]
    left = sub.argmax(axis=1)
    right = m.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    return np.concatenate([np.column_stack([left, rows]), np.column_stack([right, rows])]).astype(float)


def fill_polygon(shape: Tuple[int, int], poly: Sequence[Sequence[float]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in poly], fill=255)
    return np.asarray(img) > 127
