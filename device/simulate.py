"""Simulated phone photos of film on a lightbox (and of what people photograph instead), made from
a radiograph file: for the film-vs-file agreement, the tests and the benchmarks.

A scene is a lightbox panel in a room with one or two films on it, seen by a phone camera:

  world (the panel's plane) --homography (distance, tilt, in-plane rotation)--> photo
  luminance = lightbox emission x film transmission; the housing, the room, fingers and clips elsewhere
  camera = exposure, vignetting, white-balance error, blur, sensor noise, tone curve, JPEG

The film's transmission comes from the radiograph's pixel value v through a characteristic curve the
reader never knows: T = t_min + (t_max - t_min) * v ** film_gamma. Every parameter is drawn from a
wide range for each condition (`draw_scene`), and a Scene records them all so a photo can be rebuilt.
Nothing here is used by the film reader itself (device/film.py): the reader must not be tuned to it.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .geometry import homography_from_points
from .imageops import gaussian_blur

# Conditions a clinic produces that the reader must answer, and those it must refuse (with the
# reason code device/quality.py gives). "screen" (a monitor's dark viewer drawn as a dim lightbox,
# with painted moire) is what the screen check was tuned on.
ANSWER_CONDITIONS = ("full", "room", "bright_surround", "overhang", "tilt", "rotated", "fingers",
                     "two_films", "tubes")
REFUSE_CONDITIONS = {"blur": "blur", "glare": "glare", "dark": "under_exposed", "bright": "over_exposed",
                     "cut_off": "cut_off", "small": "film_too_small", "screen": "screen",
                     "radiograph_file": "radiograph_file", "blank": "blank", "tiny": "photo_too_small"}
# An overhanging film (3-10% past one edge of the lightbox): where the finder sees the film run
# past the lit area it is refused for that reason (the unlit part cannot be read, and the answer
# could change with it); where it does not, the photo is answered.
ANSWER_OR_REFUSE = {"overhang": "off_lightbox"}
# Reasons that say the same thing in other words: an all-white photo is over-exposed, a dim
# photo with no film to be seen is too dark.
SAME_REASON = {"over_exposed": ("washed_out",), "under_exposed": ("too_dark",)}
# Screens rendered from a display's physics (device/screen_photo.py), never used for tuning: said to
# be a screen where the check sees one, refused otherwise where it can; counted, not required (a
# light-themed viewer in a lit room is a lit panel with a picture on it, which only the pixel grid
# tells from a film on a lightbox).
SCREEN_PHOTO_CONDITIONS = {"monitor": "screen"}
CONDITIONS = ANSWER_CONDITIONS + tuple(REFUSE_CONDITIONS) + tuple(SCREEN_PHOTO_CONDITIONS)
MAX_RENDER_SIDE = 2400  # larger photos are rendered at this size and upsampled (with fresh noise)


@dataclass
class Scene:
    """Everything one simulated photo depends on (world units: the panel is 1 wide)."""

    condition: str
    photo_size: Tuple[int, int]  # (width, height) of the JPEG
    panel: Tuple[float, float]  # panel width, height
    films: List[Tuple[float, float, float, float, float]]  # (cx, cy, w, h, angle_deg); films[0] is read
    homography: List[List[float]]  # world -> photo
    # lightbox and room
    gradient: Tuple[float, float] = (0.0, 0.0)
    tubes: Tuple[int, float, float, float, int] = (4, 0.0, 0.0, 1.0, 0)  # count, amplitude, phase, sharpness, axis
    housing: Tuple[float, float] = (0.05, 0.2)  # width, level
    surround: str = "dark"
    surround_level: float = 0.08
    window: Optional[Tuple[float, float, float, float, float]] = None  # x0, y0, x1, y1, level (world)
    clutter_seed: int = 0
    # film
    t_min: float = 0.01
    t_max: float = 0.85
    film_gamma: float = 2.0
    fingers: List[Tuple[float, float, float, float, float]] = field(default_factory=list)  # cx, cy, rx, ry, angle
    clips: List[Tuple[float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1 (world)
    # camera
    exposure: float = 0.85  # encoded lightbox level the camera aims for
    cam_gamma: float = 2.2
    s_curve: float = 0.0
    vignetting: float = 0.1
    cast: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.5  # optical blur, photo px at the rendered size
    noise: Tuple[float, float] = (5e-4, 1e-5)  # shot, read (linear variance terms)
    jpeg_quality: int = 90
    glare: List[Tuple[float, float, float, float]] = field(default_factory=list)  # x, y, radius (photo px), peak
    moire: float = 0.0
    panel_level: float = 1.0  # the bare panel's brightness beside the film (a monitor's dark viewer: ~0.05)
    seed: int = 0

    def to_dict(self) -> Dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Drawing a scene


def _rot(axis: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _camera(size: Tuple[int, int], aim: Tuple[float, float], distance: float, roll: float, tilt: float,
            tilt_dir: float, hfov: float, shift: Tuple[float, float]) -> np.ndarray:
    """World (X, Y, 0) -> photo homography of a pinhole camera looking at `aim` from `distance`."""
    W, H = size
    f = W / (2 * math.tan(math.radians(hfov) / 2))
    K = np.array([[f, 0, W / 2 + shift[0] * W], [0, f, H / 2 + shift[1] * H], [0, 0, 1]])
    R = _rot("z", roll) @ _rot("z", tilt_dir) @ _rot("x", tilt) @ _rot("z", -tilt_dir)
    # camera coordinates of (X, Y, 0): R @ (X - ax, Y - ay, 0) + (0, 0, distance)
    t = -aim[0] * R[:, 0] - aim[1] * R[:, 1] + np.array([0.0, 0.0, distance])
    return K @ np.column_stack([R[:, 0], R[:, 1], t])


def _project(Hm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.column_stack([pts, np.ones(len(pts))]) @ np.asarray(Hm).T
    return p[:, :2] / p[:, 2:3]


def film_corners_world(film: Tuple[float, float, float, float, float]) -> np.ndarray:
    cx, cy, w, h, ang = film
    a = math.radians(ang)
    ux, uy = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    c = np.array([cx, cy])
    return np.array([c - ux * w / 2 - uy * h / 2, c + ux * w / 2 - uy * h / 2,
                     c + ux * w / 2 + uy * h / 2, c - ux * w / 2 + uy * h / 2])


def visible_film_corners(scene: Scene) -> np.ndarray:
    """The lit part of the film read (film and panel intersected), in the photo: what a reader can see."""
    poly = [tuple(p) for p in film_corners_world(scene.films[0])]
    pw, ph = scene.panel
    for inside, cut in ((lambda p: p[0] >= 0, lambda a, b: (0.0, a[1] + (b[1] - a[1]) * (0 - a[0]) / (b[0] - a[0]))),
                        (lambda p: p[0] <= pw, lambda a, b: (pw, a[1] + (b[1] - a[1]) * (pw - a[0]) / (b[0] - a[0]))),
                        (lambda p: p[1] >= 0, lambda a, b: (a[0] + (b[0] - a[0]) * (0 - a[1]) / (b[1] - a[1]), 0.0)),
                        (lambda p: p[1] <= ph, lambda a, b: (a[0] + (b[0] - a[0]) * (ph - a[1]) / (b[1] - a[1]), ph))):
        out = []
        for k, cur in enumerate(poly):
            prev = poly[k - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cut(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cut(prev, cur))
        poly = out
    return _project(np.array(scene.homography), np.array(poly))


def film_corners(scene: Scene, index: int = 0) -> np.ndarray:
    """The film's corners in the photo (x, y): TL, TR, BR, BL of the film itself."""
    return _project(np.array(scene.homography), film_corners_world(scene.films[index]))


