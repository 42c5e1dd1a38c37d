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


def blend(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 image: the radiograph, with the heatmap mixed in where it is strong."""
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g[:, :, 0]
    h, w = g.shape
    heat_img = Image.fromarray(np.ascontiguousarray(np.asarray(heat, dtype=np.float32)))
    heat_up = np.asarray(heat_img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    heat_up = np.clip(heat_up, 0.0, 1.0)
    base = np.repeat((np.clip(g, 0, 1) * 255.0)[:, :, None], 3, axis=2)
    # Weak activations stay mostly transparent so the bone remains readable.
    a = (alpha * np.clip(heat_up, 0, 1) ** 0.8)[:, :, None]
    out = base * (1 - a) + colormap(heat_up).astype(np.float32) * a
    return np.clip(out, 0, 255).astype(np.uint8)


def save_overlay(path: Union[str, Path], gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4,
                 max_side: Optional[int] = None) -> Path:
    """Write the overlay PNG; `max_side` shrinks a full-size radiograph first (cheaper, still readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g[:, :, 0]
    if max_side and max(g.shape) > max_side:
        scale = max_side / max(g.shape)
        size = (max(1, round(g.shape[1] * scale)), max(1, round(g.shape[0] * scale)))
        g = np.asarray(Image.fromarray(np.ascontiguousarray(g)).resize(size, Image.Resampling.BOX), np.float32)
    gray = g
    Image.fromarray(blend(gray, heat, alpha)).save(path)
    return path
