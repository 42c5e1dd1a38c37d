"""The film reader's numpy geometry: each primitive against a hand-made answer."""

import numpy as np
import pytest

from device import geometry as geo
from device.imageops import dilate, erode, gaussian_blur


def _flood_labels(mask):
    """Brute-force 4-connected labelling to check the run-length union-find against."""
    h, w = mask.shape
    lab = np.zeros((h, w), int)
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not lab[y, x]:
                n += 1
                stack = [(y, x)]
                lab[y, x] = n
                while stack:
                    cy, cx = stack.pop()
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not lab[ny, nx]:
                            lab[ny, nx] = n
                            stack.append((ny, nx))
    return lab, n


@pytest.mark.parametrize("seed", range(5))
def test_connected_components_match_a_flood_fill(seed):
    mask = np.random.default_rng(seed).random((40, 57)) < 0.45
    labels, n = geo.label_components(mask)
    ref, m = _flood_labels(mask)
    assert n == m
    # the same partition: each reference component maps to exactly one label and back
    pairs = {(a, b) for a, b in zip(labels[mask], ref[mask])}
    assert len(pairs) == n and len({a for a, _ in pairs}) == n
    assert sorted(a for _, a in geo.component_areas(labels, n)) == sorted(np.bincount(ref[mask])[1:].tolist())


def test_homography_maps_the_points_it_was_made_from():
    src = np.array([[0, 0], [100, 0], [100, 60], [0, 60]], float)
    dst = np.array([[12, 7], [90, 15], [97, 80], [5, 70]], float)
    H = geo.homography_from_points(src, dst)
    np.testing.assert_allclose(geo.apply_homography(H, src), dst, atol=1e-6)


def test_hull_and_quad_of_a_rotated_rectangle_with_a_bump():
    c, s = np.cos(0.6), np.sin(0.6)
    rect = np.array([[-40, -25], [40, -25], [40, 25], [-40, 25]]) @ np.array([[c, s], [-s, c]]) + 100
    mask = geo.fill_polygon((200, 200), rect)
    mask[95:105, 100:150] |= True  # a finger reaching out of one side... thin enough to drop
    hull = geo.convex_hull(geo.row_extremes(mask))
    quad = geo.order_quad(geo.simplify_to_quad(hull))
    assert len(quad) == 4 and geo.polygon_area(quad) > 0.9 * geo.polygon_area(rect)


def test_robust_line_ignores_a_finger_on_the_edge():
    x = np.linspace(0, 100, 101)
    pts = np.column_stack([x, 0.2 * x + 5])
    pts[40:55, 1] += 12  # an outward bump
    n, c = geo.robust_line(pts, outward=np.array([0.0, 1.0]))
    # the line y = 0.2 x + 5: n . p = c for its points
    on = np.column_stack([x, 0.2 * x + 5])
    assert np.abs(on @ n - c).max() < 0.5 and n[1] > 0


def test_order_quad_starts_top_left_and_goes_clockwise():
    q = np.array([[10, 90], [90, 90], [90, 10], [10, 10]], float)  # any order in
    out = geo.order_quad(q)
    np.testing.assert_allclose(out, [[10, 10], [90, 10], [90, 90], [10, 90]])


def test_morphology_and_blur():
    m = np.zeros((30, 30), bool)
    m[10:20, 10:20] = True
    assert dilate(m, 2).sum() == 14 * 14 and erode(m, 2).sum() == 6 * 6
    assert dilate(m, 5).sum() == 20 * 20 and erode(m, 5).sum() == 0  # the box-sum path (r > 3)
    img = np.zeros((41, 41), np.float32)
    img[20, 20] = 1.0
    b = gaussian_blur(img, 3.0)
    assert b.sum() == pytest.approx(1.0, rel=1e-4) and b[20, 20] == b.max()
    ys = np.arange(41) - 20
    sigma = np.sqrt((b.sum(axis=1) * ys ** 2).sum())
    assert sigma == pytest.approx(3.0, rel=0.2)  # three equal boxes: sigma to the nearest box width