def _coverage(Hm: np.ndarray, quad_world: np.ndarray, size: Tuple[int, int]) -> float:
    """Share of the photo that the quad covers (rasterised small; clipping comes for free)."""
    W, H = size
    k = 96 / max(W, H)
    q = _project(Hm, quad_world) * k
    img = Image.new("L", (max(1, round(W * k)), max(1, round(H * k))), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in q], fill=255)
    return float(np.asarray(img).mean() / 255)


def _inside(points: np.ndarray, size: Tuple[int, int], margin: float) -> bool:
    W, H = size
    m = margin * min(W, H)
    return bool((points[:, 0] >= m).all() and (points[:, 0] <= W - m).all()
                and (points[:, 1] >= m).all() and (points[:, 1] <= H - m).all())


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def draw_scene(condition: str, aspect: float, rng: np.random.Generator,
               photo_size: Optional[Tuple[int, int]] = None) -> Scene:
    """A random scene for `condition` (see CONDITIONS); `aspect` is the radiograph's height / width."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    for attempt in range(200):
        # A film far from the lightbox's shape (a 3.5:1 crop) may not fit at the usual size: after 50
        # tries, shrink it a little more on each, as a technician would hang it smaller.
        scene = _try_scene(condition, aspect, rng, photo_size, shrink=0.985 ** max(0, attempt - 50))
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place a film for condition {condition!r}")


def _try_scene(condition: str, aspect: float, rng: np.random.Generator,
               photo_size: Optional[Tuple[int, int]], shrink: float = 1.0) -> Optional[Scene]:
    portrait = rng.random() < 0.5
    if photo_size is None:
        photo_size = (1200, 1600) if portrait else (1600, 1200)
        if condition == "small":
            photo_size = (640, 480) if not portrait else (480, 640)
        if condition == "tiny":
            photo_size = (int(rng.integers(96, 220)), int(rng.integers(80, 200)))
        if condition == "two_films":  # two films need a phone's resolution to keep each one readable
            photo_size = (1800, 2400) if portrait else (2400, 1800)
    size = photo_size
    # The panel (lightbox) and the film on it, in world units (panel width 1).
    two = condition == "two_films"
    panel = (2.0 if two else 1.0, _u(rng, 1.0, 1.35))
    fill = _u(rng, 0.55, 0.9) * shrink
    fw = fill * (0.95 if two else 1.0)
    fh = fw * aspect
    if fh > 0.94 * panel[1]:
        fh = 0.94 * panel[1] * _u(rng, 0.85, 1.0)
        fw = fh / aspect
    films = []
    for k in range(2 if two else 1):
        half = (k + 0.5) * (panel[0] / (2 if two else 1))
        room_x = max(0.0, (panel[0] / (2 if two else 1) - fw) / 2 - 0.03)
        room_y = max(0.0, (panel[1] - fh) / 2 - 0.03)
        films.append((half + _u(rng, -room_x, room_x), panel[1] / 2 + _u(rng, -room_y, room_y) * 0.8,
                      fw, fh, _u(rng, -3, 3)))
    if condition == "overhang":  # push the film past one panel edge by 3-10% of its size
        cx, cy, w, h, a = films[0]
        side = int(rng.integers(4))
        over = _u(rng, 0.03, 0.10)
        if side == 0:
            cx = w / 2 - over * w
        elif side == 1:
            cx = panel[0] - w / 2 + over * w
        elif side == 2:
            cy = h / 2 - over * h
        else:
            cy = panel[1] - h / 2 + over * h
        films[0] = (cx, cy, w, h, _u(rng, -1.5, 1.5))
    read = 0
    if two:
        read = int(rng.integers(2))
        films = [films[read], films[1 - read]]
    # Camera pose.
    roll = _u(rng, -8, 8) + (180.0 if rng.random() < 0.1 else 0.0)
    if condition == "rotated":
        roll = _u(rng, 0, 360)
    tilt = _u(rng, 0, 12)
    if condition == "tilt":
        tilt = _u(rng, 18, 30)
    hfov = _u(rng, 58, 76)
    fc = np.array(films[0][:2])
    aim = fc
    if two:  # aim between the films, nearer the one to be read
        aim = fc + (np.array(films[1][:2]) - fc) * _u(rng, 0.1, 0.35)
    panel_quad = np.array([[0, 0], [panel[0], 0], [panel[0], panel[1]], [0, panel[1]]], float)
    if condition == "full":
        target = 1.0
    elif condition in ("room", "bright_surround"):
        target = _u(rng, 0.3, 0.9)
    else:
        target = _u(rng, 0.3, 1.0)
    shift = (_u(rng, -0.06, 0.06), _u(rng, -0.06, 0.06))
    tilt_dir = _u(rng, 0, 360)

    def cam(d):
        return _camera(size, tuple(aim), d, roll, tilt, tilt_dir, hfov, shift)

    lo, hi = 0.2, 40.0  # distance: bisect on the panel's coverage of the photo
    for _ in range(24):
        mid = math.sqrt(lo * hi)
        if _coverage(cam(mid), panel_quad, size) >= (target if target < 1 else 0.999):
            lo = mid
        else:
            hi = mid
    Hm = cam(lo)
    corners = _project(Hm, film_corners_world(films[0]))
    film_px = min(np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[3] - corners[0]))
    if condition == "small":
        want = _u(rng, 70, 230)
        Hm = cam(lo * film_px / want)
    elif condition == "cut_off":  # the film runs off one side of the photo by 12-40%
        side = int(rng.integers(4))
        frac = _u(rng, 0.12, 0.4)
        ext = corners.max(axis=0) - corners.min(axis=0)
        W, H = size
        move = {0: (-(corners[:, 0].min() + frac * ext[0]), 0), 1: (W - corners[:, 0].max() + frac * ext[0], 0),
                2: (0, -(corners[:, 1].min() + frac * ext[1])), 3: (0, H - corners[:, 1].max() + frac * ext[1])}[side]
        Hm = np.array([[1, 0, move[0]], [0, 1, move[1]], [0, 0, 1]]) @ Hm
    corners = _project(Hm, film_corners_world(films[0]))
    if condition not in ("cut_off", "tiny"):
        if not _inside(corners, size, 0.02):
            return None
        if two and not _inside(_project(Hm, film_corners_world(films[1])), size, 0.01):
            return None
        if condition == "overhang" and not _inside(corners, size, 0.04):
            return None
    if condition == "full" and _coverage(Hm, panel_quad, size) < 0.995:
        return None
    if two:  # the film read is the one whose centre lies nearest the photo's centre, clearly
        centre = np.array(size) / 2
        dist = [np.linalg.norm(_project(Hm, film_corners_world(f)).mean(axis=0) - centre) for f in films]
        if min(dist) > 0.8 * max(dist):
            return None
        if dist[1] < dist[0]:
            films = films[::-1]
    if condition == "tiny":  # a thumbnail of an otherwise good photo
        if not _inside(corners, size, 0.01):
            return None
    scene = Scene(condition=condition, photo_size=size, panel=panel, films=films,
                  homography=Hm.tolist(), seed=int(rng.integers(2 ** 31)), clutter_seed=int(rng.integers(2 ** 31)))
    return _photometry(scene, condition, rng)


def _photometry(s: Scene, condition: str, rng: np.random.Generator) -> Scene:
    corners = film_corners(s)
    film_px = float(min(np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[3] - corners[0])))
    scale = max(s.photo_size) / 1600
    s = replace(
        s,
        gradient=(_u(rng, -0.3, 0.3), _u(rng, -0.3, 0.3)),
        tubes=(int(rng.integers(2, 7)), _u(rng, 0.0, 0.04), _u(rng, 0, 2 * math.pi), _u(rng, 1, 4), int(rng.integers(2))),
        housing=(_u(rng, 0.02, 0.08), _u(rng, 0.03, 0.5)),
        surround="dark", surround_level=_u(rng, 0.01, 0.3),
        t_min=_u(rng, 0.003, 0.06), t_max=_u(rng, 0.45, 0.8), film_gamma=_u(rng, 1.3, 3.2),
        exposure=_u(rng, 0.72, 0.96), cam_gamma=_u(rng, 1.8, 2.6), s_curve=_u(rng, 0.0, 0.5),
        vignetting=_u(rng, 0.0, 0.35),
        cast=tuple(float(g) for g in np.exp(rng.uniform(-0.18, 0.18, 3))),
        blur=_u(rng, 0.2, 1.0) * scale, noise=(_u(rng, 1e-4, 2e-3), _u(rng, 1e-6, 4e-5)),
        jpeg_quality=int(rng.integers(70, 96)),
    )
    if condition == "bright_surround":
        if rng.random() < 0.5:
            s = replace(s, surround="bright", surround_level=_u(rng, 0.5, 1.3))
        else:  # a window beside the lightbox, much brighter than it
            pw, ph = s.panel
            side = rng.choice([-1, 1])
            x0 = pw + 0.15 if side > 0 else -0.15 - _u(rng, 0.6, 1.5)
            s = replace(s, surround="bright", surround_level=_u(rng, 0.3, 0.9),
                        window=(x0, _u(rng, -0.8, 0.2), x0 + _u(rng, 0.6, 1.5), ph + _u(rng, -0.2, 0.8), _u(rng, 1.3, 4.0)))
    if condition == "tubes":
        s = replace(s, tubes=(int(rng.integers(2, 7)), _u(rng, 0.06, 0.2), _u(rng, 0, 2 * math.pi), _u(rng, 1, 4),
                              int(rng.integers(2))))
    if condition == "fingers":
        s = _fingers_and_clips(s, rng)
    if condition == "blur":
        s = replace(s, blur=_u(rng, 0.015, 0.04) * film_px)
    if condition == "glare":
        spots = []
        for _ in range(int(rng.integers(1, 4))):
            t = rng.uniform(0.2, 0.8, 2)
            p = corners[0] + (corners[1] - corners[0]) * t[0] + (corners[3] - corners[0]) * t[1]
            spots.append((float(p[0]), float(p[1]), _u(rng, 0.05, 0.14) * film_px, _u(rng, 1.0, 3.0)))
        s = replace(s, glare=spots)
    if condition == "dark":
        s = replace(s, exposure=_u(rng, 0.04, 0.2))
    if condition == "bright":
        s = replace(s, exposure=_u(rng, 2.5, 8.0))
    if condition == "screen":
        s = replace(s, moire=_u(rng, 0.06, 0.3), surround_level=_u(rng, 0.005, 0.1), t_min=_u(rng, 0.005, 0.05),
                    film_gamma=2.2, t_max=1.0, panel_level=_u(rng, 0.02, 0.15), housing=(_u(rng, 0.02, 0.06), 0.01))
        if rng.random() < 0.6:
            t = rng.uniform(0.1, 0.9, 2)
            p = corners[0] + (corners[1] - corners[0]) * t[0] + (corners[3] - corners[0]) * t[1]
            s = replace(s, glare=[(float(p[0]), float(p[1]), _u(rng, 0.15, 0.4) * film_px, _u(rng, 0.1, 0.5))])
    return s


def _fingers_and_clips(s: Scene, rng: np.random.Generator) -> Scene:
    cx, cy, w, h, ang = s.films[0]
    world = film_corners_world(s.films[0])
    fingers, clips = [], []
    if rng.random() < 0.7:  # a hand holding one edge
        side = int(rng.integers(4))
        a, b = world[side], world[(side + 1) % 4]
        normal = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
        outward = -normal if np.dot(normal, np.array([cx, cy]) - (a + b) / 2) > 0 else normal
        t0 = _u(rng, 0.2, 0.8)
        edge_angle = math.degrees(math.atan2(*(b - a)[::-1]))
        for k in range(int(rng.integers(1, 4))):
            p = a + (b - a) * (t0 + k * 0.045) + outward * _u(rng, -0.01, 0.03)
            fingers.append((float(p[0]), float(p[1]), _u(rng, 0.012, 0.02), _u(rng, 0.04, 0.09),
                            edge_angle + 90 + _u(rng, -15, 15)))
    if rng.random() < 0.6 or not fingers:  # clips on the top edge
        top_a, top_b = world[0], world[1]
        for t in ((0.25, 0.75) if rng.random() < 0.5 else (_u(rng, 0.3, 0.7),)):
            p = top_a + (top_b - top_a) * t
            cw, ch = _u(rng, 0.025, 0.05), _u(rng, 0.02, 0.045)
            clips.append((float(p[0] - cw / 2), float(p[1] - ch * 0.6), float(p[0] + cw / 2), float(p[1] + ch * 0.4)))
    return replace(s, fingers=fingers, clips=clips)


# ---------------------------------------------------------------------------------------------
# Rendering


def transmission(radiograph: np.ndarray, s: Scene) -> np.ndarray:
    v = np.clip(np.asarray(radiograph, np.float32), 0, 1)
    return (s.t_min + (s.t_max - s.t_min) * v ** s.film_gamma).astype(np.float32)


def _world_grid(Hinv: np.ndarray, W: int, H: int) -> Tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    xs += 0.5
    ys += 0.5
    den = Hinv[2, 0] * xs + Hinv[2, 1] * ys + Hinv[2, 2]
    X = (Hinv[0, 0] * xs + Hinv[0, 1] * ys + Hinv[0, 2]) / den
    Y = (Hinv[1, 0] * xs + Hinv[1, 1] * ys + Hinv[1, 2]) / den
    return X, Y


def _film_into_photo(img: np.ndarray, film, Hm: np.ndarray, size: Tuple[int, int], fill: float) -> np.ndarray:
    """Warp a film-aligned image (rows = film height) into the photo with PIL's perspective sampler."""
    rh, rw = img.shape
    src = np.array([[0, 0], [rw, 0], [rw, rh], [0, rh]], float)
    dst = _project(Hm, film_corners_world(film))
    coeffs = homography_from_points(dst, src)  # photo -> film pixels, as PIL wants it
    c = (coeffs / coeffs[2, 2]).reshape(-1)[:8]
    out = Image.fromarray(np.ascontiguousarray(img, np.float32)).transform(
        size, Image.Transform.PERSPECTIVE, tuple(c), Image.Resampling.BILINEAR, fillcolor=fill)
    return np.asarray(out, np.float32)


