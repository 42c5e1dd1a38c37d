"""Simulated phone or Pi-camera photos of a film on a lightbox, made from a radiograph file.

The tests (and the film-vs-file comparison in docs/results.md) need photos with known faults:
perspective, uneven light, a colour cast, blur, a glare spot, over/under-exposure and moiré.
A photo records lightbox light times the film's transmission; a radiograph shows bone bright,
which on film is clear, so the radiograph's pixel value *is* the transmission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

from .film import _perspective_coeffs


@dataclass
class PhotoSettings:
    size: Tuple[int, int] = (1600, 1200)  # photo (width, height)
    film_fraction: float = 0.6  # film's share of the photo's width
    tilt: float = 0.06  # corner jitter, share of the film's size (perspective)
    gradient: float = 0.25  # lightbox brightness falls by this much across the frame
    cast: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain (e.g. a blue LED box)
    exposure: float = 0.92  # lightbox level in the photo
    blur: float = 0.0  # Gaussian radius, px
    glare: float = 0.0  # glare spot radius as a share of the film's width
    moire: float = 0.0  # amplitude of a screen-beat pattern
    noise: float = 0.01
    cut_off: float = 0.0  # share of the film pushed out of the frame on the right


def photo_of_film(radiograph: np.ndarray, settings: PhotoSettings = PhotoSettings(),
                  seed: int = 0) -> Tuple[Image.Image, np.ndarray]:
    """(RGB photo, the film's true corners in it: TL, TR, BR, BL)."""
    rng = np.random.default_rng(seed)
    s = settings
    W, H = s.size
    rh, rw = radiograph.shape
    fw = s.film_fraction * W
    fh = fw * rh / rw
    if fh > 0.85 * H:
        fh = 0.85 * H
        fw = fh * rw / rh
    cx, cy = W / 2 + s.cut_off * fw, H / 2
    base = np.array([[cx - fw / 2, cy - fh / 2], [cx + fw / 2, cy - fh / 2],
                     [cx + fw / 2, cy + fh / 2], [cx - fw / 2, cy + fh / 2]])
    corners = base + rng.uniform(-s.tilt, s.tilt, (4, 2)) * np.array([fw, fh])
    src = np.array([[0, 0], [rw, 0], [rw, rh], [0, rh]], float)
    coeffs = _perspective_coeffs(corners, src)  # photo (x, y) -> radiograph (u, v)
    film = Image.fromarray(np.asarray(radiograph, np.float32))
    inside = Image.fromarray(np.ones((rh, rw), np.float32))
    trans = np.asarray(film.transform((W, H), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR), np.float32)
    mask = np.asarray(inside.transform((W, H), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR), np.float32)
    # Film base transmits ~85% at its clearest; dense areas let almost nothing through.
    transmission = 1.0 - mask + mask * (0.02 + 0.83 * trans)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    light = s.exposure * (1.0 - s.gradient * (xx / W) * 0.7 - s.gradient * (yy / H) * 0.3)
    lum = light * transmission
    if s.moire:
        lum *= 1.0 + s.moire * np.sin(2 * np.pi * (xx * 0.173 + yy * 0.041)) * np.sin(2 * np.pi * xx * 0.0061)
    rgb = lum[:, :, None] * np.array(s.cast, np.float32)[None, None, :]
    if s.glare:
        gx, gy = corners.mean(axis=0) + rng.uniform(-0.15, 0.15, 2) * np.array([fw, fh])
        r = s.glare * fw
        rgb += 1.6 * np.exp(-(((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r)))[:, :, None]
    rgb += rng.normal(0, s.noise, rgb.shape).astype(np.float32)
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    if s.blur:
        img = img.filter(ImageFilter.GaussianBlur(s.blur))
    return img, corners


def radiograph_from_file(path) -> np.ndarray:
    from edge_runtime.imageio import read_grayscale
    return read_grayscale(path).pixels


def default_faults(kind: Optional[str]) -> PhotoSettings:
    """Named faults the tests and the results use."""
    table = {
        None: PhotoSettings(), "clean": PhotoSettings(),
        "cast": PhotoSettings(cast=(0.8, 0.95, 1.15)),
        "uneven": PhotoSettings(gradient=0.5),
        "moire": PhotoSettings(moire=0.06),
        "blur": PhotoSettings(blur=9.0),
        "glare": PhotoSettings(glare=0.12),
        "dark": PhotoSettings(exposure=0.12),
        "bright": PhotoSettings(exposure=1.9),
        "cut_off": PhotoSettings(cut_off=0.7),
        "small": PhotoSettings(size=(320, 240)),
    }
    return table[kind]
