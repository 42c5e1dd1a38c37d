"""Generated out-of-scope images: what a rural clinic might feed a limb-fracture screening aid by mistake.

The model is trained on musculoskeletal limb radiographs (hands, wrists, forearms, legs, hips,
shoulders). Shown a chest film, a skull, a CT printout, an ultrasound still, a phone screenshot, a
page of text or a holiday photo, it still answers "fracture" or "no fracture", and a confident "no
fracture found" on a chest film is worse than no answer. These sets exist to measure the
out-of-scope gate that should refuse such images: how many of each kind it lets through.

They are generated (numpy and Pillow only, deterministic by seed), so tests, CI and the device need
no downloads and carry no patient data. Every parameter of every image (size, aspect, sub-style,
contrast, brightness, gamma, noise, blur, rotation, storage mode, JPEG quality) is drawn from the
image's own generator over a wide range, so a gate cannot be tuned to one look. Tune a gate on one
seed and report it on another: a gate measured on the seed it was tuned on says little.

    python -m fracdata.ood --out /tmp/ood --n 30 --seed 1
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .progress import progress as progress_of

GENERATOR_VERSION = 1
KINDS: Tuple[str, ...] = ("colour_photo", "text_page", "chest", "skull", "ct_slice", "ultrasound", "screenshot")
RADIOGRAPH_KINDS = ("chest", "skull", "ct_slice")  # grayscale, bright = dense; sometimes 16-bit
MIN_SIDE, MAX_SIDE = 320, 1600  # output sides, pixels
WORK_MAX = 800  # drawn at most this large, then resized up: keeps a set quick to make
MARKER = "ood_set.json"
BICUBIC = Image.Resampling.BICUBIC

Size = Tuple[int, int]  # (w, h), as Pillow has it
RGB = Tuple[float, float, float]  # 0..1


# ---------------------------------------------------------------------------------------------
# Shared helpers: sizes, coordinates, noise, blur, colour, text
# ---------------------------------------------------------------------------------------------

def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _pick(rng: np.random.Generator, options: Sequence, p: Optional[Sequence[float]] = None):
    """One of `options` (any objects), with probabilities `p`."""
    if p is not None:
        p = np.asarray(p, dtype=float) / np.sum(p)
    return options[int(rng.choice(len(options), p=p))]


def _sizes(rng: np.random.Generator, ratio: Tuple[float, float] = (1.0, 1.6), portrait_p: float = 0.5,
           work_max: int = WORK_MAX) -> Tuple[Size, Size]:
    """(output (w, h), working (w, h)). Output sides lie in [MIN_SIDE, MAX_SIDE] with long/short
    drawn from `ratio`; the working size has the same aspect and a long side <= work_max, so the
    drawing stays fast and a large output is a resize up (as a photo of a small print is)."""
    r = _u(rng, *ratio)
    long_side = float(np.exp(rng.uniform(np.log(MIN_SIDE * r), np.log(MAX_SIDE))))
    short = long_side / r
    w, h = (short, long_side) if rng.random() < portrait_p else (long_side, short)
    out = (int(np.clip(round(w), MIN_SIDE, MAX_SIDE)), int(np.clip(round(h), MIN_SIDE, MAX_SIDE)))
    k = min(1.0, work_max / max(out))
    return out, (max(32, int(round(out[0] * k))), max(32, int(round(out[1] * k))))


def _coords(w: int, h: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel (y, x) as a broadcastable column and row (float32)."""
    return (np.arange(h, dtype=np.float32)[:, None] + 0.5, np.arange(w, dtype=np.float32)[None, :] + 0.5)


def _rho(y, x, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Elliptic radius about (cy, cx): 1 on the ellipse with semi-axes (ry, rx) turned by `angle`."""
    dy, dx = y - cy, x - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = c * dy - s * dx, s * dy + c * dx
    return np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)


def _inside(rho: np.ndarray, soft: float = 0.03, at: float = 1.0) -> np.ndarray:
    """1 inside the level set rho < at, 0 outside, with a ramp `soft` wide (in rho units)."""
    return np.clip((at - rho) / soft + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: float) -> np.ndarray:
    """Zero-mean, unit-std noise with about `cells` blobs across the long side: a small random
    grid upsampled bicubically (fast, and smooth at any size)."""
    k = cells / max(w, h)
    gw, gh = max(2, int(np.ceil(w * k)) + 1), max(2, int(np.ceil(h * k)) + 1)
    small = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32))
    big = np.asarray(small.resize((w, h), BICUBIC), dtype=np.float32)
    return (big - big.mean()) / (big.std() + 1e-6)


def _fractal(rng: np.random.Generator, w: int, h: int, cells: float = 3.0, octaves: int = 4,
             gain: float = 0.55) -> np.ndarray:
    """Unit-std noise with detail at several scales (clouds, foliage, tissue texture)."""
    total = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        total += amp * _smooth_noise(rng, w, h, cells * 2 ** o)
        amp *= gain
    return total / (total.std() + 1e-6)


def _box(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Running mean over 2r+1 samples along `axis` (edges repeated)."""
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float32)
    hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
    lo = np.take(c, np.arange(n), axis=axis)
    return (hi - lo) / (2 * r + 1)


def _tap3(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """[k, 1-2k, k] smoothing with variance sigma^2 along `axis`, for blurs under a pixel."""
    k = min(0.5, sigma * sigma / 2)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 1)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    return (1 - 2 * k) * a + k * (np.take(p, np.arange(n), axis=axis) + np.take(p, np.arange(2, n + 2), axis=axis))


def _blur(a: np.ndarray, sigma_y: float, sigma_x: Optional[float] = None) -> np.ndarray:
    """Gaussian-like blur of a float (h, w) or (h, w, c) array: three box passes per axis (cost
    independent of sigma), a 3-tap kernel under a pixel. Pillow does not blur float images."""
    sigma_x = sigma_y if sigma_x is None else sigma_x
    out = a.astype(np.float32, copy=False)
    for axis, sigma in ((0, sigma_y), (1, sigma_x)):
        if sigma < 0.25:
            continue
        if sigma < 1.0:
            out = _tap3(out, sigma, axis)
            continue
        r = max(1, int(round((np.sqrt(4 * sigma * sigma + 1) - 1) / 2)))
        for _ in range(3):
            out = _box(out, r, axis)
    return out


def _canvas(w: int, h: int, value: float = 0.0) -> Tuple[Image.Image, ImageDraw.ImageDraw]:
    """A float ("F") image and its pen: shapes are painted with their value, in painter's order."""
    im = Image.new("F", (w, h), float(value))
    return im, ImageDraw.Draw(im)


def _arr(im: Image.Image) -> np.ndarray:
    return np.array(im, dtype=np.float32)


def _hsv(h: float, s: float, v: float) -> RGB:
    return colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))


def _c255(c: RGB) -> Tuple[int, int, int]:
    return tuple(int(np.clip(round(v * 255), 0, 255)) for v in c)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(x + (y - x) * t for x, y in zip(a, b))  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _font(size: int):
    """Pillow's own font at `size` px where this Pillow can scale it (10.1+ with FreeType), else
    its fixed bitmap font: nothing to download, nothing from the system."""
    try:
        return ImageFont.load_default(size=max(6, int(size)))
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _text_len(font, text: str) -> float:
    try:
        return float(font.getlength(text))
    except AttributeError:  # very old Pillow
        return 6.0 * len(text)


_WORDS = (
    "the of and to in is for on with as by at from this that be are was it or an not which have all new more one "
    "report page date time summary table total value note section figure data results method sample water market "
    "village road school health price order account number name address phone email meeting plan season harvest "
    "rain supply stock week month year district office notice form signature item amount balance service training "
    "community member record review budget transport fuel seed crop cattle loan payment receipt invoice schedule "
    "project team update weather river bridge clinic staff visit stores delivery committee minutes agenda"
).split()
_NAMES = ("Amina", "Joseph", "Grace", "Peter", "Fatima", "David", "Mary", "Samuel", "Ruth", "Daniel", "Esther",
          "John", "Aisha", "Moses", "Naomi", "Paul", "Sarah", "Isaac", "Lucy", "Kofi", "Thandi", "Ravi", "Mei")


def _words(rng: np.random.Generator, n: int, capital: bool = True, numbers: float = 0.08) -> str:
    """n filler words (sometimes a number), as a sentence fragment."""
    out = []
    for i in range(max(1, n)):
        if rng.random() < numbers:
            out.append(str(int(rng.integers(1, 10 ** int(rng.integers(1, 5))))))
        else:
            out.append(_WORDS[int(rng.integers(len(_WORDS)))])
    if capital:
        out[0] = out[0].capitalize()
    return " ".join(out)


def _title(rng: np.random.Generator, n: int) -> str:
    return " ".join(_WORDS[int(rng.integers(len(_WORDS)))].capitalize() for _ in range(max(1, n)))


def _line_to_width(rng: np.random.Generator, font, width: float) -> str:
    """Filler words that just fit `width` pixels in `font`."""
    text = _words(rng, 1)
    while True:
        longer = text + " " + _words(rng, 1, capital=False)
        if _text_len(font, longer) > width:
            return text
        text = longer


def _bold(draw: ImageDraw.ImageDraw, xy, text: str, font, fill) -> None:
    """Text drawn twice a pixel apart: a heading's weight without a bold font."""
    draw.text(xy, text, font=font, fill=fill)
    draw.text((xy[0] + 1, xy[1]), text, font=font, fill=fill)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG round trip: blocking and ringing, as a phone or a web page leaves them."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


# ---------------------------------------------------------------------------------------------
# Finishing: radiometry, orientation, size, storage mode
# ---------------------------------------------------------------------------------------------

def _radiometry(img: np.ndarray, rng: np.random.Generator, noise=(0.003, 0.03), blur=(0.0, 1.2),
                contrast=(0.75, 1.3), brightness=(-0.08, 0.08), gamma=(0.7, 1.45)) -> np.ndarray:
    """Blur, sensor noise, contrast, brightness and gamma, each drawn over its range; 0..1 in and out."""
    img = _blur(img, _u(rng, *blur))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * _u(rng, *noise)
    img = (img - 0.5) * _u(rng, *contrast) + 0.5 + _u(rng, *brightness)
    return np.clip(img, 0.0, 1.0) ** _u(rng, *gamma)


def _orient(im: Image.Image, rng: np.random.Generator, out: Size, flip_p: float, rot90_p: float,
            tilt: float, fill) -> Tuple[Image.Image, Size]:
    """Mirror, quarter-turn (sides swap) and a small tilt, as films and photos arrive."""
    if rng.random() < flip_p:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < rot90_p:
        im = im.transpose(_pick(rng, (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)))
        out = (out[1], out[0])
    if tilt > 0:
        angle = _u(rng, -tilt, tilt)
        if abs(angle) > 0.3:
            im = im.rotate(angle, BICUBIC, fillcolor=fill)
    return im, out


def _gray_out(img: np.ndarray, rng: np.random.Generator, out: Size, sixteen_p: float = 0.0,
              rgb_p: float = 0.35, flip_p: float = 0.3, rot90_p: float = 0.05, tilt: float = 4.0,
              radiometry: bool = True) -> Image.Image:
    """A 0..1 grayscale drawing at working size -> the stored image: resized to `out`, then 16-bit
    ("I;16", full 16-bit range or a 12/14-bit detector's), grey in an RGB file, or "L"."""
    if radiometry:
        img = _radiometry(img, rng)
    im = Image.fromarray(np.clip(img, 0, 1).astype(np.float32))
    im, out = _orient(im, rng, out, flip_p, rot90_p, tilt, fill=float(np.median(img[:4, :4])))
    if im.size != out:
        im = im.resize(out, BICUBIC)
    a = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
    r = rng.random()
    if r < sixteen_p:
        top = float(_pick(rng, (4095, 16383, 65535)))
        return Image.fromarray((a * top + 0.5).astype(np.uint16))
    g = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
    return g.convert("RGB") if rng.random() < rgb_p else g


