"""Training augmentation in numpy and Pillow: the paper's geometry plus what photos of film do.

Applied to the resized, not yet normalised training image (edge_runtime.preprocess.resize_input);
THE intensity normalisation follows, exactly as on the device, so the model learns on the same
kind of input it will be given. Validation and test images are never augmented.

Photometric ranges are drawn from what a phone photo of a film on a lightbox does to the gray
levels, each wide on purpose (none is tuned to the film simulator in device/simulate.py, which
the film-agreement measurement uses): an unknown film curve and camera tone curve (gamma,
contrast), film-base fog, light left uneven after flattening (vignetting, gradient), sensor noise,
focus blur, JPEG recompression and a small perspective error in the film's corners.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

# The paper's geometry.
ROTATION_DEGREES = 20.0
ZOOM = 0.2


@dataclass(frozen=True)
class Photometric:
    probability: float = 0.5  # share of training images that get the photo effects below
    gamma: Tuple[float, float] = (0.6, 1.7)  # log-uniform
    contrast: Tuple[float, float] = (0.6, 1.0)  # kept share of contrast about the mean
    fog: Tuple[float, float] = (0.0, 0.2)  # film-base fog lifts the blacks: fog + (1 - fog) x
    vignetting: Tuple[float, float] = (0.0, 0.4)  # radial fall-off at the corners, random centre
    gradient: Tuple[float, float] = (0.0, 0.3)  # linear light fall-off across the image
    noise: Tuple[float, float] = (0.0, 0.015)  # Gaussian sigma (a photo's grain, averaged down to the input size)
    blur: Tuple[float, float] = (0.0, 0.8)  # Gaussian radius in model-input pixels
    jpeg_probability: float = 0.5
    jpeg_quality: Tuple[int, int] = (50, 95)
    perspective: float = 0.05  # corner jitter, share of the side

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PHOTOMETRIC = Photometric()


def describe(dihedral: bool, photo: bool = True) -> Dict:
    """What run.json records about augmentation."""
    return {"rotation_degrees": ROTATION_DEGREES, "zoom": ZOOM, "horizontal_flip": True,
            "dihedral": dihedral, "photometric": PHOTOMETRIC.to_dict() if photo else None,
            "applied_to": "training split only, on the fly, before THE intensity normalisation"}


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src from four point pairs."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    h = np.linalg.solve(np.array(rows, float), np.array(rhs, float))
    return np.append(h, 1.0).reshape(3, 3)


def geometry(x: np.ndarray, rng: np.random.Generator, dihedral: bool, perspective: float) -> np.ndarray:
    """Rotation, zoom, a perspective error and flips, in one resampling (black outside the image)."""
    n = x.shape[0]
    c = n / 2.0
    ang = math.radians(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    zoom = rng.uniform(1 - ZOOM, 1 + ZOOM)
    ca, sa = math.cos(ang) / zoom, math.sin(ang) / zoom
    rot = np.array([[ca, -sa, c - ca * c + sa * c], [sa, ca, c - sa * c - ca * c], [0, 0, 1]])  # output -> input
    square = np.array([[0, 0], [n, 0], [n, n], [0, n]], float)
    jitter = _homography(square, square + rng.uniform(-perspective, perspective, (4, 2)) * n)
    m = rot @ jitter
    coeffs = tuple((m / m[2, 2]).reshape(-1)[:8])
    out = np.asarray(Image.fromarray(np.ascontiguousarray(x, np.float32)).transform(
        (n, n), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=0.0), np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if dihedral:
        out = np.rot90(out, int(rng.integers(4)))
    return np.ascontiguousarray(out)


def photometric(x: np.ndarray, rng: np.random.Generator, p: Photometric = PHOTOMETRIC) -> np.ndarray:
    """What a photographed, flattened film does to the gray levels of a radiograph in [0, 1]."""
    n = x.shape[0]
    u = lambda r: rng.uniform(*r)  # noqa: E731
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 - u(p.gradient) * (np.cos(ang) * xx + np.sin(ang) * yy + 0.5)
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    light *= 1 - u(p.vignetting) * ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5
    fog = u(p.fog)
    y = (fog + (1 - fog) * np.clip(x, 0, 1)) * light
    y = np.clip(y, 0, 1) ** math.exp(rng.uniform(math.log(p.gamma[0]), math.log(p.gamma[1])))
    m = float(y.mean())
    y = m + u(p.contrast) * (y - m)
    radius = u(p.blur)
    if radius > 0.2:
        y = np.asarray(Image.fromarray(np.clip(y * 255, 0, 255).astype(np.uint8))
                       .filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
    y = y + rng.normal(0, u(p.noise), y.shape).astype(np.float32)
    if rng.random() < p.jpeg_probability:
        buf = io.BytesIO()
        Image.fromarray(np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=int(rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1)))
        y = np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255.0
    return np.clip(y, 0, 1).astype(np.float32)


def augment(x: np.ndarray, rng: np.random.Generator, dihedral: bool, photo: bool = True) -> np.ndarray:
    """One training image (size, size), resized but not normalised -> its augmented copy."""
    out = geometry(x, rng, dihedral, PHOTOMETRIC.perspective if photo else 0.0)
    if photo and rng.random() < PHOTOMETRIC.probability:
        out = photometric(out, rng)
    return out


# ---------------------------------------------------------------- fracture-map training: boxes move too

# Wider than the paper's geometry: a fracture map must hold at any scale a film is photographed or
# cropped at, and box-free crops of real radiographs are what teaches it real anatomy is not a
# fracture (train/map_fit.py).
MAP_ROTATION_DEGREES = 20.0
MAP_ZOOM = (0.8, 1.8)  # log-uniform; above 1 crops in
MAP_SHIFT = 0.2  # share of the side, each axis
# A close crop centred on a box (train/map_fit.py, --close-on-box): the box's centre lands this far
# from the crop's centre at most (a share of the crop's side along each of the crop's own axes,
# before its rotation turns them), so a fracture is not always "the middle of a close crop".
CENTRE_JITTER = 0.3


def describe_map(photo: bool = True, acquisition_effects: bool = False) -> Dict:
    """What run.json records about a fracture-map model's augmentation."""
    return {"rotation_degrees": MAP_ROTATION_DEGREES, "zoom": list(MAP_ZOOM), "shift": MAP_SHIFT,
            "flips_and_quarter_turns": True, "boxes": "moved with the pixels (corners mapped, box around them)",
            "acquisition": ACQUISITION.to_dict() if acquisition_effects else None,
            "photometric": PHOTOMETRIC.to_dict() if photo else None,
            "applied_to": "training split only, on the fly, before THE intensity normalisation"}