def _clutter(s: Scene, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """A room: smooth light falloff and a few rectangles of furniture or wall, in world units."""
    rng = np.random.default_rng(s.clutter_seed)
    base = s.surround_level * (1 + 0.5 * np.tanh(0.6 * (rng.uniform(-1, 1) * X + rng.uniform(-1, 1) * Y)))
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(-3, 3, 2)
        w, h = rng.uniform(0.2, 2.5, 2)
        inside = (X > x0) & (X < x0 + w) & (Y > y0) & (Y < y0 + h)
        base = np.where(inside, s.surround_level * rng.uniform(0.3, 2.2), base)
    return base.astype(np.float32)


def render_photo(radiograph: np.ndarray, s: Scene, second: Optional[np.ndarray] = None) -> bytes:
    """The camera's JPEG of `radiograph` (2-D, [0, 1]) in scene `s`."""
    W0, H0 = s.photo_size
    k = min(1.0, MAX_RENDER_SIDE / max(W0, H0))
    size = (max(1, round(W0 * k)), max(1, round(H0 * k)))
    Hm = np.array([[k, 0, 0], [0, k, 0], [0, 0, 1]]) @ np.array(s.homography)
    rng = np.random.default_rng(s.seed)
    X, Y = _world_grid(np.linalg.inv(Hm), *size)
    pw, ph = s.panel
    on_panel = (X >= 0) & (X <= pw) & (Y >= 0) & (Y <= ph)
    # Lightbox emission: gradient, fluorescent tubes behind the diffuser.
    count, amp, phase, sharp, axis = s.tubes
    u = (X / pw) if axis == 0 else (Y / ph)
    stripes = np.abs(np.cos(np.pi * count * u + phase)) ** sharp
    stripes = 1 + amp * (stripes - stripes.mean()) / max(float(stripes.std()), 1e-6) * 0.5
    emission = (1 + s.gradient[0] * (X / pw - 0.5) + s.gradient[1] * (Y / ph - 0.5)) * stripes
    hw, hl = s.housing
    on_housing = (X >= -hw) & (X <= pw + hw) & (Y >= -hw) & (Y <= ph + hw) & ~on_panel
    room = _clutter(s, X, Y)
    if s.window is not None:
        x0, y0, x1, y1, lvl = s.window
        room = np.where((X > x0) & (X < x1) & (Y > y0) & (Y < y1), lvl, room)
    lum = np.where(on_panel, emission * s.panel_level, np.where(on_housing, hl, room)).astype(np.float32)
    reflect = 0.3 * np.where(on_housing, hl, room)  # film over an unlit area reflects a little room light
    films = [(s.films[0], radiograph)] + ([(s.films[1], second)] if second is not None and len(s.films) > 1 else [])
    for film, image in films:
        T = transmission(image, s)
        t_photo = _film_into_photo(T, film, Hm, size, fill=-1.0)
        inside = t_photo >= 0
        lum = np.where(inside, np.where(on_panel, emission * np.clip(t_photo, 0, 1), reflect), lum)
    rgb = np.repeat(lum[:, :, None], 3, axis=2)
    for cx, cy, rx, ry, ang in s.fingers:  # opaque, lit only by the room: dark and a little warm
        a = math.radians(ang)
        dx, dy = X - cx, Y - cy
        e = ((dx * math.cos(a) + dy * math.sin(a)) / ry) ** 2 + ((-dx * math.sin(a) + dy * math.cos(a)) / rx) ** 2
        skin = np.array([1.15, 0.9, 0.75], np.float32) * max(0.04, s.surround_level)
        rgb = np.where((e <= 1)[:, :, None], skin[None, None, :], rgb)
    for x0, y0, x1, y1 in s.clips:
        box = (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1)
        rgb = np.where(box[:, :, None], np.float32(0.1 + 0.2 * rng.random()), rgb)
    if s.moire:  # a screen: pixel-grid beats and colour fringes from the subpixels
        yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
        f1, f2 = rng.uniform(0.15, 0.45, 2)
        ang = rng.uniform(0, np.pi)
        beat = np.cos(2 * np.pi * (f1 * (xx * np.cos(ang) + yy * np.sin(ang))))
        for c in range(3):
            rgb[:, :, c] *= 1 + s.moire * np.cos(2 * np.pi * f2 * xx + c * 2.1) * (0.5 + 0.5 * beat)
    rgb *= np.array(s.cast, np.float32)[None, None, :]
    if s.vignetting:
        yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
        r2 = ((xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2) / ((size[0] / 2) ** 2 + (size[1] / 2) ** 2)
        rgb *= (1 - s.vignetting * r2)[:, :, None]
    for gx, gy, r, peak in s.glare:
        yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
        rgb += peak * np.exp(-((xx - gx * k) ** 2 + (yy - gy * k) ** 2) / (2 * (r * k) ** 2))[:, :, None]
    linear_level = s.exposure ** s.cam_gamma  # so the bare lightbox lands at `exposure` once encoded
    rgb *= linear_level
    if s.blur:
        rgb = gaussian_blur(rgb, s.blur * k)
    shot, read = s.noise
    rgb = rgb + rng.normal(0, 1, rgb.shape).astype(np.float32) * np.sqrt(shot * np.clip(rgb, 0, None) + read)
    enc = np.clip(rgb, 0, 1) ** (1 / s.cam_gamma)
    enc = (1 - s.s_curve) * enc + s.s_curve * (3 * enc ** 2 - 2 * enc ** 3)
    img = Image.fromarray((np.clip(enc, 0, 1) * 255 + 0.5).astype(np.uint8))
    if size != (W0, H0):
        img = _upsample_with_grain(img, (W0, H0), rng)
    return jpeg_bytes(img, s.jpeg_quality)


def _upsample_with_grain(img: Image.Image, size: Tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A large phone photo: upsample the render, then add sensor grain band by band (bounded memory),
    so the JPEG holds as much entropy as a phone's (a 12 MP one is 3-6 MB)."""
    big = img.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(big).copy()
    for y0 in range(0, size[1], 512):
        band = arr[y0:y0 + 512].astype(np.int16)
        band += np.round(rng.normal(0, 3.5, band.shape)).astype(np.int16)
        arr[y0:y0 + 512] = np.clip(band, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def open_jpeg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ---------------------------------------------------------------------------------------------
# Inputs that are not photos of film


def blank_photo(rng: np.random.Generator, size: Tuple[int, int] = (1600, 1200)) -> bytes:
    """Lens covered, lightbox without film, a white wall, a dark room: nothing to read."""
    kind = rng.choice(["black", "white", "gray", "noise", "lightbox"])
    W, H = size
    if kind == "noise":  # the sensor's noise in the dark
        arr = np.clip(rng.normal(rng.uniform(5, 30), rng.uniform(1, 6), (H, W, 3)), 0, 255)
    elif kind == "lightbox":  # a lit lightbox with no film on it
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        lvl = rng.uniform(150, 245) * (1 + rng.uniform(-0.15, 0.15) * (xx / W - 0.5))
        arr = np.repeat(lvl[:, :, None], 3, axis=2) + rng.normal(0, 2, (H, W, 3))
    else:
        lvl = {"black": rng.uniform(0, 12), "white": rng.uniform(225, 245), "gray": rng.uniform(60, 200)}[kind]
        arr = np.full((H, W, 3), lvl) + rng.normal(0, rng.uniform(0.2, 2.0), (H, W, 3))
    return jpeg_bytes(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), 90)


def radiograph_as_file(radiograph: np.ndarray, rng: np.random.Generator) -> bytes:
    """The radiograph itself, as a viewer exports it: gray, or gray stored as RGB."""
    img = Image.fromarray((np.clip(radiograph, 0, 1) * 255 + 0.5).astype(np.uint8))
    return jpeg_bytes(img.convert("RGB") if rng.random() < 0.5 else img, int(rng.integers(80, 96)))


def simulate(radiograph: np.ndarray, condition: str, rng: np.random.Generator,
             photo_size: Optional[Tuple[int, int]] = None,
             second: Optional[np.ndarray] = None) -> Tuple[bytes, Optional[Scene]]:
    """(JPEG bytes, scene) for one condition; scene is None for inputs that are not scenes."""
    if condition == "blank":
        return blank_photo(rng, photo_size or (1600, 1200)), None
    if condition == "radiograph_file":
        return radiograph_as_file(radiograph, rng), None
    if condition == "monitor":
        from .screen_photo import render_screen_photo  # imports this module: only when asked for
        return render_screen_photo(radiograph, rng, photo_size)[0], None
    h, w = radiograph.shape
    scene = draw_scene(condition, h / w, rng, photo_size)
    if condition == "two_films" and second is None:
        second = np.ascontiguousarray(radiograph[:, ::-1])
    return render_photo(radiograph, scene, second), scene


def radiograph_from_file(path) -> np.ndarray:
    from edge_runtime.imageio import read_grayscale
    return read_grayscale(path).pixels


def conditions(names: Sequence[str]) -> List[str]:
    bad = [n for n in names if n not in CONDITIONS]
    if bad:
        raise ValueError(f"unknown condition(s) {', '.join(bad)}; known: {', '.join(CONDITIONS)}")
    return list(names)
