"""Phone photos of a screen showing a radiograph, rendered from the physics of a display and a
camera: the screen's pixel grid with its RGB subpixel stripes and black matrix, imaged through
a lens onto a Bayer sensor and demosaiced, so moire and colour fringes arise by aliasing (as in
a real photo) rather than being painted on.

Why a second renderer: the film path's screen check (device/quality.py, `screen`) takes its
limits from device/simulate.py's "screen" condition and other simulate.py photos (tuning seeds).
This renderer's photos were looked at while it was built (seeds [5, k] and [8, k]: they showed
that reflections on the glass and clipped highlights make flat bright patches on a screen, which
is why the check's lit-panel limit was set against a bare lightbox rather than at the first
midpoint; seen with a first version whose screen white was too low, which overstated the room
and the glare against it); tests and docs/results.md use its other seeds, so a pass says something about
screens, not about one simulator. Every parameter is drawn over a wide range (monitor, laptop,
phone or tablet; dark or lit room; a dark or light viewer or the bare image; pixel pitch finer or
coarser than the sensor's; highlight- or average-metered exposure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from .geometry import homography_from_points
from .imageops import gaussian_blur
from .simulate import MAX_RENDER_SIDE as MAX_SIDE, _u, jpeg_bytes

DEVICES = ("monitor", "laptop", "phone", "tablet")


@dataclass
class ScreenScene:
    device: str
    photo_size: Tuple[int, int]  # (W, H) of the JPEG
    display_px: Tuple[int, int]  # the screen's own resolution shown in the photo (columns, rows)
    corners: np.ndarray  # (4, 2) the display area's corners in the photo: tl, tr, br, bl
    bezel: float  # the housing's width, as a share of the display's width
    bezel_level: float  # the housing's reflectance
    wall_level: float  # the reflectance of what lies behind the screen (wall, desk)
    room_level: float  # the room's light, relative to the screen's white
    black_level: float  # the screen's black, relative to its white
    fill: float  # share of each subpixel stripe that emits (the rest is black matrix)
    blur: float  # the lens's PSF, sigma in photo pixels
    bayer: bool  # a colour-filter-array sensor, demosaiced bilinearly
    glare: float  # a reflection on the glass (peak, relative to white)
    jpeg_quality: int
    cast: Tuple[float, float, float]
    notes: Dict = field(default_factory=dict)


def draw_screen_scene(rng: np.random.Generator, photo_size: Tuple[int, int] = None, room: str = None) -> ScreenScene:
    """`room`: "dark" or "lit" to fix the room's light (otherwise drawn: either, equally often)."""
    device = str(rng.choice(DEVICES))
    if photo_size is None:
        long_side = int(rng.choice([1280, 1600, 2016]))
        W, H = long_side, int(long_side * 3 / 4)
        if device in ("phone", "tablet") and rng.random() < 0.6:
            W, H = H, W
    else:
        W, H = photo_size
    aspect = {"monitor": rng.choice([16 / 9, 16 / 10, 4 / 3]), "laptop": rng.choice([16 / 9, 16 / 10, 3 / 2]),
              "phone": rng.choice([9 / 19.5, 9 / 16]), "tablet": rng.choice([3 / 4, 10 / 16])}[device]
    aspect = float(aspect)
    # The display's size in the photo, then the camera's pose: roll, keystone, an off-centre aim.
    share = _u(rng, 0.45, 0.92)
    dw = share * W if aspect * H >= W else share * H * aspect
    dw = min(dw, share * W)
    dh = dw / aspect
    if dh > share * H:
        dh = share * H
        dw = dh * aspect
    cx = W / 2 + _u(rng, -0.08, 0.08) * W
    cy = H / 2 + _u(rng, -0.08, 0.08) * H
    rect = np.array([[-dw / 2, -dh / 2], [dw / 2, -dh / 2], [dw / 2, dh / 2], [-dw / 2, dh / 2]])
    roll = math.radians(_u(rng, -12, 12))
    rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    pts = rect @ rot.T
    # keystone: one side shorter, as when the camera looks up, down or sideways at the screen
    k = _u(rng, 0.0, 0.14)
    side = int(rng.integers(4))
    a, b = side, (side + 1) % 4
    mid = (pts[a] + pts[b]) / 2
    pts[a] = mid + (pts[a] - mid) * (1 - k)
    pts[b] = mid + (pts[b] - mid) * (1 - k)
    corners = pts + np.array([cx, cy])
    # camera pixels per display pixel: below 1 the grid is finer than the sensor (aliasing, moire)
    per_px = _u(rng, 0.35, 2.4)
    cols = max(64, int(round(dw / per_px)))
    rows = max(64, int(round(dh / per_px)))
    return ScreenScene(
        device=device, photo_size=(W, H), display_px=(cols, rows), corners=corners,
        bezel=_u(rng, 0.01, 0.08) if device != "phone" else _u(rng, 0.03, 0.12),
        bezel_level=float(rng.choice([_u(rng, 0.02, 0.08), _u(rng, 0.1, 0.6)])),
        wall_level=_u(rng, 0.2, 0.85), room_level=_room(rng, room),
        black_level=_u(rng, 0.003, 0.06), fill=_u(rng, 0.55, 0.92), blur=_u(rng, 0.3, 1.4),
        bayer=bool(rng.random() < 0.75), glare=float(rng.choice([0.0, _u(rng, 0.03, 0.3)])),
        jpeg_quality=int(rng.integers(72, 96)), cast=tuple(float(c) for c in rng.uniform(0.85, 1.15, 3)),
        notes={"per_px": round(per_px, 3), "keystone": round(k, 3), "roll_deg": round(math.degrees(roll), 2)})