def _project(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = np.c_[pts, np.ones(len(pts))] @ m.T
    return h[:, :2] / h[:, 2:3]


def map_geometry(x: np.ndarray, boxes, rng: np.random.Generator, perspective: float,
                 zoom_range: Tuple[float, float] = MAP_ZOOM, shift: float = MAP_SHIFT,
                 centre: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, list]:
    """(augmented image, its boxes): rotation, zoom (crops in), shift, a perspective error, a mirror
    and a quarter turn in one resampling; each pixel box (x0, y0, x1, y1) becomes the box around
    its four mapped corners. `centre` (input pixels): the output's centre shows that point, give or
    take CENTRE_JITTER of the crop's side, in place of a random shift."""
    n = x.shape[0]
    c = n / 2.0
    ang = math.radians(rng.uniform(-MAP_ROTATION_DEGREES, MAP_ROTATION_DEGREES))
    zoom = math.exp(rng.uniform(math.log(zoom_range[0]), math.log(zoom_range[1])))
    tx, ty = rng.uniform(-shift, shift, 2) * n
    if centre is not None:  # drawn after the usual draws, so runs without it draw what they always did
        jx, jy = rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2) * n / zoom
        tx, ty = centre[0] + jx - c, centre[1] + jy - c
    ca, sa = math.cos(ang) / zoom, math.sin(ang) / zoom
    rot = np.array([[ca, -sa, c - ca * c + sa * c + tx], [sa, ca, c - sa * c - ca * c + ty], [0, 0, 1]])
    square = np.array([[0, 0], [n, 0], [n, n], [0, n]], float)
    jitter = _homography(square, square + rng.uniform(-perspective, perspective, (4, 2)) * n)
    m = rot @ jitter  # output -> input
    coeffs = tuple((m / m[2, 2]).reshape(-1)[:8])
    out = np.asarray(Image.fromarray(np.ascontiguousarray(x, np.float32)).transform(
        (n, n), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=0.0), np.float32)
    inv = np.linalg.inv(m)
    moved = []
    for x0, y0, x1, y1 in boxes:
        pts = _project(inv, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float))
        moved.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    if rng.random() < 0.5:  # mirror: x -> n - x
        out = out[:, ::-1]
        moved = [[n - b[2], b[1], n - b[0], b[3]] for b in moved]
    for _ in range(int(rng.integers(4))):  # np.rot90: (x, y) -> (y, n - x)
        out = np.rot90(out)
        moved = [[b[1], n - b[2], b[3], n - b[0]] for b in moved]
    return np.ascontiguousarray(out), [tuple(float(v) for v in b) for b in moved]


@dataclass(frozen=True)
class Acquisition:
    """What another hospital's X-ray system does to a radiograph before anyone photographs it:
    its processing (local histogram equalisation, a tone curve, unsharp masking) and what it burns
    in (collimation bands, lead markers). Measured on the reference map without them: strong
    unsharp masking lost 18 of 44 detected real fractures, equalisation or clear bands 18-21%, and
    the out-of-scope gate refused 24-58% of such radiographs (docs/results.md). The ranges
    here stay apart from those measured with (full global equalisation, unsharp radius 4 px at 250%,
    bands of 12-18% at top and bottom, text labels), so the measurement is of generalisation."""
    probability: float = 0.4  # share of training images that get one or two of the effects below
    clahe_grid: Tuple[int, int] = (3, 8)
    clahe_clip: Tuple[float, float] = (1.5, 4.0)
    curve_knots: float = 0.25  # a monotone tone curve: two inner knots moved up to this far
    unsharp_radius: Tuple[float, float] = (0.7, 3.0)  # model-input pixels
    unsharp_amount: Tuple[float, float] = (0.3, 2.0)
    band_width: Tuple[float, float] = (0.02, 0.11)  # share of the side, 1-3 sides; never over a fracture box
    marker_side: Tuple[float, float] = (0.02, 0.08)  # 1-4 bright blocks (lead markers); never over a box

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


