"""THE preprocessing function: training imports it, the device runs it. Change it in one place.

Stretch (the default) resizes the whole radiograph to size x size, as the paper's Keras pipeline
did; letterbox keeps the aspect ratio and pads. The choice is recorded in every run and bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

import numpy as np
from PIL import Image

RESIZE_MODES = ("stretch", "letterbox")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "area": Image.Resampling.BOX}


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 128
    resize: str = "stretch"
    resample: str = "bilinear"
    pad_value: float = 0.0
    channels: int = 1

    def __post_init__(self) -> None:
        if not 8 <= int(self.size) <= 4096:
            raise ValueError(f"preprocess size must be within 8..4096, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {tuple(_RESAMPLE)}, got {self.resample!r}")
        if not 0.0 <= self.pad_value <= 1.0:
            raise ValueError(f"pad_value must be within [0, 1], got {self.pad_value}")
        if self.channels != 1:
            raise ValueError("models take one grayscale channel; 3-channel bases replicate it inside")

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "range": [0.0, 1.0], "dtype": "float32", "layout": "NHWC"}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PreprocessSpec":
        return cls(**{k: d[k] for k in ("size", "resize", "resample", "pad_value", "channels") if k in d})


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """2-D grayscale array in [0, 1] -> (size, size, 1) float32 in [0, 1]."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"preprocess expects a 2-D grayscale array, got shape {arr.shape}")
    resample = _RESAMPLE[spec.resample]
    img = Image.fromarray(np.ascontiguousarray(arr))  # mode "F"
    if spec.resize == "stretch":
        out = np.asarray(img.resize((spec.size, spec.size), resample), dtype=np.float32)
    else:
        h, w = arr.shape
        scale = spec.size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(img.resize((nw, nh), resample), dtype=np.float32)
        out = np.full((spec.size, spec.size), spec.pad_value, dtype=np.float32)
        top, left = (spec.size - nh) // 2, (spec.size - nw) // 2
        out[top:top + nh, left:left + nw] = small
    return np.clip(out, 0.0, 1.0)[:, :, None]