def _room(rng: np.random.Generator, room: str = None) -> float:
    dark, lit = _u(rng, 0.005, 0.08), _u(rng, 0.08, 0.6)
    if room is None:
        room = "dark" if rng.random() < 0.5 else "lit"
    if room not in ("dark", "lit"):
        raise ValueError(f"room must be 'dark' or 'lit', not {room!r}")
    return dark if room == "dark" else lit


def _resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def framebuffer(radiograph: np.ndarray, scene: ScreenScene, rng: np.random.Generator) -> np.ndarray:
    """What the screen shows, (rows, cols, 3) in [0, 1] (gamma-encoded, as a framebuffer is): a
    viewer's chrome (dark or light) around the radiograph, letterboxed; or the image alone."""
    cols, rows = scene.display_px
    style = rng.choice(["dark_viewer", "dark_viewer", "bare", "light_viewer"] if scene.device != "phone"
                       else ["bare", "bare", "dark_viewer"])
    scene.notes["style"] = str(style)
    bg = {"dark_viewer": _u(rng, 0.0, 0.12), "bare": _u(rng, 0.0, 0.04), "light_viewer": _u(rng, 0.8, 0.97)}[style]
    fb = np.full((rows, cols), bg, np.float32)
    x0, y0, x1, y1 = 0, 0, cols, rows
    if style != "bare":  # a toolbar on top and a thumbnail strip on the left, with light "labels"
        bar = int(rows * _u(rng, 0.05, 0.1))
        strip = int(cols * _u(rng, 0.0, 0.14))
        chrome = bg + (_u(rng, 0.05, 0.15) if style == "dark_viewer" else -_u(rng, 0.05, 0.15))
        fb[:bar] = chrome
        fb[:, :strip] = chrome
        for _ in range(int(rng.integers(4, 14))):
            w = int(cols * _u(rng, 0.02, 0.08))
            h = max(1, int(bar * _u(rng, 0.2, 0.5)))
            x = int(rng.integers(strip, max(strip + 1, cols - w)))
            y = int(rng.integers(0, max(1, bar - h)))
            fb[y:y + h, x:x + w] = 1.0 - chrome if style == "dark_viewer" else 0.1
        x0, y0 = strip, bar
    # the radiograph, fitted into the viewport with a margin, window/level as the viewer chose
    vw, vh = x1 - x0, y1 - y0
    rh, rw = radiograph.shape
    fit = min(vw / rw, vh / rh) * _u(rng, 0.85, 1.0)
    tw, th = max(8, int(rw * fit)), max(8, int(rh * fit))
    shown = np.clip(_resize(radiograph, (tw, th)), 0, 1) ** _u(rng, 0.8, 1.25)
    ox = x0 + (vw - tw) // 2
    oy = y0 + (vh - th) // 2
    fb[oy:oy + th, ox:ox + tw] = shown
    for _ in range(int(rng.integers(0, 4))):  # corner annotations: patient, series, window
        w, h = int(tw * _u(rng, 0.1, 0.3)), max(1, int(th * _u(rng, 0.01, 0.025)))
        x = ox + (0 if rng.random() < 0.5 else tw - w)
        y = oy + int(rng.integers(0, max(1, th - h)))
        fb[y:y + h, x:x + w] = np.where(rng.random((h, w)) < 0.5, 0.9, fb[y:y + h, x:x + w])
    return np.repeat(fb[:, :, None], 3, axis=2)


