"""The quality gate: before any prediction, is this photo of a film good enough to read?

A rejected photo gets "retake" and reasons a technician can act on, never a probability. The
thresholds were set on simulated photos of phantom radiographs (device/simulate.py; the table is
in tests/test_device_film.py), where every fault class sits far from the clean photos:
sharpness clean >= 0.6 vs blurred <= 0.13; glare share clean 0 vs glare >= 0.07; lightbox level
clean ~0.8 vs under-exposed ~0.1 vs over-exposed 1.0 with >50% of the photo clipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
from PIL import Image

from .film import Flattened

MIN_SHARPNESS = 0.25
MAX_GLARE_SHARE = 0.02
MIN_LIGHTBOX_LEVEL = 0.3
MAX_CLIPPED_SHARE = 0.3
MIN_FILM_SIDE_PX = 300


@dataclass
class Quality:
    ok: bool
    reasons: List[str] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return {"ok": self.ok, "reasons": list(self.reasons), "metrics": dict(self.metrics)}


def sharpness(pixels: np.ndarray) -> float:
    """Strong edges per unit contrast at a fixed scale: the 99th percentile of |Laplacian| / std."""
    h, w = pixels.shape
    small = Image.fromarray(np.ascontiguousarray(pixels, np.float32)).resize((256, max(8, round(256 * h / w))),
                                                                              Image.Resampling.BOX)
    x = np.asarray(small, np.float32)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(np.percentile(np.abs(lap), 99) / (x.std() + 1e-6))


def assess(photo: Image.Image, flat: Flattened) -> Quality:
    raw = np.asarray(photo.convert("L"), np.float32) / 255.0
    clipped = float((raw >= 0.99).mean())
    glare = float((flat.transmission > 0.95).mean()) if flat.transmission is not None else 0.0
    m = {"sharpness": sharpness(flat.pixels), "glare_share": glare, "lightbox_level": flat.lightbox_level,
         "clipped_share": clipped, "film_short_side_px": flat.film_short_side_px,
         "film_share_of_photo": flat.film_fraction}
    reasons = []
    if flat.touches_edge:
        reasons.append("film cut off at the edge of the photo: step back or centre the film")
    if flat.film_short_side_px < MIN_FILM_SIDE_PX:
        reasons.append(f"film too small in the photo ({flat.film_short_side_px:.0f} px across, needs "
                       f"{MIN_FILM_SIDE_PX}): move closer or use a higher resolution")
    over = flat.lightbox_level >= 0.98 and clipped > MAX_CLIPPED_SHARE
    if over:
        reasons.append(f"over-exposed ({clipped:.0%} of the photo is pure white): lower the exposure "
                       "or dim the lightbox")
    if flat.lightbox_level < MIN_LIGHTBOX_LEVEL:
        reasons.append(f"under-exposed (lightbox at {flat.lightbox_level:.0%} brightness): turn the "
                       "lightbox on fully or raise the exposure")
    if not over and glare > MAX_GLARE_SHARE:
        reasons.append(f"glare covers {glare:.0%} of the film: tilt the camera or switch off the room "
                       "light above it")
    if m["sharpness"] < MIN_SHARPNESS:
        reasons.append("too blurred: hold the camera still and let it focus on the film")
    return Quality(not reasons, reasons, m)