def _colour_out(im: Image.Image, rng: np.random.Generator, out: Size, noise=(0.0, 0.03), blur=(0.0, 0.9),
                cast: float = 0.12, jpeg_p: float = 0.5, gray_p: float = 0.0, tilt: float = 0.0,
                fill=(0, 0, 0)) -> Image.Image:
    """An RGB drawing at working size -> the stored image: colour cast, contrast, gamma, noise,
    blur, maybe a JPEG round trip, resized to `out` (or kept grey where `gray_p` says)."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    a = a * np.array([_u(rng, 1 - cast, 1 + cast) for _ in range(3)], np.float32)
    a = (a - 0.5) * _u(rng, 0.8, 1.2) + 0.5 + _u(rng, -0.06, 0.06)
    a = _blur(a, _u(rng, *blur))
    a = a + rng.standard_normal(a.shape, dtype=np.float32) * _u(rng, *noise)
    a = np.clip(a, 0, 1) ** _u(rng, 0.8, 1.25)
    im = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
    im, out = _orient(im, rng, out, 0.0, 0.0, tilt, fill)
    if rng.random() < jpeg_p:
        im = _jpeg(im, int(rng.integers(35, 95)))
    if im.size != out:
        im = im.resize(out, BICUBIC)
    return im.convert("L") if rng.random() < gray_p else im


# ---------------------------------------------------------------------------------------------
# colour_photo
# ---------------------------------------------------------------------------------------------

SKIN = ((0.96, 0.80, 0.69), (0.85, 0.64, 0.49), (0.63, 0.43, 0.30), (0.42, 0.28, 0.19), (0.30, 0.20, 0.14))


def _vertical_gradient(h: int, w: int, top: RGB, bottom: RGB, y0: float = 0.0, y1: float = 1.0) -> np.ndarray:
    """(h, w, 3) gradient from `top` at row fraction y0 to `bottom` at y1."""
    t = np.clip((np.linspace(0, 1, h, dtype=np.float32) - y0) / max(1e-3, y1 - y0), 0, 1)[:, None, None]
    return np.broadcast_to(np.array(top, np.float32) * (1 - t) + np.array(bottom, np.float32) * t, (h, w, 3)).copy()


def _person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, feet: float, height: float) -> None:
    """A person-like figure: head, hair, torso, arms, legs, in drawn colours."""
    skin = _c255(_pick(rng, SKIN))
    cloth = _c255(_hsv(rng.random(), _u(rng, 0.2, 0.9), _u(rng, 0.2, 0.95)))
    legs = _c255(_hsv(rng.random(), _u(rng, 0.0, 0.6), _u(rng, 0.1, 0.6)))
    head = height * 0.13
    top = feet - height
    sw = height * _u(rng, 0.12, 0.17)  # half shoulder width
    draw.line([(cx - sw * 0.5, feet - height * 0.48), (cx - sw * 0.6, feet)], fill=legs, width=max(2, int(sw * 0.45)))
    draw.line([(cx + sw * 0.5, feet - height * 0.48), (cx + sw * 0.6, feet)], fill=legs, width=max(2, int(sw * 0.45)))
    draw.rounded_rectangle((cx - sw, top + head * 1.9, cx + sw, feet - height * 0.42), radius=max(1, int(sw * 0.4)),
                           fill=cloth)
    for side in (-1, 1):
        hand = (cx + side * sw * _u(rng, 1.1, 2.2), top + head * _u(rng, 3.0, 5.5))
        draw.line([(cx + side * sw * 0.9, top + head * 2.1), hand], fill=cloth, width=max(2, int(sw * 0.35)))
        draw.ellipse((hand[0] - sw * 0.18, hand[1] - sw * 0.18, hand[0] + sw * 0.18, hand[1] + sw * 0.18), fill=skin)
    draw.ellipse((cx - head * 0.8, top, cx + head * 0.8, top + head * 2), fill=skin)
    hair = _c255(_hsv(_u(rng, 0.02, 0.1), _u(rng, 0.2, 0.8), _u(rng, 0.05, 0.5)))
    draw.chord((cx - head * 0.85, top - head * 0.1, cx + head * 0.85, top + head * 1.4), 180, 360, fill=hair)


def _landscape(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    horizon = _u(rng, 0.3, 0.7)
    sunset = rng.random() < 0.3
    sky_top = _hsv(_u(rng, 0.0, 0.1), _u(rng, 0.5, 0.9), _u(rng, 0.5, 0.9)) if sunset else \
        _hsv(_u(rng, 0.54, 0.66), _u(rng, 0.35, 0.85), _u(rng, 0.55, 1.0))
    sky_low = _mix(sky_top, (1.0, _u(rng, 0.85, 1.0), _u(rng, 0.7, 1.0)), _u(rng, 0.3, 0.8))
    img = _vertical_gradient(h, w, sky_top, sky_low, 0.0, horizon)
    clouds = np.clip(_fractal(rng, w, h, 2.5, 4) - _u(rng, 0.2, 1.4), 0, 1)[..., None] * _u(rng, 0.3, 0.9)
    img = img * (1 - clouds) + clouds * np.array(_mix((1, 1, 1), sky_low, 0.3), np.float32)
    ground = _pick(rng, ((0.22, 0.35), (0.05, 0.12), (0.1, 0.16), (0.0, 1.0)))  # grass, earth, sand, snow
    snow = ground == (0.0, 1.0)
    g_col = _hsv(rng.random(), 0.05, 0.95) if snow else _hsv(_u(rng, *ground), _u(rng, 0.35, 0.8), _u(rng, 0.3, 0.75))
    hills = horizon * h + _smooth_noise(rng, w, 1, _u(rng, 1.5, 5))[0] * h * _u(rng, 0.0, 0.08)
    yy = np.arange(h, dtype=np.float32)[:, None]
    land = np.clip((yy - hills[None, :]) / 2.0, 0, 1)[..., None]
    depth = np.clip((yy - horizon * h) / max(1.0, (1 - horizon) * h), 0, 1)[..., None]
    texture = 1 + _u(rng, 0.1, 0.35) * _fractal(rng, w, h, _u(rng, 6, 20), 4)[..., None]
    ground_img = np.array(g_col, np.float32) * (0.7 + 0.5 * depth) * texture
    if rng.random() < 0.3:  # water: the sky reflected, in ripples
        ripple = 1 + 0.1 * _smooth_noise(rng, w, h, 40)[..., None]
        water = np.clip(yy - (horizon * h + _u(rng, 0.02, 0.25) * h), 0, 1)[..., None]
        ground_img = ground_img * (1 - water) + water * np.array(_mix(sky_top, sky_low, 0.5), np.float32) * 0.8 * ripple
    img = img * (1 - land) + ground_img * land
    if rng.random() < 0.4:  # sun and its glow
        y, x = _coords(w, h)
        sy, sx = _u(rng, 0.05, horizon) * h, _u(rng, 0.1, 0.9) * w
        glow = np.exp(-(((y - sy) ** 2 + (x - sx) ** 2) / (2 * (0.08 * max(w, h)) ** 2)))[..., None]
        img = img + glow * np.array((1.0, 0.9, 0.6), np.float32) * _u(rng, 0.3, 0.9) * (1 - land)
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 14))):  # trees
        tx = _u(rng, 0, w)
        base = hills[int(np.clip(tx, 0, w - 1))] + _u(rng, 0, 0.3) * h
        th = _u(rng, 0.08, 0.45) * h * (0.5 + base / h)
        leaf = _c255(_hsv(_u(rng, 0.2, 0.4), _u(rng, 0.4, 0.9), _u(rng, 0.15, 0.6)))
        draw.rectangle((tx - th * 0.03, base - th * 0.5, tx + th * 0.03, base), fill=(70, 50, 30))
        for _ in range(int(rng.integers(2, 6))):
            r = th * _u(rng, 0.15, 0.3)
            ox, oy = _u(rng, -0.2, 0.2) * th, _u(rng, 0.45, 0.85) * th
            draw.ellipse((tx + ox - r, base - oy - r, tx + ox + r, base - oy + r), fill=leaf)
    for _ in range(int(rng.integers(0, 4))):
        feet = _u(rng, max(horizon, 0.55), 0.98) * h
        _person(draw, rng, _u(rng, 0.05, 0.95) * w, feet, _u(rng, 0.1, 0.6) * h)
    return im


def _indoor(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    floor = _u(rng, 0.6, 0.88)
    wall = _hsv(rng.random(), _u(rng, 0.05, 0.45), _u(rng, 0.45, 0.95))
    floor_col = _hsv(_u(rng, 0.04, 0.12), _u(rng, 0.3, 0.7), _u(rng, 0.25, 0.7))
    img = _vertical_gradient(h, w, _mix(wall, (0, 0, 0), 0.15), wall, 0, floor)
    fl = _vertical_gradient(h, w, floor_col, _mix(floor_col, (0, 0, 0), 0.3), floor, 1)
    img[int(floor * h):] = fl[int(floor * h):]
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    if rng.random() < 0.7:  # a window, bright
        x0, y0 = _u(rng, 0.05, 0.6) * w, _u(rng, 0.05, 0.3) * h
        x1, y1 = x0 + _u(rng, 0.15, 0.35) * w, y0 + _u(rng, 0.2, 0.4) * h
        draw.rectangle((x0, y0, x1, y1), fill=_c255(_hsv(_u(rng, 0.5, 0.6), _u(rng, 0.05, 0.4), 1.0)),
                       outline=(240, 240, 235), width=max(2, int(w * 0.01)))
        draw.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)], fill=(240, 240, 235), width=max(2, int(w * 0.008)))
    for _ in range(int(rng.integers(1, 5))):  # furniture
        x0 = _u(rng, -0.1, 0.9) * w
        fw, fh = _u(rng, 0.1, 0.4) * w, _u(rng, 0.08, 0.35) * h
        base = _u(rng, floor, 1.0) * h
        draw.rounded_rectangle((x0, base - fh, x0 + fw, base), radius=int(fh * 0.1),
                               fill=_c255(_hsv(rng.random(), _u(rng, 0.1, 0.8), _u(rng, 0.15, 0.8))))
    for _ in range(int(rng.integers(1, 5))):
        _person(draw, rng, _u(rng, 0.1, 0.9) * w, _u(rng, floor, 1.05) * h, _u(rng, 0.3, 0.8) * h)
    return im


def _street(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    horizon = _u(rng, 0.45, 0.7)
    img = _vertical_gradient(h, w, _hsv(_u(rng, 0.55, 0.65), _u(rng, 0.2, 0.7), _u(rng, 0.6, 1.0)),
                             (0.9, 0.92, 0.95), 0, horizon)
    road = _hsv(0, 0, _u(rng, 0.25, 0.55))
    rows = h - int(horizon * h)
    img[int(horizon * h):] = np.array(road, np.float32) * (1 + 0.15 * _fractal(rng, w, rows, 30, 3))[..., None]
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    x = _u(rng, -0.1, 0) * w
    while x < w:  # buildings with window grids
        bw, bh = _u(rng, 0.1, 0.3) * w, _u(rng, 0.15, horizon * 0.95) * h
        col = _hsv(rng.random(), _u(rng, 0.05, 0.6), _u(rng, 0.3, 0.95))
        draw.rectangle((x, horizon * h - bh, x + bw, horizon * h), fill=_c255(col))
        win = _c255(_mix(col, _pick(rng, ((0.1, 0.1, 0.15), (0.9, 0.9, 0.7))), 0.6))
        step = max(4.0, bw * _u(rng, 0.12, 0.25))
        for wy in np.arange(horizon * h - bh + step * 0.5, horizon * h - step, step):
            for wx in np.arange(x + step * 0.3, x + bw - step * 0.6, step):
                draw.rectangle((wx, wy, wx + step * 0.5, wy + step * 0.55), fill=win)
        x += bw + _u(rng, 0, 0.03) * w
    for k in range(int(rng.integers(0, 8))):  # lane marks
        lx = (k + 0.5) / 8 * w
        draw.rectangle((lx, (horizon + 0.55 * (1 - horizon)) * h, lx + w * 0.05, (horizon + 0.57 * (1 - horizon)) * h),
                       fill=(235, 235, 225))
    for _ in range(int(rng.integers(0, 5))):  # cars
        cw = _u(rng, 0.12, 0.3) * w
        cx, base = _u(rng, 0, 1) * w, _u(rng, horizon + 0.1, 0.98) * h
        draw.rounded_rectangle((cx - cw / 2, base - cw * 0.42, cx + cw / 2, base - cw * 0.1), radius=int(cw * 0.08),
                               fill=_c255(_hsv(rng.random(), _u(rng, 0.3, 1.0), _u(rng, 0.3, 1.0))))
        for wx in (cx - cw * 0.3, cx + cw * 0.3):
            draw.ellipse((wx - cw * 0.1, base - cw * 0.2, wx + cw * 0.1, base), fill=(20, 20, 20))
    for _ in range(int(rng.integers(0, 6))):
        _person(draw, rng, _u(rng, 0, 1) * w, _u(rng, horizon, 1.0) * h, _u(rng, 0.15, 0.5) * h)
    return im


def _closeup(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Macro of food, fabric, flowers or leaves: textured colour fields, blobs and bokeh."""
    palette = [np.array(_hsv(rng.random(), _u(rng, 0.3, 1.0), _u(rng, 0.2, 1.0)), np.float32) for _ in range(3)]
    t = 1 / (1 + np.exp(-_u(rng, 1, 4) * _fractal(rng, w, h, _u(rng, 2, 8), 4)))
    s = 1 / (1 + np.exp(-_u(rng, 1, 4) * _fractal(rng, w, h, _u(rng, 4, 16), 3)))
    img = palette[0] * (1 - t[..., None]) + palette[1] * t[..., None]
    img = img * (1 - 0.5 * s[..., None]) + palette[2] * 0.5 * s[..., None]
    if rng.random() < 0.5:  # woven / ridged texture
        y, x = _coords(w, h)
        f = _u(rng, 0.05, 0.5)
        weave = np.sin(x * f + _u(rng, 0, 6)) * np.sin(y * f * _u(rng, 0.5, 2))
        img = img * (1 + _u(rng, 0.04, 0.12) * weave)[..., None]
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 12))):  # flowers / fruit
        r = _u(rng, 0.02, 0.15) * max(w, h)
        cx, cy = _u(rng, 0, w), _u(rng, 0, h)
        col = _c255(_hsv(rng.random(), _u(rng, 0.5, 1.0), _u(rng, 0.5, 1.0)))
        petals = int(rng.integers(0, 8))
        for k in range(petals):
            a = 2 * np.pi * k / petals
            px, py = cx + np.cos(a) * r * 0.7, cy + np.sin(a) * r * 0.7
            draw.ellipse((px - r * 0.45, py - r * 0.45, px + r * 0.45, py + r * 0.45), fill=col)
        draw.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5),
                     fill=_c255(_hsv(rng.random(), _u(rng, 0.4, 1), _u(rng, 0.4, 1))) if petals else col)
    return im


