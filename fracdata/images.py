"""Images -> arrays through edge_runtime's own decoder and the geometric half of its preprocess.

Unreadable or missing images are skipped and counted, each named on stderr; more than
`max_skip_fraction` of them stops the run (a broken copy of the data is not worth training on).
A split keeps its images resized but not yet normalised (`resized`); `images` normalises them,
which together is exactly edge_runtime.preprocess.preprocess. Training augments `resized` first
(train/augment.py) and normalises after, as the device normalises after what photos do.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import PreprocessSpec, normalize_intensity, resize_input

from .data import DataError, Record
from .progress import progress as progress_of


@dataclass
class LoadedSplit:
    records: List[Record]
    resized: np.ndarray  # (n, size, size) float32: resized, not yet normalised
    labels: np.ndarray  # (n,) int
    spec: PreprocessSpec
    skipped: List[str] = field(default_factory=list)  # "path: reason"
    shapes: List[Tuple[int, int]] = field(default_factory=list)  # decoded (h, w) of each image, for boxes
    _images: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def images(self) -> np.ndarray:
        """(n, size, size, 1) float32: the model inputs, as edge_runtime.preprocess makes them."""
        if self._images is None:
            self._images = np.stack([normalize_intensity(x, self.spec) for x in self.resized])[..., None] \
                if len(self.resized) else np.zeros((0, self.spec.size, self.spec.size, 1), np.float32)
        return self._images

    @property
    def regions(self) -> List[str]:
        return [r.region for r in self.records]


def load_images(records: Sequence[Record], spec: PreprocessSpec, desc: str = "images",
                progress: bool = True, max_skip_fraction: float = 0.02) -> LoadedSplit:
    kept, arrays, skipped, shapes = [], [], [], []
    for r in progress_of(records, desc, enabled=progress):
        try:
            pixels = read_image(r.path, spec).pixels
            x = resize_input(pixels, spec)
        except ImageReadError as exc:
            skipped.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        arrays.append(x)
        kept.append(r)
        shapes.append(tuple(pixels.shape[:2]))
    if records and len(skipped) / len(records) > max_skip_fraction:
        raise DataError(f"{len(skipped)} of {len(records)} {desc} unreadable (limit "
                        f"{max_skip_fraction:.0%}); first: {skipped[0]}")
    resized = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, spec.size, spec.size), np.float32)
    return LoadedSplit(kept, resized, np.array([r.label for r in kept], dtype=np.int32), spec, skipped, shapes)
