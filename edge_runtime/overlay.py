"""Blend a Grad-CAM heatmap over the radiograph for a clinician to look at (numpy + Pillow only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

# Anchor points of a jet-like colormap: dark blue -> cyan -> yellow -> red.
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array([[0, 0, 128], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float32)


def colormap(heat: np.ndarray) -> np.ndarray:
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    rgb = np.stack([np.interp(h, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


_LEVELS = np.linspace(0.0, 1.0, 256, dtype=np.float32)


def _palette() -> list:
    return colormap(_LEVELS).astype(np.uint8).reshape(-1).tolist()


def blend_image(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> Image.Image:
    """The radiograph with the heatmap mixed in where it is strong, as an RGB image.

    Colouring and mixing run in Pillow's C loops (a palette and a composite with a mask), so a
    display-size overlay costs a few milliseconds, not more than the inference it explains."""
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g[:, :, 0]
    h, w = g.shape
    heat_img = Image.fromarray(np.ascontiguousarray(np.asarray(heat, dtype=np.float32)))
    heat_up = np.asarray(heat_img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    level = Image.fromarray((np.clip(heat_up, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    colour = level.copy()
    colour.putpalette(_palette())  # an "L" image with a palette is a "P" image
    colour = colour.convert("RGB")
    # Weak activations stay mostly transparent so the bone remains readable.
    mask = level.point([int(round(255.0 * alpha * (i / 255.0) ** 0.8)) for i in range(256)])
    base = Image.fromarray((np.clip(g, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)).convert("RGB")
    return Image.composite(colour, base, mask)


def save_overlay(path: Union[str, Path], gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4,
                 max_side: Optional[int] = None) -> Path:
    """Write the overlay (JPEG or PNG by the path's suffix), shrunk first to `max_side`: it is drawn
    at the size it will be looked at, never at the radiograph's full size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g[:, :, 0]
    if max_side and max(g.shape) > max_side:
        scale = max_side / max(g.shape)
        size = (max(1, round(g.shape[1] * scale)), max(1, round(g.shape[0] * scale)))
        g = np.asarray(Image.fromarray(np.ascontiguousarray(g)).resize(size, Image.Resampling.BOX), np.float32)
    img = blend_image(g, heat, alpha)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=90)
    else:
        img.save(path, compress_level=1)  # zlib's fastest level: 3x quicker, files ~20% larger
    return path