def render_screen_photo(radiograph: np.ndarray, rng: np.random.Generator, photo_size: Tuple[int, int] = None,
                        room: str = None) -> Tuple[bytes, ScreenScene]:
    """(JPEG bytes, scene): a photo of a screen showing `radiograph` (2-D, [0, 1])."""
    s = draw_screen_scene(rng, photo_size, room)
    W, H = s.photo_size
    if max(W, H) > MAX_SIDE:  # rendered at 2 x 2 samples a pixel: bounded time and memory
        raise ValueError(f"photo size {W}x{H}: render screens at most {MAX_SIDE} px on the long side")
    cols, rows = s.display_px
    fb = framebuffer(np.asarray(radiograph, np.float32), s, rng)
    emit = s.black_level + (1 - s.black_level) * np.clip(fb, 0, 1) ** 2.2  # linear light per subpixel
    # Sample the scene at 2x2 points per photo pixel (the pixel's area), through photo -> display.
    ss = 2
    to_display = homography_from_points(s.corners, np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], float))
    lin = np.zeros((H, W, 3), np.float32)
    front = np.zeros((H, W), np.float32)  # the device's glass (display and housing): where reflections fall
    band = max(1, 400_000 // (W * ss * ss))
    for y0 in range(0, H, band):
        y1 = min(H, y0 + band)
        yy, xx = np.mgrid[y0:y1, 0:W].astype(np.float64)
        acc = np.zeros((y1 - y0, W, 3), np.float32)
        for oy in range(ss):
            for ox in range(ss):
                px = xx + (ox + 0.5) / ss
                py = yy + (oy + 0.5) / ss
                den = to_display[2, 0] * px + to_display[2, 1] * py + to_display[2, 2]
                u = (to_display[0, 0] * px + to_display[0, 1] * py + to_display[0, 2]) / den
                v = (to_display[1, 0] * px + to_display[1, 1] * py + to_display[1, 2]) / den
                on = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
                bez_u = s.bezel * cols
                glass = (u >= -bez_u) & (u < cols + bez_u) & (v >= -bez_u) & (v < rows + bez_u)
                front[y0:y1] += glass / (ss * ss)
                iu = np.clip(np.floor(u).astype(np.int64), 0, cols - 1)
                iv = np.clip(np.floor(v).astype(np.int64), 0, rows - 1)
                fu, fv = u - np.floor(u), v - np.floor(v)
                sub = np.clip((fu * 3).astype(np.int64), 0, 2)  # which stripe: R, G, B
                lit = (((fu * 3) - sub) < s.fill) & (fv < 0.5 + s.fill / 2) & on
                # each stripe emits over fill x (1 + fill) / 2 of its third of the pixel: a white pixel averages 1
                val = emit[iv, iu, sub] * lit * (6.0 / (s.fill * (1 + s.fill)))
                for c in range(3):
                    acc[:, :, c] += np.where(sub == c, val, 0.0)
                # outside the display: the housing, then the room
                outside = ~on
                if outside.any():
                    in_bezel = glass & outside
                    wall = s.room_level * s.wall_level * (0.6 + 0.4 * (py / H))
                    level = np.where(in_bezel, s.room_level * s.bezel_level, wall)
                    acc += np.where(outside, level, 0.0)[:, :, None].astype(np.float32)
        lin[y0:y1] = acc / (ss * ss)
    if s.glare:  # a window or lamp reflected in the glass (on the device's front only): broad and soft
        t = rng.uniform(0.15, 0.85, 2)
        c0, c1, c3 = s.corners[0], s.corners[1], s.corners[3]
        gx, gy = c0 + (c1 - c0) * t[0] + (c3 - c0) * t[1]
        r = _u(rng, 0.05, 0.3) * max(W, H)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        lin += (s.glare * front * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r)))[:, :, None]
    lin = gaussian_blur(lin, s.blur)
    lin *= np.array(s.cast, np.float32)[None, None, :]
    if s.bayer:
        lin = _bayer(lin)
    # auto-exposure, metered on the highlights or on the average (which may clip a bright screen in a
    # dark room); sensor noise; the camera's curve
    luma = lin.mean(axis=2)
    if rng.random() < 0.5:
        lin *= _u(rng, 0.75, 1.0) / max(float(np.percentile(luma, 99.5)), 1e-3)
    else:
        lin *= _u(rng, 0.12, 0.3) / max(float(np.mean(luma)), 1e-3)
    noise = rng.normal(0, 1, lin.shape).astype(np.float32)  # drawn before the shot level, as measured
    lin = lin + noise * np.sqrt(_u(rng, 2e-4, 2e-3) * np.clip(lin, 0, None) + 1e-5)
    enc = np.clip(lin, 0, 1) ** (1 / 2.2)
    img = Image.fromarray((enc * 255 + 0.5).astype(np.uint8))
    return jpeg_bytes(img, s.jpeg_quality), s


def _bayer(lin: np.ndarray) -> np.ndarray:
    """RGGB mosaic, then bilinear demosaicing: what turns a fine grid into colour moire."""
    H, W, _ = lin.shape
    mask = np.zeros((H, W, 3), np.float32)
    mask[0::2, 0::2, 0] = 1
    mask[0::2, 1::2, 1] = 1
    mask[1::2, 0::2, 1] = 1
    mask[1::2, 1::2, 2] = 1
    raw = lin * mask
    out = np.empty_like(lin)
    for c in range(3):
        num = _box3(raw[:, :, c])
        den = _box3(mask[:, :, c])
        out[:, :, c] = num / np.maximum(den, 1e-6)
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    """A 3x3 weighted sum (bilinear kernel 1-2-1), edges extended."""
    p = np.pad(a, 1, mode="edge")
    rows = p[:-2] + 2 * p[1:-1] + p[2:]
    return rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]