ACQUISITION = Acquisition()
_ACQUISITION_OPS = ("clahe", "curve", "unsharp", "bands", "markers")


def _clear_of(rect, boxes) -> bool:
    x0, y0, x1, y1 = rect
    return all(x1 <= b[0] or b[2] <= x0 or y1 <= b[1] or b[3] <= y0 for b in boxes)


def acquisition(x: np.ndarray, boxes, rng: np.random.Generator, a: Acquisition = ACQUISITION) -> np.ndarray:
    """One or two of another system's processing steps and burned-in marks on an image in [0, 1];
    a band or marker that would cover a fracture box is left out, so the targets stay true."""
    from edge_runtime.preprocess import clahe

    n = x.shape[0]
    y = np.clip(x, 0, 1).astype(np.float32)
    for op in rng.permutation(_ACQUISITION_OPS)[: int(rng.integers(1, 3))]:
        if op == "clahe":
            y = clahe(y, int(rng.integers(a.clahe_grid[0], a.clahe_grid[1] + 1)), rng.uniform(*a.clahe_clip))
        elif op == "curve":
            k = np.clip(np.array([1 / 3, 2 / 3]) + rng.uniform(-a.curve_knots, a.curve_knots, 2), 0.05, 0.95)
            y = np.interp(y, [0, 1 / 3, 2 / 3, 1], [0, *np.sort(k), 1]).astype(np.float32)
        elif op == "unsharp":
            blurred = np.asarray(Image.fromarray(np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(rng.uniform(*a.unsharp_radius))), np.float32) / 255.0
            y = np.clip(y + rng.uniform(*a.unsharp_amount) * (y - blurred), 0, 1)
        elif op == "bands":
            level = float(rng.choice([1.0, 0.0, rng.uniform(0.5, 1.0)]))
            for side in rng.permutation(4)[: int(rng.integers(1, 4))]:
                w = int(round(n * rng.uniform(*a.band_width)))
                rect = [(0, 0, n, w), (0, n - w, n, n), (0, 0, w, n), (n - w, 0, n, n)][side]
                if w and _clear_of(rect, boxes):
                    y[rect[1]:rect[3], rect[0]:rect[2]] = level
        elif op == "markers":
            for _ in range(int(rng.integers(1, 5))):
                s = max(2, int(round(n * rng.uniform(*a.marker_side))))
                x0, y0 = (int(v) for v in rng.integers(0, n - s, 2))
                rect = (x0, y0, x0 + s, y0 + int(s * rng.uniform(1.0, 1.6)))
                if _clear_of(rect, boxes):
                    y[rect[1]:rect[3], rect[0]:rect[2]] = rng.uniform(0.85, 1.0)
    return y


def augment_with_boxes(x: np.ndarray, boxes, rng: np.random.Generator, photo: bool = True,
                       zoom_range: Tuple[float, float] = MAP_ZOOM, shift: float = MAP_SHIFT,
                       acquisition_effects: bool = False,
                       centre: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, list]:
    """One training image (size, size), resized but not normalised, and its pixel boxes -> both
    augmented: geometry (`centre`: map_geometry's), another system's processing and marks
    (`acquisition_effects`), then a photo's effects."""
    out, moved, _ = _augment_with_boxes(x, boxes, rng, photo, zoom_range, shift, acquisition_effects, False, centre)
    return out, moved


def augment_pair_with_boxes(x: np.ndarray, boxes, rng: np.random.Generator, photo: bool = True,
                            zoom_range: Tuple[float, float] = MAP_ZOOM, shift: float = MAP_SHIFT,
                            acquisition_effects: bool = False,
                            centre: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, list, np.ndarray]:
    """(the sample as a file: augment_with_boxes's geometry and acquisition effects, no photo
    effects; its boxes; the same photographed, the photo effects always on), so the two differ
    only in what photographing a film does, as a file and its photo do (--photo-consistency)."""
    return _augment_with_boxes(x, boxes, rng, photo, zoom_range, shift, acquisition_effects, True, centre)


def _augment_with_boxes(x, boxes, rng, photo, zoom_range, shift, acquisition_effects, pair, centre=None):
    out, moved = map_geometry(x, boxes, rng, PHOTOMETRIC.perspective if photo else 0.0, zoom_range, shift, centre)
    if acquisition_effects and rng.random() < ACQUISITION.probability:
        out = acquisition(out, moved, rng)
    if pair:  # the sample as a file (no photo effects), and its photo
        return out, moved, photometric(out, rng)
    if photo and rng.random() < PHOTOMETRIC.probability:
        out = photometric(out, rng)
    return out, moved, None