PHOTO_STYLES: Dict[str, Callable[[np.random.Generator, int, int], Image.Image]] = {
    "landscape": _landscape, "indoor": _indoor, "street": _street, "closeup": _closeup}


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """One colour scene at (w, h), lit unevenly and softened a little (shared by screenshots)."""
    style = _pick(rng, tuple(PHOTO_STYLES))
    im = PHOTO_STYLES[style](rng, w, h)
    a = np.asarray(im, dtype=np.float32) / 255
    y, x = _coords(w, h)
    ang = _u(rng, 0, 2 * np.pi)
    light = 1 + _u(rng, 0, 0.35) * ((x / w - 0.5) * np.cos(ang) + (y / h - 0.5) * np.sin(ang))
    vignette = 1 - _u(rng, 0, 0.45) * (((x / w - 0.5) ** 2 + (y / h - 0.5) ** 2) * 2)
    a = _blur(a, _u(rng, 0.3, 1.5)) * (light * vignette)[..., None]
    sat = _u(rng, 0.6, 1.4)
    grey = a.mean(axis=2, keepdims=True)
    a = grey + (a - grey) * sat
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))


def render_colour_photo(rng: np.random.Generator) -> Image.Image:
    """A phone-camera-like colour scene: landscape, indoor with people, street, or a close-up."""
    out, (w, h) = _sizes(rng, (1.0, 1.9), portrait_p=0.35)
    return _colour_out(_photo(rng, w, h), rng, out, noise=(0.0, 0.04), blur=(0.0, 1.0), jpeg_p=0.85)


# ---------------------------------------------------------------------------------------------
# text_page
# ---------------------------------------------------------------------------------------------

def _paragraph(draw, rng, x0: float, x1: float, y: float, size: int, ink, lines: int) -> float:
    font = _font(size)
    step = size * _u(rng, 1.15, 1.7)
    for i in range(lines):
        indent = size * 2 if i == 0 and rng.random() < 0.4 else 0
        width = (x1 - x0 - indent) * (_u(rng, 0.3, 0.9) if i == lines - 1 else 1.0)
        draw.text((x0 + indent, y), _line_to_width(rng, font, width), font=font, fill=ink)
        y += step
    return y + step * _u(rng, 0.3, 0.9)


def _table(draw, rng, x0: float, x1: float, y: float, size: int, ink, rule, header_fill) -> float:
    font = _font(size)
    cols = int(rng.integers(2, 6))
    rows = int(rng.integers(3, 10))
    widths = rng.dirichlet(np.ones(cols) * 3) * (x1 - x0)
    edges = x0 + np.concatenate([[0], np.cumsum(widths)])
    row_h = size * _u(rng, 1.5, 2.1)
    if header_fill is not None:
        draw.rectangle((x0, y, x1, y + row_h), fill=header_fill)
    lined = rng.random() < 0.7
    for r in range(rows):
        for c in range(cols):
            if r == 0:
                text = _title(rng, 1)
            elif rng.random() < 0.5:
                text = f"{_u(rng, 0, 10 ** int(rng.integers(1, 5))):.{int(rng.integers(0, 3))}f}"
            else:
                text = _words(rng, int(rng.integers(1, 3)), numbers=0.2)
            while text and _text_len(font, text) > widths[c] - size * 0.6:
                text = text[:-1]
            xy = (edges[c] + size * 0.3, y + row_h * 0.2)
            if r == 0:
                _bold(draw, xy, text, font, ink)
            else:
                draw.text(xy, text, font=font, fill=ink)
        y += row_h
        if lined or r == 0:
            draw.line([(x0, y), (x1, y)], fill=rule, width=1)
    if lined:
        for e in edges:
            draw.line([(e, y - rows * row_h), (e, y)], fill=rule, width=1)
    return y + row_h * 0.8


def _bullets(draw, rng, x0: float, x1: float, y: float, size: int, ink) -> float:
    font = _font(size)
    numbered = rng.random() < 0.4
    for k in range(int(rng.integers(2, 7))):
        if numbered:
            draw.text((x0, y), f"{k + 1}.", font=font, fill=ink)
        else:
            r = max(1.0, size * 0.15)
            draw.ellipse((x0 + size * 0.4 - r, y + size * 0.55 - r, x0 + size * 0.4 + r, y + size * 0.55 + r), fill=ink)
        draw.text((x0 + size * 1.6, y), _line_to_width(rng, font, (x1 - x0 - size * 1.6) * _u(rng, 0.4, 1.0)),
                  font=font, fill=ink)
        y += size * _u(rng, 1.3, 1.8)
    return y + size * 0.6


def _layout_page(draw, rng, box, ink, accent, muted, paper, size: int, form: bool) -> None:
    """Heading, then paragraphs, tables, lists and rules until the page is full, then a footer."""
    x0, y0, x1, y1 = box
    head = _font(int(size * _u(rng, 1.4, 2.4)))
    title = _title(rng, int(rng.integers(2, 6)))
    tw = _text_len(head, title)
    hx = x0 + ((x1 - x0 - tw) / 2 if rng.random() < 0.4 else 0)
    _bold(draw, (hx, y0), title, head, accent)
    y = y0 + head.size * 1.5 if hasattr(head, "size") else y0 + size * 3
    if rng.random() < 0.7:
        small = _font(max(7, int(size * 0.85)))
        date = f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1998, 2031))}"
        draw.text((x0, y), f"{date}   Ref {int(rng.integers(100, 99999))}   {_words(rng, 3)}", font=small, fill=muted)
        y += size * 1.8
    if rng.random() < 0.6:
        draw.line([(x0, y), (x1, y)], fill=accent, width=max(1, size // 8))
        y += size
    columns = 2 if (not form and rng.random() < 0.25) else 1
    gap = size * 1.5
    col_w = (x1 - x0 - gap * (columns - 1)) / columns
    p = (0.25, 0.35, 0.1, 0.1, 0.2) if form else (0.6, 0.12, 0.12, 0.06, 0.1)
    y_top = y
    for c in range(columns):
        cx0, cx1 = x0 + c * (col_w + gap), x0 + c * (col_w + gap) + col_w
        y = y_top
        while y < y1 - size * 3:
            block = _pick(rng, ("para", "table", "bullets", "rule", "subhead"), p)
            if block == "para":
                y = _paragraph(draw, rng, cx0, cx1, y, size, ink, int(rng.integers(2, 9)))
            elif block == "table":
                hf = _c255(_mix(paper, (0.5, 0.5, 0.5), 0.25)) if rng.random() < 0.5 else None
                y = _table(draw, rng, cx0, cx1, y, size, ink, muted, hf)
            elif block == "bullets":
                y = _bullets(draw, rng, cx0, cx1, y, size, ink)
            elif block == "rule":
                draw.line([(cx0, y), (cx1, y)], fill=muted, width=1)
                y += size
            else:
                sub = _font(int(size * _u(rng, 1.1, 1.5)))
                _bold(draw, (cx0, y), _title(rng, int(rng.integers(1, 5))), sub, accent)
                y += size * 2.2
            if y > y1:
                break
    if rng.random() < 0.7:
        small = _font(max(7, int(size * 0.8)))
        draw.text(((x0 + x1) / 2 - size, y1 + size * 0.6), f"- {int(rng.integers(1, 40))} -", font=small, fill=muted)


def _page_colours(rng: np.random.Generator, dark: bool):
    """(paper, ink, accent, muted) for a printed page or a dark-mode screen."""
    if dark:
        paper = _hsv(rng.random(), _u(rng, 0, 0.3), _u(rng, 0.05, 0.22))
        ink = _hsv(rng.random(), _u(rng, 0, 0.15), _u(rng, 0.75, 0.97))
        accent = _hsv(rng.random(), _u(rng, 0.3, 0.8), _u(rng, 0.7, 1.0))
    else:
        paper = _hsv(_u(rng, 0.08, 0.16), _u(rng, 0.0, 0.18), _u(rng, 0.82, 1.0))
        ink = _pick(rng, ((0.05, 0.05, 0.05), (0.12, 0.12, 0.15), (0.05, 0.1, 0.45), (0.3, 0.18, 0.1),
                          (0.25, 0.25, 0.25)))  # black, grey, blue, brown
        accent = _hsv(rng.random(), _u(rng, 0.5, 1.0), _u(rng, 0.3, 0.7)) if rng.random() < 0.5 else ink
    return paper, ink, accent, _mix(ink, paper, 0.45)


def _page(rng: np.random.Generator, w: int, h: int, dark: bool, form: bool) -> Image.Image:
    paper, ink, accent, muted = _page_colours(rng, dark)
    im = Image.new("RGB", (w, h), _c255(paper))
    draw = ImageDraw.Draw(im)
    margin = _u(rng, 0.05, 0.13)
    mx, my = margin * w, margin * h * _u(rng, 0.7, 1.1)
    size = max(7, int(min(w, h) * _u(rng, 0.017, 0.04)))
    _layout_page(draw, rng, (mx, my, w - mx, h - my), _c255(ink), _c255(accent), _c255(muted), paper, size, form)
    return im


def _photographed(page: Image.Image, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """`page` as a phone photo of it: on a desk, turned, unevenly lit, a little soft."""
    surface = np.array(_hsv(rng.random(), _u(rng, 0.05, 0.6), _u(rng, 0.1, 0.7)), np.float32)
    bg = surface * (1 + _u(rng, 0.05, 0.3) * _fractal(rng, w, h, _u(rng, 3, 30), 3))[..., None]
    canvas = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8))
    scale = _u(rng, 0.65, 0.98) * min(w / page.width, h / page.height)
    pw, ph = max(8, int(page.width * scale)), max(8, int(page.height * scale))
    turned = page.convert("RGBA").resize((pw, ph), BICUBIC).rotate(_u(rng, -14, 14), BICUBIC, expand=True)
    x = int((w - turned.width) / 2 + _u(rng, -0.1, 0.1) * w)
    y = int((h - turned.height) / 2 + _u(rng, -0.1, 0.1) * h)
    canvas.paste(turned, (x, y), turned)
    a = np.asarray(canvas, dtype=np.float32) / 255
    yy, xx = _coords(w, h)
    ang = _u(rng, 0, 2 * np.pi)
    light = 1 + _u(rng, 0.1, 0.5) * ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang))
    shadow = 1 - _u(rng, 0, 0.35) * np.exp(-((xx / w - _u(rng, 0, 1)) ** 2) / 0.05)
    a = a * (light * shadow)[..., None] * np.array((1, _u(rng, 0.92, 1.02), _u(rng, 0.8, 1.02)), np.float32)
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))


def render_text_page(rng: np.random.Generator) -> Image.Image:
    """A document page, scanned (flat, sometimes fax-like), photographed on a desk, or on a dark screen."""
    style = _pick(rng, ("scan", "photo", "dark", "form"), (0.35, 0.3, 0.15, 0.2))
    out, (w, h) = _sizes(rng, (1.2, 1.55), portrait_p=0.8)
    if style == "photo":
        page = _page(rng, int(w * _u(rng, 0.7, 0.95)), int(h * _u(rng, 0.7, 0.95)), dark=False, form=rng.random() < 0.3)
        return _colour_out(_photographed(page, rng, w, h), rng, out, noise=(0.005, 0.04), blur=(0.3, 1.5),
                           jpeg_p=0.8, gray_p=0.1)
    im = _page(rng, w, h, dark=style == "dark", form=style == "form")
    if style == "dark":
        return _colour_out(im, rng, out, noise=(0, 0.01), blur=(0, 0.5), cast=0.05, jpeg_p=0.4, gray_p=0.2)
    if rng.random() < 0.15:  # fax / photocopy: hard black and white
        im = im.convert("L").point(lambda v, t=int(rng.integers(110, 190)): 255 if v > t else 0)
    paper = im.getpixel((2, 2))
    fill = paper if isinstance(paper, tuple) else (paper,) * 3
    return _colour_out(im, rng, out, noise=(0.0, 0.03), blur=(0.0, 1.0), cast=0.06, jpeg_p=0.5,
                       gray_p=0.45, tilt=3.0, fill=tuple(fill)[:3])


# ---------------------------------------------------------------------------------------------
# chest
# ---------------------------------------------------------------------------------------------

def _curve(points: Sequence[Tuple[float, float]], n: int = 24) -> List[Tuple[float, float]]:
    """A smooth path through control points (Catmull-Rom), for ribs, clavicles and jaws."""
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([p[0], p, p[-1]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        for t in np.linspace(0, 1, n, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(tuple(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                                    + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)))
    out.append(tuple(p[-2]))
    return out


def _bone_line(draw, pts, width: float, cortex: float = 1.0, medulla: float = 0.65) -> None:
    """A tubular bone along `pts`: bright cortical edges, a dimmer middle."""
    draw.line(pts, fill=cortex, width=max(1, int(round(width))), joint="curve")
    if width >= 4:
        draw.line(pts, fill=medulla, width=max(1, int(round(width * 0.55))), joint="curve")


def _vertebrae(draw, rng, cx: float, y0: float, y1: float, width: float, value: float = 1.0) -> None:
    """A column of vertebral bodies with disc gaps and pedicle rings."""
    n = max(3, int((y1 - y0) / (width * _u(rng, 0.7, 0.95))))
    step = (y1 - y0) / n
    for k in range(n):
        top = y0 + k * step
        draw.rounded_rectangle((cx - width / 2, top, cx + width / 2, top + step * 0.8),
                               radius=max(1, int(width * 0.15)), fill=value * 0.75, outline=value,
                               width=max(1, int(width * 0.08)))
        for side in (-1, 1):
            px = cx + side * width * 0.3
            r = width * 0.11
            draw.ellipse((px - r, top + step * 0.25 - r, px + r, top + step * 0.25 + r), outline=value,
                         width=max(1, int(r * 0.5)))


def _chest_pa(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    y, x = _coords(w, h)
    cx, half = w * _u(rng, 0.45, 0.55), w * _u(rng, 0.36, 0.47)  # mid-line and half-width of the thorax
    top, base = h * _u(rng, 0.08, 0.2), h * _u(rng, 0.66, 0.85)
    air = _u(rng, 0.02, 0.1)
    body = np.maximum(_inside(_rho(y, x, h * 0.7, cx, h * 0.75, half * _u(rng, 1.08, 1.25)), 0.04),
                      _inside(_rho(y, x, 0, cx, top * 1.6, half * 0.3), 0.1))
    img = air + body * _u(rng, 0.28, 0.42) + _fractal(rng, w, h, 4, 3) * 0.015
    # Lungs: widening from the apex, cut by the diaphragm domes; the heart pushes the left lung out.
    t = np.clip((y - top) / (base - top), 0, 1.2)
    ax = np.abs(x - cx)
    lat = half * (0.25 + 0.68 * np.sqrt(np.clip(t, 0, 1)))
    med0 = half * _u(rng, 0.14, 0.22)
    heart_side = 1
    heart = half * _u(rng, 0.2, 0.4) * np.clip(np.sin(np.clip((t - 0.35) / 0.75, 0, 1) * np.pi * 0.75), 0, 1)
    lungs = np.zeros((h, w), np.float32)
    for side in (-1, 1):
        med = med0 + (heart if side == heart_side else 0.0)
        mx, hw = (med0 + half * 0.92) / 2, (half * 0.92 - med0) / 2
        dome_h = h * _u(rng, 0.03, 0.09)
        dome = base + (h * 0.02 if side == 1 else 0) - dome_h * np.clip(1 - ((ax - mx) / hw) ** 2, 0, 1)
        lung = (np.clip((ax - med) / 4, 0, 1) * np.clip((lat - ax) / 4, 0, 1) * np.clip((y - top) / 6, 0, 1)
                * np.clip((dome - y) / 3, 0, 1) * ((x - cx) * side > 0))
        lungs = np.maximum(lungs, lung)
    lungs = _blur(lungs, max(1.5, w * _u(rng, 0.006, 0.015)))
    vessels, pen = _canvas(w, h)
    for side in (-1, 1):  # vascular markings fanning out from the hila
        hx, hy = cx + side * (med0 + half * 0.1), top + (base - top) * _u(rng, 0.4, 0.55)
        for _ in range(int(rng.integers(5, 10))):
            ang = _u(rng, -1.2, 1.4)
            length = half * _u(rng, 0.3, 0.7)
            ex, ey = hx + side * np.cos(ang) * length, hy - np.sin(ang) * length * 0.9
            pen.line(_curve([(hx, hy), ((hx + ex) / 2 + _u(rng, -8, 8), (hy + ey) / 2 + _u(rng, -8, 8)), (ex, ey)], 8),
                     fill=1.0, width=max(1, int(w * _u(rng, 0.004, 0.009))))
    markings = _blur(_arr(vessels), 1.5) * _u(rng, 0.05, 0.12) + np.clip(_fractal(rng, w, h, 12, 3), 0, None) * 0.02
    img = img - lungs * (_u(rng, 0.18, 0.28) - markings)
    bones, pen = _canvas(w, h)
    _vertebrae(pen, rng, cx, top * 0.3, h * 1.02, half * _u(rng, 0.13, 0.18), 0.7)
    n_ribs = int(rng.integers(9, 12))
    spacing = (base - top) / n_ribs * _u(rng, 0.95, 1.15)
    rib_w = h * _u(rng, 0.012, 0.02)
    for side in (-1, 1):
        for k in range(n_ribs):
            ry = top + (k + _u(rng, -0.1, 0.1)) * spacing * 0.95 - spacing * 0.4
            reach = half * (0.55 + 0.45 * min(1.0, 0.3 + k / n_ribs))
            post = [(cx + side * half * 0.08, ry), (cx + side * reach * 0.5, ry - spacing * _u(rng, 0.1, 0.5)),
                    (cx + side * reach * 0.95, ry + spacing * _u(rng, 0.4, 0.9)),
                    (cx + side * reach * 1.02, ry + spacing * _u(rng, 1.3, 1.8))]
            _bone_line(pen, _curve(post, 10), rib_w, 1.0, 0.6)
            ant = [(cx + side * reach * 0.98, ry + spacing * 1.0), (cx + side * reach * 0.6, ry + spacing * 2.0),
                   (cx + side * half * 0.2, ry + spacing * _u(rng, 2.6, 3.4))]
            pen.line(_curve(ant, 8), fill=0.35, width=max(1, int(rib_w * 0.8)), joint="curve")
        clav = [(cx + side * half * 0.1, top * _u(rng, 0.9, 1.2)), (cx + side * half * 0.5, top * _u(rng, 0.8, 1.05)),
                (cx + side * half * 1.0, top * _u(rng, 0.4, 0.8))]
        _bone_line(pen, _curve(clav, 10), h * _u(rng, 0.02, 0.03))
        if rng.random() < 0.6:  # humeral heads at the top corners
            r = half * _u(rng, 0.15, 0.22)
            hx, hy = cx + side * half * _u(rng, 1.05, 1.2), top * _u(rng, 0.2, 0.9)
            pen.ellipse((hx - r, hy - r, hx + r, hy + r), fill=0.8, outline=1.0, width=max(1, int(r * 0.15)))
            pen.line([(hx, hy), (hx + side * r * 0.5, h * 0.6)], fill=0.8, width=int(r * 1.2))
    img = img + _blur(_arr(bones), _u(rng, 0.8, 1.8)) * _u(rng, 0.07, 0.16) * body
    if rng.random() < 0.4:  # breast shadows
        for side in (-1, 1):
            img = img + 0.05 * _inside(_rho(y, x, base * 0.95, cx + side * half * 0.6, h * 0.14, half * 0.35), 0.3)
    return img


def _chest_lateral(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    y, x = _coords(w, h)
    s = min(w, h)
    img = _u(rng, 0.02, 0.08) + _fractal(rng, w, h, 4, 3) * 0.015
    cx = w * _u(rng, 0.45, 0.55)
    body = _inside(_rho(y, x, h * 0.58, cx, h * 0.62, w * _u(rng, 0.38, 0.48)), 0.03)
    img = img + body * _u(rng, 0.3, 0.42)
    top, base = h * _u(rng, 0.1, 0.2), h * _u(rng, 0.66, 0.78)
    dome = base - h * _u(rng, 0.03, 0.08) * np.clip(1 - ((x - cx) / (w * 0.3)) ** 2, 0, 1)
    t = np.clip((y - top) / (base - top), 0, 1)
    half = w * _u(rng, 0.22, 0.3) * (0.3 + 0.7 * np.sqrt(t))  # a field widening from the apex
    lung = (np.clip((half - np.abs(x - cx - w * 0.03)) / 3, 0, 1) * np.clip((dome - y) / 3, 0, 1)
            * np.clip((y - top) / 4, 0, 1))
    lung = _blur(lung, max(1.5, w * _u(rng, 0.006, 0.015)))
    heart = _inside(_rho(y, x, h * _u(rng, 0.55, 0.62), cx - w * _u(rng, 0.05, 0.12), h * 0.17, w * 0.16,
                         _u(rng, 0.3, 0.8)), 0.4)
    img = img - lung * _u(rng, 0.16, 0.26) * (1 - 0.7 * heart) + np.clip(_fractal(rng, w, h, 12, 3), 0, None) * 0.015
    bones, pen = _canvas(w, h)
    spine_x = cx + w * _u(rng, 0.22, 0.3)
    _vertebrae(pen, rng, spine_x, h * 0.05, h * 1.02, s * _u(rng, 0.09, 0.12), 0.9)
    sx = cx - w * _u(rng, 0.25, 0.32)
    pen.line(_curve([(sx, h * 0.18), (sx - w * 0.02, h * 0.4), (sx + w * 0.02, h * 0.62)], 8), fill=0.9,
             width=max(2, int(s * 0.025)))
    for k in range(int(rng.integers(7, 11))):
        ry = h * (0.15 + k * 0.065)
        pen.arc((spine_x - w * 0.5, ry - h * 0.1, spine_x + w * 0.02, ry + h * 0.3), 250, 360,
                fill=0.4, width=max(1, int(s * 0.012)))
    if rng.random() < 0.6:  # arms raised forward
        arm = [(cx - w * 0.5, h * _u(rng, 0.05, 0.2)), (cx + w * 0.1, h * _u(rng, 0.0, 0.15))]
        _bone_line(pen, arm, s * 0.05, 0.6, 0.4)
    img = img + _blur(_arr(bones), _u(rng, 0.8, 1.8)) * _u(rng, 0.08, 0.18) * np.maximum(body, 0.3)
    return img


def _collimate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sometimes the unexposed (white) border that collimation leaves."""
    if rng.random() > 0.3:
        return img
    h, w = img.shape
    out = img.copy()
    x0, x1 = int(_u(rng, 0, 0.08) * w), int(_u(rng, 0.92, 1.0) * w)
    y0, y1 = int(_u(rng, 0, 0.08) * h), int(_u(rng, 0.92, 1.0) * h)
    v = _u(rng, 0.7, 0.95)
    out[:y0], out[y1:], out[:, :x0], out[:, x1:] = v, v, v, v
    return out


def _film_marker(img: np.ndarray, rng: np.random.Generator, text: Optional[str] = None) -> np.ndarray:
    """A lead side marker (R / L) and sometimes a printed label, bright as metal."""
    h, w = img.shape
    im = Image.fromarray(img.astype(np.float32))
    draw = ImageDraw.Draw(im)
    if rng.random() < 0.7:
        size = int(min(w, h) * _u(rng, 0.04, 0.08))
        cx, cy = _pick(rng, ((0.08, 0.08), (0.85, 0.08), (0.08, 0.88), (0.85, 0.88)))
        _bold(draw, (cx * w, cy * h), _pick(rng, ("R", "L")), _font(size), _u(rng, 0.85, 1.0))
    if text and rng.random() < 0.5:
        draw.text((w * _u(rng, 0.05, 0.6), h * _pick(rng, (0.02, 0.93))), text,
                  font=_font(int(min(w, h) * _u(rng, 0.02, 0.04))), fill=_u(rng, 0.6, 1.0))
    return _arr(im)


def render_chest(rng: np.random.Generator) -> Image.Image:
    """A chest radiograph, PA/AP (lungs either side of the heart) or lateral."""
    view = _pick(rng, ("pa", "lateral"), (0.7, 0.3))
    out, (w, h) = _sizes(rng, (1.0, 1.3), portrait_p=0.6)
    img = _chest_pa(rng, w, h) if view == "pa" else _chest_lateral(rng, w, h)
    if rng.random() < 0.25:  # mirrored (or a lateral from the other side): markers stay readable
        img = img[:, ::-1]
    label = _pick(rng, ("PA ERECT", "AP SUPINE", "PORTABLE", "LAT", "CHEST 2V", "INSP"))
    img = _film_marker(_collimate(img, rng), rng, label)
    return _gray_out(img, rng, out, sixteen_p=0.3, rgb_p=0.35, flip_p=0.0, rot90_p=0.04, tilt=4.0)


# ---------------------------------------------------------------------------------------------
# skull
# ---------------------------------------------------------------------------------------------

def _calvarium(y, x, cy, cx, ry, rx, thick: float, angle: float = 0.0) -> np.ndarray:
    """Bright ring of the skull vault, outer and inner tables brighter than the diploe between."""
    rho = _rho(y, x, cy, cx, ry, rx, angle)
    ring = _inside(rho, 0.01) * (1 - _inside(rho, 0.01, at=1 - thick))
    mid = 1 - thick / 2
    diploe = np.clip(1 - np.abs(rho - mid) / (thick * 0.3), 0, 1)
    return ring * (1 - 0.35 * diploe)


def _teeth(pen, rng, pts, size: float, value: float) -> None:
    """A row of teeth along an arch: small bright crowns, a few with fillings brighter still."""
    for px, py in pts:
        tw, th = size * _u(rng, 0.35, 0.5), size * _u(rng, 0.8, 1.2)
        pen.rounded_rectangle((px - tw, py - th, px + tw, py + th), radius=max(1, int(tw * 0.5)), fill=value)
        if rng.random() < 0.1:
            pen.ellipse((px - tw * 0.5, py - th * 0.3, px + tw * 0.5, py + th * 0.3), fill=value * 1.4)


def _skull_frontal(rng: np.random.Generator, w: int, h: int, face_zoom: bool) -> np.ndarray:
    y, x = _coords(w, h)
    s = min(w, h)
    rx = s * (_u(rng, 0.5, 0.62) if face_zoom else _u(rng, 0.32, 0.42))
    ry = rx * _u(rng, 1.05, 1.25)
    cx, cy = w * _u(rng, 0.45, 0.55), h * (_u(rng, 0.15, 0.3) if face_zoom else _u(rng, 0.38, 0.48))
    img = _u(rng, 0.02, 0.08) + 0.15 * _inside(_rho(y, x, cy + ry * 0.25, cx, ry * 1.2, rx * 1.08), 0.05)
    img = img + 0.12 * _inside(_rho(y, x, cy, cx, ry, rx), 0.01) * (1 + 0.2 * _fractal(rng, w, h, 10, 3))
    img = img + _calvarium(y, x, cy, cx, ry, rx, _u(rng, 0.04, 0.1)) * _u(rng, 0.4, 0.6)
    face, pen = _canvas(w, h)
    oy = cy + ry * _u(rng, 0.15, 0.3)
    for side in (-1, 1):  # orbits, maxillary sinuses, petrous ridges
        ox = cx + side * rx * 0.38
        orx, ory = rx * _u(rng, 0.15, 0.2), ry * _u(rng, 0.13, 0.18)
        pen.ellipse((ox - orx, oy - ory, ox + orx, oy + ory), fill=-0.5, outline=0.8, width=max(1, int(orx * 0.18)))
        my = oy + ry * 0.42
        pen.ellipse((ox - orx, my - ory * 1.1, ox + orx * 0.8, my + ory * 1.1), fill=-0.6)
        ridge = [(cx + side * rx * 0.9, oy + ry * _u(rng, 0.3, 0.45)), (cx + side * rx * 0.55, oy + ry * 0.3),
                 (cx + side * rx * 0.25, oy + ry * _u(rng, 0.05, 0.2))]
        pen.line(_curve(ridge, 8), fill=0.35, width=max(2, int(rx * 0.09)), joint="curve")  # petrous ridge
    pen.ellipse((cx - rx * 0.15, oy - ry * 0.45, cx + rx * 0.15, oy - ry * 0.25), fill=-0.5)  # frontal sinus
    pen.polygon([(cx, oy + ry * 0.05), (cx - rx * 0.14, oy + ry * 0.55), (cx + rx * 0.14, oy + ry * 0.55)], fill=-0.6)
    pen.line([(cx, oy + ry * 0.1), (cx, oy + ry * 0.55)], fill=0.4, width=max(1, int(rx * 0.03)))
    if face_zoom or rng.random() < 0.75:  # mandible and teeth
        jaw = [(cx - rx * 0.85, oy + ry * 0.3), (cx - rx * 0.7, oy + ry * 0.95), (cx, oy + ry * 1.25),
               (cx + rx * 0.7, oy + ry * 0.95), (cx + rx * 0.85, oy + ry * 0.3)]
        _bone_line(pen, _curve(jaw, 12), rx * _u(rng, 0.08, 0.13), 0.9, 0.6)
        tooth = rx * 0.06
        for row in (0.72, 0.84):
            n = int(rng.integers(8, 15))
            pts = [(cx + rx * 0.55 * np.sin(a), oy + ry * (row + 0.08 * (1 - np.cos(a))))
                   for a in np.linspace(-1.2, 1.2, n)]
            _teeth(pen, rng, pts, tooth, 0.9)
    img = img + _blur(_arr(face), _u(rng, 0.8, 2.0)) * _u(rng, 0.25, 0.4)
    return img


def _skull_lateral(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    y, x = _coords(w, h)
    s = min(w, h)
    rx, ry = s * _u(rng, 0.38, 0.46), s * _u(rng, 0.3, 0.37)
    cx, cy = w * _u(rng, 0.48, 0.56), h * _u(rng, 0.36, 0.45)
    tilt = _u(rng, -0.2, 0.2)
    halo = _inside(_rho(y, x, cy + ry * 0.2, cx - rx * 0.05, ry * 1.3, rx * 1.12, tilt), 0.05)  # scalp and face
    img = _u(rng, 0.02, 0.08) + 0.15 * halo
    img = img + 0.1 * _inside(_rho(y, x, cy, cx, ry, rx, tilt), 0.01) * (1 + 0.25 * _fractal(rng, w, h, 10, 3))
    img = img + _calvarium(y, x, cy, cx, ry, rx, _u(rng, 0.04, 0.09), tilt) * _u(rng, 0.4, 0.6)
    face, pen = _canvas(w, h)
    fx = cx - rx * 0.78  # the face is in front (flipped at random later)
    pen.ellipse((fx - rx * 0.14, cy + ry * 0.05, fx + rx * 0.14, cy + ry * 0.35), fill=-0.2, outline=0.8,
                width=max(1, int(rx * 0.025)))  # orbit
    pen.ellipse((fx - rx * 0.12, cy - ry * 0.3, fx + rx * 0.06, cy - ry * 0.05), fill=-0.5)  # frontal sinus
    pen.ellipse((fx - rx * 0.05, cy + ry * 0.45, fx + rx * 0.3, cy + ry * 0.8), fill=-0.5)  # maxillary sinus
    base = [(cx - rx * 0.75, cy + ry * _u(rng, 0.15, 0.25)), (cx - rx * 0.2, cy + ry * _u(rng, 0.25, 0.35)),
            (cx + rx * 0.05, cy + ry * _u(rng, 0.5, 0.65)), (cx + rx * 0.5, cy + ry * _u(rng, 0.3, 0.45))]
    pen.line(_curve(base, 8), fill=0.6, width=max(2, int(rx * 0.1)), joint="curve")  # skull base
    sx, sy = cx - rx * 0.1, cy + ry * 0.25
    pen.arc((sx - rx * 0.07, sy - ry * 0.07, sx + rx * 0.07, sy + ry * 0.07), 0, 180, fill=1.0,
            width=max(1, int(rx * 0.02)))  # sella
    if rng.random() < 0.85:
        jaw = [(cx + rx * 0.05, cy + ry * 0.55), (cx + rx * 0.02, cy + ry * 1.15), (cx - rx * 0.35, cy + ry * 1.3),
               (fx - rx * 0.05, cy + ry * 1.25)]
        _bone_line(pen, _curve(jaw, 12), rx * _u(rng, 0.09, 0.13), 0.9, 0.6)
        n = int(rng.integers(5, 9))
        span = cx - rx * 0.3 - fx
        for row in (0.98, 1.13):
            _teeth(pen, rng, [(fx + span * t, cy + ry * row) for t in np.linspace(0.08, 1, n)], span / n * 0.9, 0.9)
    _vertebrae(pen, rng, cx + rx * 0.3, cy + ry * 0.75, h * 1.05, rx * 0.22, 0.7)
    img = img + _blur(_arr(face), _u(rng, 0.8, 2.0)) * _u(rng, 0.25, 0.4)
    return img


def render_skull(rng: np.random.Generator) -> Image.Image:
    """A skull radiograph: AP (jaw on most), lateral, or an occipitomental face view."""
    view = _pick(rng, ("ap", "lateral", "face"), (0.4, 0.4, 0.2))
    out, (w, h) = _sizes(rng, (1.0, 1.35), portrait_p=0.6)
    if view == "lateral":
        img = _skull_lateral(rng, w, h)
    else:
        img = _skull_frontal(rng, w, h, face_zoom=view == "face")
    if rng.random() < 0.5:  # facing the other way
        img = img[:, ::-1]
    img = _film_marker(_collimate(img, rng), rng, _pick(rng, ("SKULL AP", "SKULL LAT", "OM 30", "TOWNE")))
    return _gray_out(img, rng, out, sixteen_p=0.3, rgb_p=0.35, flip_p=0.0, rot90_p=0.04, tilt=6.0)


# ---------------------------------------------------------------------------------------------
# ct_slice
# ---------------------------------------------------------------------------------------------

WINDOWS = {  # (level, width) in HU, per body region
    "head": ((40, 80), (40, 120), (75, 215), (500, 2000)),
    "chest": ((40, 400), (-600, 1500), (400, 1800)),
    "abdomen": ((40, 400), (60, 160), (400, 1800)),
    "pelvis": ((40, 400), (400, 1800)),
}


def _ell(pen, cx: float, cy: float, rx: float, ry: float, fill: float, outline=None, width: int = 1) -> None:
    pen.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=float(fill),
                outline=None if outline is None else float(outline), width=width)


def _ct_spine(pen, rng, cx: float, cy: float, r: float) -> None:
    """Vertebral body (cortex ring, cancellous middle), arch and canal, paraspinal muscles."""
    for side in (-1, 1):
        _ell(pen, cx + side * r * 1.6, cy + r * 1.9, r * 1.0, r * 1.1, _u(rng, 45, 60))
    pen.polygon([(cx - r * 0.9, cy + r * 0.9), (cx + r * 0.9, cy + r * 0.9), (cx, cy + r * 2.6)], fill=700.0)
    _ell(pen, cx, cy, r, r * 0.9, 800, outline=1100, width=max(1, int(r * 0.12)))
    _ell(pen, cx, cy + r * 1.3, r * 0.45, r * 0.4, 10)


def _ct_body(rng: np.random.Generator, w: int, h: int, region: str) -> np.ndarray:
    """HU map of a chest, abdomen or pelvis slice."""
    canvas, pen = _canvas(w, h, -1000.0)
    a = min(w * _u(rng, 0.34, 0.46), h * 0.44 / 0.6)
    b = min(a * _u(rng, 0.6, 0.8), h * 0.44)
    cx, cy = w * _u(rng, 0.46, 0.54), h * _u(rng, 0.45, 0.52)
    contrast = rng.random() < 0.5
    ty = cy + b * 1.04
    pen.line([(cx - a * 1.4, ty), (cx + a * 1.4, ty)], fill=200.0, width=max(2, int(b * 0.04)))  # couch
    pen.line([(cx - a * 1.3, ty + b * 0.1), (cx + a * 1.3, ty + b * 0.1)], fill=100.0, width=max(1, int(b * 0.02)))
    _ell(pen, cx, cy, a, b, _u(rng, 20, 50))  # skin
    _ell(pen, cx, cy, a * 0.98, b * 0.97, -100)  # subcutaneous fat
    ft = _u(rng, 0.05, 0.2)
    _ell(pen, cx, cy + b * 0.02, a * (1 - ft), b * (1 - ft * 1.3), 45)  # muscle wall
    _ell(pen, cx, cy + b * 0.02, a * (1 - ft) * 0.92, b * (1 - ft * 1.3) * 0.9, _u(rng, -60, 20))  # inside
    spine_y, r = cy + b * 0.5, a * _u(rng, 0.1, 0.14)
    if region == "chest":
        for side in (-1, 1):
            _ell(pen, cx + side * a * 0.42, cy - b * 0.05, a * _u(rng, 0.3, 0.38), b * _u(rng, 0.6, 0.72), -860)
        _ell(pen, cx + a * 0.08, cy - b * 0.12, a * _u(rng, 0.22, 0.3), b * _u(rng, 0.3, 0.42), 150 if contrast else 40)
        _ell(pen, cx + a * 0.12, spine_y - r * 1.6, r * 0.6, r * 0.6, 250 if contrast else 45)  # aorta
        _ell(pen, cx, cy - b * 0.82, a * 0.08, b * 0.05, 600)  # sternum
        rib_r = (a * (1 - ft) * 0.95, b * (1 - ft * 1.3) * 0.95)
        for theta in np.radians(np.linspace(-170, 170, int(rng.integers(10, 18)))):
            deg = np.degrees(theta)
            if abs(deg - 90) < 25 or abs(deg + 90) < 20:  # spine behind, sternum in front
                continue
            _ell(pen, cx + np.cos(theta) * rib_r[0], cy + np.sin(theta) * rib_r[1], a * 0.035, b * 0.03, 700)
    elif region == "abdomen":
        _ell(pen, cx - a * 0.35, cy - b * 0.05, a * _u(rng, 0.35, 0.5), b * _u(rng, 0.5, 0.7),
             110 if contrast else 60)  # liver
        _ell(pen, cx + a * 0.55, cy + b * 0.15, a * 0.18, b * 0.3, 120 if contrast else 50)  # spleen
        sx, sy = cx + a * 0.25, cy - b * 0.35
        _ell(pen, sx, sy, a * 0.25, b * 0.25, 20)  # stomach, air over fluid
        pen.chord((sx - a * 0.25, sy - b * 0.25, sx + a * 0.25, sy + b * 0.25), 180, 360, fill=-1000.0)
        for side in (-1, 1):
            kx = cx + side * a * 0.38
            _ell(pen, kx, spine_y - r * 0.3, a * 0.12, b * 0.2, 180 if contrast else 30,
                 outline=220 if contrast else 35, width=max(1, int(a * 0.015)))  # kidney
        for _ in range(int(rng.integers(4, 14))):  # bowel loops
            bx, by = cx + _u(rng, -0.5, 0.5) * a, cy + _u(rng, -0.5, 0.2) * b
            br = a * _u(rng, 0.04, 0.1)
            content = _pick(rng, (-1000.0, 10.0, 300.0))  # gas, fluid, oral contrast
            _ell(pen, bx, by, br, br * _u(rng, 0.7, 1.0), content, outline=45, width=max(1, int(br * 0.2)))
        _ell(pen, cx + a * 0.06, spine_y - r * 1.5, r * 0.5, r * 0.5, 250 if contrast else 45)  # aorta
        _ell(pen, cx - a * 0.12, spine_y - r * 1.4, r * 0.6, r * 0.45, 150 if contrast else 40)  # IVC
    else:  # pelvis: iliac wings and sacrum, or lower, the hips
        _ell(pen, cx, cy - b * _u(rng, 0.1, 0.3), a * _u(rng, 0.18, 0.3), b * _u(rng, 0.2, 0.35), 8)  # bladder
        for side in (-1, 1):
            if rng.random() < 0.5:  # iliac wing: a curved plate from the sacroiliac joint forwards and out
                wing = [(cx + side * a * 0.2, cy + b * 0.45), (cx + side * a * 0.55, cy + b * 0.15),
                        (cx + side * a * _u(rng, 0.65, 0.8), cy - b * _u(rng, 0.2, 0.45))]
                pen.line(_curve(wing, 10), fill=900.0, width=max(2, int(a * 0.09)), joint="curve")
                pen.line(_curve(wing, 10), fill=300.0, width=max(1, int(a * 0.05)), joint="curve")
            else:  # femoral head in its acetabulum
                fx, fy, fr = cx + side * a * 0.55, cy + b * 0.1, a * _u(rng, 0.1, 0.15)
                pen.arc((fx - fr * 1.3, fy - fr * 1.3, fx + fr * 1.3, fy + fr * 1.3), 90 + side * 90 - 80,
                        90 + side * 90 + 80, fill=900.0, width=max(2, int(fr * 0.25)))
                _ell(pen, fx, fy, fr, fr, 350, outline=900, width=max(1, int(fr * 0.12)))
        _ell(pen, cx, cy + b * 0.5, a * 0.2, b * 0.13, 400, outline=900, width=max(1, int(a * 0.02)))  # sacrum
    if region != "pelvis":
        _ct_spine(pen, rng, cx, spine_y, r)
    hu = _arr(canvas)
    if region == "chest":  # vessels in the lungs
        dots = rng.random((h, w)) < _u(rng, 0.002, 0.006)
        hu = np.where((hu < -700) & (_blur(dots.astype(np.float32), 0.7) > 0.05) & (hu > -990), 30.0, hu)
    soft = (hu > -200) & (hu < 200)
    hu = hu + soft * _fractal(rng, w, h, _u(rng, 8, 30), 3) * _u(rng, 4, 15)
    return hu


def _ct_head(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """HU map of an axial head slice: scalp, skull ring, grey and white matter, ventricles."""
    y, x = _coords(w, h)
    canvas, pen = _canvas(w, h, -1000.0)
    s = min(w, h)
    a = s * _u(rng, 0.3, 0.4)
    b = min(a * _u(rng, 1.1, 1.3), h * 0.46)
    cx, cy = w * _u(rng, 0.45, 0.55), h * _u(rng, 0.45, 0.55)
    t = _u(rng, 0.05, 0.09)
    pen.line([(cx - a * 1.3, cy + b * 1.05), (cx + a * 1.3, cy + b * 1.05)], fill=200.0, width=max(2, int(b * 0.03)))
    _ell(pen, cx, cy, a * 1.06, b * 1.05, 30)
    _ell(pen, cx, cy, a, b, 1300)
    _ell(pen, cx, cy, a * (1 - t * 0.35), b * (1 - t * 0.35), _u(rng, 400, 800))  # diploe
    _ell(pen, cx, cy, a * (1 - t * 0.7), b * (1 - t * 0.7), 1300)
    _ell(pen, cx, cy, a * (1 - t), b * (1 - t), 40)
    hu = _arr(canvas)
    inner = _rho(y, x, cy, cx, b * (1 - t), a * (1 - t))
    wiggle = _fractal(rng, w, h, 10, 3)
    white = (inner + 0.07 * wiggle) < _u(rng, 0.6, 0.78)
    hu = np.where((inner < 0.97) & white, _u(rng, 24, 30), hu)
    sulci = (inner > 0.8) & (inner < 0.98) & (_fractal(rng, w, h, 30, 2) > _u(rng, 1.2, 2.0))
    hu = np.where(sulci, 8.0, hu)
    canvas = Image.fromarray(hu)
    pen = ImageDraw.Draw(canvas)
    vy = cy + _u(rng, -0.1, 0.05) * b
    for side in (-1, 1):  # lateral ventricles
        _ell(pen, cx + side * a * _u(rng, 0.07, 0.14), vy, a * _u(rng, 0.05, 0.1), b * _u(rng, 0.2, 0.35), 6)
    _ell(pen, cx, vy + b * 0.35, a * 0.02, b * 0.06, 6)
    pen.line([(cx, cy - b * (1 - t)), (cx, vy - b * 0.3)], fill=60.0, width=max(1, int(a * 0.01)))  # falx
    return _arr(canvas)


def _ct_tile(rng: np.random.Generator, w: int, h: int, region: str, window: Tuple[float, float]) -> np.ndarray:
    """One displayed slice, 0..1: HU map, partial-volume blur, quantum noise, window/level."""
    hu = _ct_head(rng, w, h) if region == "head" else _ct_body(rng, w, h, region)
    level, width = window
    hu = _blur(hu, _u(rng, 0.5, 1.3)) + rng.standard_normal((h, w), dtype=np.float32) * width * _u(rng, 0.004, 0.05)
    shown = np.clip((hu - (level - width / 2)) / width, 0, 1).astype(np.float32)
    return shown[:, ::-1].copy() if rng.random() < 0.1 else shown


def _ct_annotations(im: Image.Image, rng: np.random.Generator, window: Tuple[float, float], box=None) -> None:
    """Corner text (window/level, series, image number), a scale bar and orientation letters, as a
    viewer or a film printer puts them."""
    draw = ImageDraw.Draw(im)
    x0, y0, x1, y1 = box or (0, 0, im.width, im.height)
    size = max(7, int(min(x1 - x0, y1 - y0) * _u(rng, 0.025, 0.045)))
    font = _font(size)
    grey = _u(rng, 0.7, 1.0)
    lines_tl = [f"Se: {int(rng.integers(1, 12))}", f"Im: {int(rng.integers(1, 300))}/{int(rng.integers(300, 600))}",
                f"{_u(rng, 0.6, 5.0):.1f} mm"]
    lines_bl = [f"W:{int(window[1])} L:{int(window[0])}",
                f"kV {int(rng.integers(80, 141))}  mA {int(rng.integers(50, 400))}"]
    for k, line in enumerate(lines_tl[: int(rng.integers(1, 4))]):
        draw.text((x0 + size * 0.4, y0 + size * (0.3 + 1.2 * k)), line, font=font, fill=grey)
    for k, line in enumerate(lines_bl[: int(rng.integers(1, 3))]):
        draw.text((x0 + size * 0.4, y1 - size * (1.5 + 1.2 * k)), line, font=font, fill=grey)
    if rng.random() < 0.6:  # scale bar with ticks
        bx, by0 = x1 - size * 1.2, y0 + (y1 - y0) * 0.3
        by1 = by0 + (y1 - y0) * _u(rng, 0.2, 0.4)
        draw.line([(bx, by0), (bx, by1)], fill=grey, width=1)
        for ty in np.linspace(by0, by1, int(rng.integers(4, 11))):
            draw.line([(bx - size * 0.4, ty), (bx, ty)], fill=grey, width=1)
    if rng.random() < 0.5:
        draw.text((x0 + size * 0.4, (y0 + y1) / 2), "R", font=font, fill=grey)
        draw.text((x1 - size * 2.0, (y0 + y1) / 2 + size * 2), "L", font=font, fill=grey)


def render_ct_slice(rng: np.random.Generator) -> Image.Image:
    """An axial CT slice on black (head, chest, abdomen or pelvis, in a drawn window), sometimes
    a 2x2 or 3x3 printout of slices."""
    region = _pick(rng, ("head", "chest", "abdomen", "pelvis"), (0.3, 0.3, 0.28, 0.12))
    level, width = _pick(rng, WINDOWS[region])
    window = (level * _u(rng, 0.9, 1.1) + _u(rng, -10, 10), width * _u(rng, 0.8, 1.25))
    layout = _pick(rng, ("single", "grid"), (0.65, 0.35))
    if layout == "single":
        out, (w, h) = _sizes(rng, (1.0, 1.35), portrait_p=0.3)
        im = Image.fromarray(_ct_tile(rng, w, h, region, window))
        if rng.random() < 0.75:
            _ct_annotations(im, rng, window)
    else:
        out, (w, h) = _sizes(rng, (1.0, 1.45), portrait_p=0.5)
        k = int(_pick(rng, (2, 3)))
        gap = max(1, int(min(w, h) * _u(rng, 0.0, 0.02)))
        im = Image.new("F", (w, h), _u(rng, 0.0, 0.15))
        tw, th = (w - gap * (k + 1)) // k, (h - gap * (k + 1)) // k
        for r in range(k):
            for c in range(k):
                x0, y0 = gap + c * (tw + gap), gap + r * (th + gap)
                im.paste(Image.fromarray(_ct_tile(rng, tw, th, region, window)), (x0, y0))
                if rng.random() < 0.7:
                    _ct_annotations(im, rng, window, (x0, y0, x0 + tw, y0 + th))
    img = _radiometry(_arr(im), rng, noise=(0.0, 0.015), blur=(0.0, 0.7), contrast=(0.85, 1.2),
                      brightness=(-0.05, 0.05), gamma=(0.8, 1.25))
    return _gray_out(img, rng, out, sixteen_p=0.3, rgb_p=0.4, flip_p=0.0, rot90_p=0.03, tilt=2.0, radiometry=False)


# ---------------------------------------------------------------------------------------------
# ultrasound
# ---------------------------------------------------------------------------------------------

def _us_geometry(rng: np.random.Generator, w: int, h: int, probe: str):
    """(depth 0..1, lateral -1..1, field-of-view mask, apex (y, x) or None) for a sector or linear probe."""
    y, x = _coords(w, h)
    top, bottom = h * _u(rng, 0.06, 0.14), h * _u(rng, 0.86, 0.97)
    cx = w * _u(rng, 0.4, 0.6)
    if probe == "linear":
        half = min(w * _u(rng, 0.25, 0.4), (bottom - top) * _u(rng, 0.4, 1.0))
        depth = (y - top) / (bottom - top)
        lateral = (x - cx) / half
        apex = None
    else:
        r0 = (bottom - top) * (_u(rng, 0.15, 0.45) if probe == "curved" else _u(rng, 0.0, 0.04))
        ay = top - r0
        r1 = bottom - ay
        alpha = np.radians(_u(rng, 30, 46))
        alpha = min(alpha, np.arcsin(min(0.99, w * 0.48 / r1)))
        r = np.sqrt((y - ay) ** 2 + (x - cx) ** 2)
        depth = (r - r0) / (r1 - r0)
        lateral = np.arctan2(x - cx, y - ay) / alpha
        apex = (ay, cx)
    fov = np.clip(np.minimum(depth * 200, (1 - depth) * 200), 0, 1) * np.clip((1 - np.abs(lateral)) * 100, 0, 1)
    return np.broadcast_to(depth, (h, w)), np.broadcast_to(lateral, (h, w)), fov.astype(np.float32), apex


def _us_echo(rng: np.random.Generator, w: int, h: int, depth, lateral) -> Tuple[np.ndarray, List]:
    """Echogenicity before speckle: layered tissue, bright interfaces, cysts with enhancement behind,
    sometimes a bone surface with its shadow. Also the vessels, for Doppler."""
    y, x = _coords(w, h)
    echo = _u(rng, 0.25, 0.45) + 0.1 * _fractal(rng, w, h, 6, 3)
    for _ in range(int(rng.integers(2, 7))):  # tissue layers and their interfaces
        d0 = _u(rng, 0.03, 0.9)
        wobble = _u(rng, 0, 0.05) * np.sin(lateral * _u(rng, 1, 6) + _u(rng, 0, 6.3)) + _u(rng, -0.05, 0.05) * lateral
        dist = depth - d0 - wobble
        interface = _u(rng, 0.3, 1.0) * np.exp(-(dist / _u(rng, 0.004, 0.02)) ** 2)
        echo = echo + interface + (dist > 0) * _u(rng, -0.12, 0.12)
    if rng.random() < 0.5:  # muscle fibres: faint oblique striations
        ang = _u(rng, -0.4, 0.4)
        echo = echo * (1 + 0.25 * np.sin((y * np.cos(ang) + x * np.sin(ang)) * _u(rng, 0.3, 0.8)))
    vessels = []
    for _ in range(int(rng.integers(0, 4))):  # cysts / vessels: dark, bright behind
        cy, cx = _u(rng, 0.25, 0.8) * h, _u(rng, 0.25, 0.75) * w
        ry, rx = _u(rng, 0.03, 0.12) * h, _u(rng, 0.03, 0.2) * w
        inside = _inside(_rho(y, x, cy, cx, ry, rx), 0.1)
        behind = (y > cy) * np.exp(-((x - cx) / rx) ** 2 * 2) * _u(rng, 0.1, 0.5)
        echo = echo * (1 - 0.93 * inside) * (1 + behind * (1 - inside))
        vessels.append(inside)
    if rng.random() < 0.3:  # bone surface: a bright line, nothing behind it
        d_bone = _u(rng, 0.4, 0.8) + 0.05 * np.sin(lateral * _u(rng, 1, 3))
        echo = echo + 1.5 * np.exp(-((depth - d_bone) / 0.01) ** 2)
        echo = echo * np.where(depth > d_bone + 0.02, 0.12, 1.0)
    return np.clip(echo, 0, None), vessels


def _speckle(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Fully developed speckle: magnitude of a smoothed complex Gaussian field (Rayleigh), cells
    longer across the beam than along it; mean 1."""
    sy, sx = _u(rng, 0.5, 1.6), _u(rng, 1.0, 3.5)
    re = _blur(rng.standard_normal((h, w), dtype=np.float32), sy, sx)
    im = _blur(rng.standard_normal((h, w), dtype=np.float32), sy, sx)
    mag = np.sqrt(re * re + im * im)
    return mag / (mag.mean() + 1e-6)


def _us_overlay(im: Image.Image, rng: np.random.Generator, fov_box, depth_cm: float, tint) -> None:
    """Scanner furniture: depth ticks with centimetres, parameter text, focus marker, grey bar."""
    draw = ImageDraw.Draw(im)
    w, h = im.size
    x0, y0, x1, y1 = fov_box
    size = max(7, int(min(w, h) * _u(rng, 0.022, 0.04)))
    font = _font(size)
    tick_x = min(w - size * 2.5, x1 + size * 0.6)
    n = int(depth_cm)
    for k in range(n + 1):
        ty = y0 + (y1 - y0) * k / max(depth_cm, 1e-3)
        draw.line([(tick_x, ty), (tick_x + size * (0.6 if k % 5 else 1.0), ty)], fill=tint, width=1)
        if k and (k % int(_pick(rng, (1, 2, 5))) == 0 or n <= 6):
            draw.text((tick_x + size * 1.1, ty - size * 0.5), str(k), font=font, fill=tint)
    if rng.random() < 0.8:
        fy = y0 + (y1 - y0) * _u(rng, 0.2, 0.8)
        draw.polygon([(tick_x - size * 0.9, fy), (tick_x - size * 0.2, fy - size * 0.35),
                      (tick_x - size * 0.2, fy + size * 0.35)], fill=tint)  # focus
    probe = _pick(rng, ("C5-1", "L12-5", "P4-2", "C3", "L7.5", "MSK", "ABD", "OB", "VASC", "THY"))
    lines = [f"{probe}  {_u(rng, 2, 15):.1f}MHz", f"Gn {int(rng.integers(30, 90))}  DR {int(rng.integers(40, 80))}",
             f"D {depth_cm:.1f}cm  FR {int(rng.integers(8, 60))}Hz",
             f"MI {_u(rng, 0.2, 1.4):.1f}  TIs {_u(rng, 0.1, 1.0):.1f}"]
    for k, line in enumerate(lines[: int(rng.integers(1, 5))]):
        draw.text((size * 0.5, size * (0.4 + 1.25 * k)), line, font=font, fill=tint)
    if rng.random() < 0.6:
        draw.text((w - size * 10, size * 0.4), f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/"
                                               f"{int(rng.integers(2005, 2031))}", font=font, fill=tint)
    if rng.random() < 0.6:  # grey-scale bar
        bx = size * 0.6
        by0, by1 = h * 0.4, h * 0.8
        for k in range(32):
            v = int(255 * k / 31)
            draw.rectangle((bx, by1 - (by1 - by0) * (k + 1) / 32, bx + size * 0.6, by1 - (by1 - by0) * k / 32),
                           fill=(v, v, v) if im.mode == "RGB" else v)
    if rng.random() < 0.7:  # orientation mark
        draw.ellipse((x0 - size * 0.6, y0 - size * 0.1, x0 - size * 0.1, y0 + size * 0.4), fill=tint)


def render_ultrasound(rng: np.random.Generator) -> Image.Image:
    """A B-mode still: curved, phased (sector) or linear field of view on black, speckle, interfaces,
    cysts, scanner text and depth scale, sometimes a colour Doppler box."""
    probe = _pick(rng, ("curved", "linear", "phased"), (0.45, 0.35, 0.2))
    out, (w, h) = _sizes(rng, (1.15, 1.8), portrait_p=0.15)
    depth, lateral, fov, apex = _us_geometry(rng, w, h, probe)
    echo, vessels = _us_echo(rng, w, h, depth, lateral)
    echo = echo * np.exp(-_u(rng, 0.0, 1.5) * depth) * (1 + _u(rng, 0, 0.8) * depth)  # attenuation, gain
    img = echo * _speckle(rng, w, h)
    g = _u(rng, 3, 30)
    img = np.log1p(g * img) / np.log1p(g * _u(rng, 1.5, 3.0))  # log compression
    img = _radiometry(img * _u(rng, 0.7, 1.1), rng, noise=(0.0, 0.02), blur=(0.0, 0.8), contrast=(0.85, 1.2),
                      brightness=(-0.05, 0.05), gamma=(0.8, 1.25)) * fov
    ys, xs = np.nonzero(fov > 0.5)
    fov_box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else (0, 0, w - 1, h - 1)
    gray = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    doppler = bool(vessels) and rng.random() < 0.45
    colour_text = rng.random() < 0.3
    im = Image.fromarray(gray).convert("RGB") if (doppler or colour_text) else Image.fromarray(gray)
    if doppler:
        im = _doppler(im, rng, vessels, fov)
    tint = _c255(_hsv(_u(rng, 0.1, 0.45), _u(rng, 0.4, 0.9), 1.0)) if colour_text else int(rng.integers(170, 256))
    if im.mode == "RGB" and not isinstance(tint, tuple):
        tint = (tint,) * 3
    _us_overlay(im, rng, fov_box, _u(rng, 2.0, 24.0), tint)
    if im.mode == "RGB":
        return _colour_out(im, rng, out, noise=(0, 0.01), blur=(0, 0.6), cast=0.03, jpeg_p=0.5)
    return _gray_out(np.asarray(im, dtype=np.float32) / 255, rng, out, rgb_p=0.4, flip_p=0.0, rot90_p=0.0, tilt=0.0,
                     radiometry=False)


def _doppler(im: Image.Image, rng: np.random.Generator, vessels, fov) -> Image.Image:
    """Colour flow in the vessels: red one way, blue the other, noisy; inside a drawn box."""
    a = np.asarray(im, dtype=np.float32) / 255
    h, w = fov.shape
    flow = np.zeros((h, w), np.float32)
    for v in vessels:  # faster in the middle of the lumen; where two overlap, the nearer wins
        flow = np.where(v > np.abs(flow), np.sqrt(v) * (1 if rng.random() < 0.5 else -1), flow)
    flow = flow * np.clip(_u(rng, 0.7, 0.95) + 0.15 * _smooth_noise(rng, w, h, _u(rng, 10, 40)), 0, 1) * fov
    power = rng.random() < 0.25
    red = np.array((1.0, 0.25, 0.05) if not power else (1.0, 0.6, 0.1), np.float32)
    blue = np.array((0.1, 0.35, 1.0) if not power else (1.0, 0.6, 0.1), np.float32)
    pos, neg = np.clip(flow, 0, 1)[..., None], np.clip(-flow, 0, 1)[..., None]
    a = a * (1 - pos - neg) + red * pos + blue * neg
    out = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))
    ys, xs = np.nonzero(np.abs(flow) > 0.1)
    if len(xs):
        pad = int(min(w, h) * 0.05)
        ImageDraw.Draw(out).rectangle((xs.min() - pad, ys.min() - pad, xs.max() + pad, ys.max() + pad),
                                      outline=(200, 200, 200), width=1)
    return out


# ---------------------------------------------------------------------------------------------
# screenshot
# ---------------------------------------------------------------------------------------------

def _theme(rng: np.random.Generator) -> Dict[str, Tuple[int, int, int]]:
    """Background, surface, text, muted text and accent colours for a light or dark theme."""
    dark = rng.random() < 0.4
    hue = rng.random()
    accent = _hsv(hue, _u(rng, 0.55, 0.95), _u(rng, 0.55, 0.95))
    if dark:
        bg = _hsv(hue, _u(rng, 0, 0.2), _u(rng, 0.04, 0.14))
        surface, text = _mix(bg, (1, 1, 1), 0.08), _hsv(0, 0, _u(rng, 0.85, 0.98))
    else:
        bg = _hsv(hue, _u(rng, 0, 0.06), _u(rng, 0.93, 1.0))
        surface, text = _mix(bg, (0.5, 0.5, 0.5), 0.1), _hsv(0, 0, _u(rng, 0.05, 0.2))
    return {"bg": _c255(bg), "surface": _c255(surface), "text": _c255(text), "muted": _c255(_mix(text, bg, 0.45)),
            "accent": _c255(accent), "on_accent": (255, 255, 255), "bubble": _c255(_mix(accent, bg, 0.75))}


def _icon(draw, rng, cx: float, cy: float, r: float, colour) -> None:
    """A simple glyph: circle, ring, rounded square, triangle, bars or a star."""
    kind = int(rng.integers(6))
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == 0:
        draw.ellipse(box, fill=colour)
    elif kind == 1:
        draw.ellipse(box, outline=colour, width=max(1, int(r * 0.25)))
    elif kind == 2:
        draw.rounded_rectangle(box, radius=max(1, int(r * 0.35)), fill=colour)
    elif kind == 3:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif kind == 4:
        for k in range(3):
            yk = cy - r * 0.6 + k * r * 0.6
            draw.line([(cx - r, yk), (cx + r, yk)], fill=colour, width=max(1, int(r * 0.2)))
    else:
        pts = [(cx + r * (1 if k % 2 == 0 else 0.45) * np.cos(k * np.pi / 5 - np.pi / 2),
                cy + r * (1 if k % 2 == 0 else 0.45) * np.sin(k * np.pi / 5 - np.pi / 2)) for k in range(10)]
        draw.polygon(pts, fill=colour)


def _thumbnail(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A small colour photo (drawn small, then sized) for feeds, chats and galleries."""
    w, h = max(8, int(w)), max(8, int(h))
    k = min(1.0, 200 / max(w, h))
    small = _photo(rng, max(8, int(w * k)), max(8, int(h * k)))
    return small.resize((w, h), BICUBIC)


def _status_bar(draw, rng, w: float, hgt: float, t) -> None:
    font = _font(max(7, int(hgt * 0.6)))
    draw.text((hgt * 0.6, hgt * 0.15), f"{int(rng.integers(0, 24))}:{int(rng.integers(0, 60)):02d}", font=font,
              fill=t["text"])
    x = w - hgt * 0.6
    draw.rounded_rectangle((x - hgt * 0.9, hgt * 0.3, x, hgt * 0.75), radius=2, outline=t["text"], width=1)
    draw.rectangle((x - hgt * 0.9, hgt * 0.3, x - hgt * 0.9 * (1 - _u(rng, 0.1, 1)), hgt * 0.75), fill=t["text"])
    for k in range(4):
        bx = x - hgt * 1.6 - (3 - k) * hgt * 0.22
        draw.rectangle((bx, hgt * (0.75 - 0.12 * (k + 1)), bx + hgt * 0.14, hgt * 0.75), fill=t["text"])


def _list_rows(draw, im, rng, box, t, size: int) -> None:
    x0, y0, x1, y1 = box
    font, small = _font(size), _font(max(7, int(size * 0.8)))
    row = size * _u(rng, 3.2, 4.5)
    y = y0
    while y + row < y1:
        r = row * 0.32
        cy = y + row / 2
        if rng.random() < 0.3:
            im.paste(_thumbnail(rng, 2 * r, 2 * r), (int(x0 + size), int(cy - r)))
        else:
            draw.ellipse((x0 + size, cy - r, x0 + size + 2 * r, cy + r), fill=_c255(_hsv(rng.random(), 0.5, 0.85)))
            draw.text((x0 + size + r * 0.6, cy - size * 0.5), _NAMES[int(rng.integers(len(_NAMES)))][0], font=font,
                      fill=(255, 255, 255))
        tx = x0 + size * 2 + 2 * r
        who = _NAMES[int(rng.integers(len(_NAMES)))] + " " + _title(rng, 1)
        _bold(draw, (tx, cy - size * 1.1), who, font, t["text"])
        draw.text((tx, cy + size * 0.2), _line_to_width(rng, small, (x1 - tx) * 0.8), font=small, fill=t["muted"])
        draw.text((x1 - size * 3.5, cy - size * 1.1), f"{int(rng.integers(1, 13))}:{int(rng.integers(0, 60)):02d}",
                  font=small, fill=t["muted"])
        if rng.random() < 0.25:
            draw.ellipse((x1 - size * 2.2, cy + size * 0.1, x1 - size * 0.8, cy + size * 1.5), fill=t["accent"])
        y += row
        draw.line([(tx, y), (x1, y)], fill=t["surface"], width=1)


def _chat(draw, im, rng, box, t, size: int) -> None:
    x0, y0, x1, y1 = box
    font = _font(size)
    y = y0 + size
    while y < y1 - size * 3:
        mine = rng.random() < 0.5
        bw = (x1 - x0) * _u(rng, 0.35, 0.75)
        if rng.random() < 0.15:  # a photo in the chat
            ph = bw * _u(rng, 0.6, 1.0)
            bx = x1 - size - bw if mine else x0 + size
            if y + ph > y1:
                break
            im.paste(_thumbnail(rng, bw, ph), (int(bx), int(y)))
            y += ph + size
            continue
        lines = int(rng.integers(1, 4))
        bh = size * (1.4 * lines + 0.8)
        bx = x1 - size - bw if mine else x0 + size
        draw.rounded_rectangle((bx, y, bx + bw, y + bh), radius=int(size * 0.9),
                               fill=t["accent"] if mine else t["surface"])
        for k in range(lines):
            draw.text((bx + size * 0.6, y + size * (0.4 + 1.4 * k)), _line_to_width(rng, font, bw - size * 1.2),
                      font=font, fill=t["on_accent"] if mine else t["text"])
        y += bh + size * _u(rng, 0.5, 1.2)


def _feed(draw, im, rng, box, t, size: int) -> None:
    x0, y0, x1, y1 = box
    font, small = _font(size), _font(max(7, int(size * 0.8)))
    y = y0 + size * 0.5
    while y < y1 - size * 4:
        draw.ellipse((x0 + size, y, x0 + size * 3, y + size * 2), fill=_c255(_hsv(rng.random(), 0.6, 0.8)))
        _bold(draw, (x0 + size * 3.8, y + size * 0.4), _NAMES[int(rng.integers(len(_NAMES)))], font, t["text"])
        y += size * 2.6
        ph = (x1 - x0) * _u(rng, 0.45, 0.9)
        if y + ph > y1:
            ph = y1 - y
        if ph > size * 2:
            im.paste(_thumbnail(rng, x1 - x0, ph), (int(x0), int(y)))
        y += ph + size * 0.5
        for k in range(int(rng.integers(2, 5))):
            _icon(draw, rng, x0 + size * (1.5 + 2.5 * k), y + size * 0.6, size * 0.6, t["text"])
        y += size * 1.8
        draw.text((x0 + size, y), _line_to_width(rng, small, x1 - x0 - size * 2), font=small, fill=t["text"])
        y += size * 2.5


def _settings(draw, im, rng, box, t, size: int) -> None:
    x0, y0, x1, y1 = box
    font = _font(size)
    y = y0 + size
    while y < y1 - size * 2.5:
        if rng.random() < 0.2:
            section = _title(rng, 2).upper()
            _bold(draw, (x0 + size, y + size * 0.5), section, _font(max(7, int(size * 0.8))), t["accent"])
            y += size * 2.2
            continue
        _icon(draw, rng, x0 + size * 1.6, y + size * 1.1, size * 0.6, t["muted"])
        draw.text((x0 + size * 3.2, y + size * 0.5), _title(rng, int(rng.integers(1, 4))), font=font, fill=t["text"])
        on = rng.random() < 0.5
        sx = x1 - size * 3.5
        draw.rounded_rectangle((sx, y + size * 0.5, sx + size * 2.4, y + size * 1.7), radius=int(size * 0.6),
                               fill=t["accent"] if on else t["surface"])
        kx = sx + (size * 1.8 if on else size * 0.6)
        draw.ellipse((kx - size * 0.5, y + size * 0.6, kx + size * 0.5, y + size * 1.6), fill=(250, 250, 250))
        y += size * 2.6
        draw.line([(x0 + size * 3.2, y - size * 0.3), (x1, y - size * 0.3)], fill=t["surface"], width=1)


PHONE_SCREENS = {"list": _list_rows, "chat": _chat, "feed": _feed, "settings": _settings}


def _phone(rng: np.random.Generator, w: int, h: int, t) -> Image.Image:
    im = Image.new("RGB", (w, h), t["bg"])
    draw = ImageDraw.Draw(im)
    size = max(7, int(w * _u(rng, 0.032, 0.05)))
    bar = size * 1.8
    _status_bar(draw, rng, w, bar, t)
    app = size * _u(rng, 3.0, 4.0)
    coloured = rng.random() < 0.6
    if coloured:
        draw.rectangle((0, bar, w, bar + app), fill=t["accent"])
    fg = t["on_accent"] if coloured else t["text"]
    _icon(draw, rng, size * 1.6, bar + app / 2, size * 0.6, fg)
    heading = _title(rng, int(rng.integers(1, 3)))
    _bold(draw, (size * 3.2, bar + app / 2 - size * 0.7), heading, _font(int(size * 1.3)), fg)
    for k in range(int(rng.integers(0, 3))):
        _icon(draw, rng, w - size * (1.6 + 2.4 * k), bar + app / 2, size * 0.6, fg)
    nav = size * 3.5 if rng.random() < 0.7 else 0
    screen = _pick(rng, tuple(PHONE_SCREENS))
    PHONE_SCREENS[screen](draw, im, rng, (0, bar + app, w, h - nav), t, size)
    if nav:
        draw.rectangle((0, h - nav, w, h), fill=t["surface"])
        n = int(rng.integers(3, 6))
        for k in range(n):
            colour = t["accent"] if k == 0 else t["muted"]
            _icon(draw, rng, w * (k + 0.5) / n, h - nav * 0.62, size * 0.65, colour)
    if rng.random() < 0.3:  # floating action button
        r = size * 1.6
        draw.ellipse((w - size - 2 * r, h - nav - size - 2 * r, w - size, h - nav - size), fill=t["accent"])
    return im


def _desktop(rng: np.random.Generator, w: int, h: int, t) -> Image.Image:
    im = Image.new("RGB", (w, h), t["bg"])
    draw = ImageDraw.Draw(im)
    size = max(7, int(h * _u(rng, 0.018, 0.03)))
    title = size * 2.2
    draw.rectangle((0, 0, w, title), fill=t["surface"])
    for k, c in enumerate(((237, 95, 87), (245, 190, 80), (98, 197, 85))):
        draw.ellipse((size * (0.6 + 1.4 * k), title * 0.3, size * (1.4 + 1.4 * k), title * 0.3 + size * 0.8), fill=c)
    for k in range(int(rng.integers(1, 5))):  # tabs
        tx = size * 6 + k * size * 11
        draw.rounded_rectangle((tx, title * 0.2, tx + size * 10, title), radius=int(size * 0.4),
                               fill=t["bg"] if k == 0 else t["surface"])
        draw.text((tx + size * 0.6, title * 0.35), _title(rng, 2), font=_font(size), fill=t["text"])
    tool = size * 2.2
    draw.rounded_rectangle((size * 6, title + tool * 0.2, w - size * 4, title + tool * 0.85), radius=int(size * 0.8),
                           fill=t["surface"])
    draw.text((size * 7, title + tool * 0.3), "https://" + _words(rng, 2, capital=False).replace(" ", ".") + "/" +
              _words(rng, 1, capital=False), font=_font(size), fill=t["muted"])
    top = title + tool
    side = w * _u(rng, 0.12, 0.25) if rng.random() < 0.6 else 0
    if side:
        draw.rectangle((0, top, side, h), fill=t["surface"])
        for k in range(int((h - top) / (size * 2.2)) - 1):
            colour = t["accent"] if k == 0 else t["muted"]
            _icon(draw, rng, size * 1.5, top + size * (1.5 + 2.2 * k), size * 0.5, colour)
            draw.text((size * 2.8, top + size * (1.0 + 2.2 * k)), _title(rng, int(rng.integers(1, 3))),
                      font=_font(size), fill=t["text"])
    content = (side + size * 2, top + size * 1.5, w - size * 2, h - size)
    body = _pick(rng, ("article", "gallery", "chat", "list"))
    if body == "article":
        paper = tuple(c / 255 for c in t["bg"])
        _layout_page(draw, rng, content, t["text"], t["accent"], t["muted"], paper, size, form=rng.random() < 0.3)
    elif body == "gallery":
        cols = int(rng.integers(2, 6))
        cw = (content[2] - content[0]) / cols
        y = content[1]
        while y + cw * 0.75 < content[3]:
            for c in range(cols):
                im.paste(_thumbnail(rng, cw * 0.92, cw * 0.7), (int(content[0] + c * cw), int(y)))
            y += cw * 0.8
    elif body == "chat":
        _chat(draw, im, rng, content, t, size)
    else:
        _list_rows(draw, im, rng, content, t, size)
    return im


def render_screenshot(rng: np.random.Generator) -> Image.Image:
    """A phone, tablet or desktop screenshot, light or dark: bars, lists, chats, feeds with photo
    thumbnails, settings, browser pages. Sometimes photographed off the screen instead."""
    device = _pick(rng, ("phone", "desktop", "tablet"), (0.5, 0.3, 0.2))
    t = _theme(rng)
    if device == "phone":
        out, (w, h) = _sizes(rng, (1.75, 2.25), portrait_p=1.0)
        im = _phone(rng, w, h, t)
    elif device == "desktop":
        out, (w, h) = _sizes(rng, (1.25, 1.8), portrait_p=0.0)
        im = _desktop(rng, w, h, t)
    else:
        out, (w, h) = _sizes(rng, (1.25, 1.45), portrait_p=0.5)
        im = _phone(rng, w, h, t) if h > w else _desktop(rng, w, h, t)
    if rng.random() < 0.2:  # a photo of the screen rather than a screenshot
        return _colour_out(_photographed(im, rng, w, h), rng, out, noise=(0.01, 0.04), blur=(0.5, 1.5), jpeg_p=0.9)
    return _colour_out(im, rng, out, noise=(0, 0.004), blur=(0, 0.3), cast=0.02, jpeg_p=0.3)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

RENDERERS: Dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "colour_photo": render_colour_photo, "text_page": render_text_page, "chest": render_chest,
    "skull": render_skull, "ct_slice": render_ct_slice, "ultrasound": render_ultrasound,
    "screenshot": render_screenshot,
}
assert tuple(RENDERERS) == KINDS


def _check_kind(kind: str) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown out-of-scope kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return KINDS.index(kind)


def render(kind: str, rng: np.random.Generator) -> Image.Image:
    """One image of `kind`, every parameter drawn from `rng`: mode "RGB", "L" or (radiograph-like
    kinds) "I;16"; sides in [MIN_SIDE, MAX_SIDE]."""
    _check_kind(kind)
    return RENDERERS[kind](rng)


def _seed_sequence(seed: int, kind_index: int, i: int, stream: int = 0) -> np.random.SeedSequence:
    """Image i's own seed: from (seed, kind, i) only, so it does not depend on n or on which kinds
    are asked for. Stream 1 is for how it is saved."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence([int(seed), int(kind_index), int(i), int(stream)])


def generate(kind: str, n: int, seed: int) -> List[Tuple[str, Image.Image]]:
    """n (name, image) pairs of `kind`, named f"{kind}_{seed}_{i:03d}"; image i is the same whatever n."""
    k = _check_kind(kind)
    return [(f"{kind}_{seed}_{i:03d}", render(kind, np.random.default_rng(_seed_sequence(seed, k, i))))
            for i in range(n)]


def _save_format(im: Image.Image, rng: np.random.Generator, kind: str) -> Tuple[str, Dict]:
    """(extension, save options): 16-bit always PNG; otherwise PNG or JPEG (quality 60-95), drawn,
    photos mostly JPEG, screenshots mostly PNG. PNGs are compressed lightly: twice as fast to write
    as Pillow's default for a few percent more bytes."""
    png = ("png", {"compress_level": 3})
    if im.mode == "I;16":
        return png
    jpg_p = {"colour_photo": 0.8, "screenshot": 0.35}.get(kind, 0.5)
    if rng.random() < jpg_p:
        return "jpg", {"quality": int(rng.integers(60, 96))}
    return png


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write` to a temporary name in the same folder, then rename: a killed run leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _complete(out: Path, params: Dict) -> bool:
    marker = out / MARKER
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or {k: saved.get(k) for k in params} != params:
        return False
    files = saved.get("files")
    return isinstance(files, dict) and list(files) == params["kinds"] and \
        all(len(files[k]) == params["n_per_kind"] and all((out / f).is_file() for f in files[k]) for k in files)


def _tidy(folder: Path, kind: str, keep: set) -> None:
    """Remove this generator's files in `folder` that the new set does not list (another seed or n,
    a killed run's temporaries), so a folder holds one set; anything else is left alone."""
    own = re.compile(rf"^(\.)?{re.escape(kind)}_\d+_\d{{3,}}\.(png|jpg)(\.tmp-\d+)?$")
    for p in folder.iterdir():
        if p.is_file() and own.match(p.name) and p.name not in keep:
            p.unlink()


def write_ood_set(out: Path, n_per_kind: int = 30, seed: int = 1, kinds: Sequence[str] = KINDS,
                  progress: bool = False) -> Path:
    """Write out/<kind>/<name>.<png|jpg> for each kind and out/ood_set.json listing them; reuse a
    complete earlier set made with the same version, seed, n and kinds. Returns `out`."""
    out = Path(out)
    kinds = list(dict.fromkeys(kinds))
    for kind in kinds:
        _check_kind(kind)
    if n_per_kind < 0 or seed < 0:
        raise ValueError(f"n_per_kind and seed must be >= 0, got {n_per_kind} and {seed}")
    params = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "n_per_kind": int(n_per_kind), "kinds": kinds}
    if _complete(out, params):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)  # a killed rewrite must not look complete
    files: Dict[str, List[str]] = {k: [] for k in kinds}
    todo = [(kind, i) for kind in kinds for i in range(n_per_kind)]
    for kind, i in progress_of(todo, "out-of-scope images", enabled=progress):
        k = KINDS.index(kind)
        im = render(kind, np.random.default_rng(_seed_sequence(seed, k, i)))
        ext, options = _save_format(im, np.random.default_rng(_seed_sequence(seed, k, i, 1)), kind)
        rel = f"{kind}/{kind}_{seed}_{i:03d}.{ext}"
        (out / kind).mkdir(exist_ok=True)
        fmt = "PNG" if ext == "png" else "JPEG"
        _write_atomic(out / rel, lambda p, im=im, fmt=fmt, options=options: im.save(p, fmt, **options))
        files[kind].append(rel)
    for kind in kinds:
        if (out / kind).is_dir():
            _tidy(out / kind, kind, {Path(f).name for f in files[kind]})
    record = {**params, "files": files}
    _write_atomic(out / MARKER, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return out


def _kinds_arg(text: str) -> List[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(map(repr, unknown))}; "
                                         f"choose from {', '.join(KINDS)}")
    if not kinds:
        raise argparse.ArgumentTypeError("no kinds given")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fracdata.ood", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write a generated set of out-of-scope images (colour photos, text pages, chest and skull "
                    "films, CT slices, ultrasound, screenshots) for measuring the out-of-scope gate. Tune on "
                    "one seed, report on another.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", default=argparse.SUPPRESS,
                        help="folder to write: one sub-folder per kind and ood_set.json")
    parser.add_argument("--n", type=int, default=30, help="images per kind (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the set, >= 0 (default: %(default)s)")
    parser.add_argument("--kinds", type=_kinds_arg, default=",".join(KINDS),
                        help="comma-separated kinds to write (default: %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error(f"--n must be >= 0, got {args.n}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    out = write_ood_set(args.out, n_per_kind=args.n, seed=args.seed, kinds=args.kinds, progress=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
