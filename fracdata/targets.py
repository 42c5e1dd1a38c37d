"""Fracture boxes -> what a fracture-map model is trained and scored on (numpy only).

Boxes arrive relative to the stored image (fracdata/boxes.py). They are placed on the model's
input as THE preprocessing places the image (stretched, or letterboxed and padded), moved with
the pixels by augmentation (train/augment.py), and turned into one target per map cell:

- **positive** (1): a cell the box covers well: at least `min(0.3, half of the best-covered
  cell of that box)` of its area, so a box smaller than a cell still marks the cell it sits in;
- **ignored** (weight 0): any other cell within `margin` cells of a box: an annotator's box is
  loose, and a fracture line runs on past it; training must not punish the map there;
- **negative** (0): every other cell: real anatomy, markers, casts and background that are not a
  fracture. On a radiograph with boxes, these are the honest real negatives.

An image whose boxes are unknown (a fractured image without annotation, or an unlabelled one)
has no cell targets at all (weight 0 everywhere): it adds nothing to the map loss.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, content_box

Box = Tuple[float, float, float, float]  # (x0, y0, x1, y1)

POSITIVE_COVER = 0.3  # share of a cell a box must cover for the cell to be positive
MARGIN_CELLS = 1.0  # ignored ring around each box, in cells


def input_boxes(boxes: Sequence[Box], image_shape: Tuple[int, int], spec: PreprocessSpec) -> List[Box]:
    """Boxes relative to the stored image -> pixel boxes on the model's (size x size) input."""
    top, left, nh, nw = content_box(image_shape, spec)
    return [(left + x0 * nw, top + y0 * nh, left + x1 * nw, top + y1 * nh) for x0, y0, x1, y1 in boxes]


def _coverage(box: Box, grid: int, stride: float) -> np.ndarray:
    """(grid, grid): the share of each cell's area that the pixel box covers."""
    x0, y0, x1, y1 = box
    edges = np.arange(grid + 1) * stride
    cover_x = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None) / stride
    cover_y = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None) / stride
    return cover_y[:, None] * cover_x[None, :]


def cell_targets(boxes: Optional[Sequence[Box]], size: int, grid: int,
                 margin: float = MARGIN_CELLS) -> Tuple[np.ndarray, np.ndarray]:
    """(target, weight), each (grid, grid) float32, for pixel boxes on a (size x size) input.

    `boxes` None: nothing known (weight 0 everywhere). Empty: a known negative (all cells 0,
    weight 1). A box moved wholly outside the input by a crop marks no positive cell, but the
    margin ring it reaches into the input is still ignored."""
    target = np.zeros((grid, grid), np.float32)
    if boxes is None:
        return target, np.zeros((grid, grid), np.float32)
    weight = np.ones((grid, grid), np.float32)
    stride = size / grid
    m = margin * stride
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            continue
        # the ring is ignored even when the box itself lies just outside the input: the fracture
        # line may run on into the frame, so those cells are not known negatives
        weight[_coverage((x0 - m, y0 - m, x1 + m, y1 + m), grid, stride) > 0] = 0.0
        cover = _coverage((x0, y0, x1, y1), grid, stride)
        best = float(cover.max())
        if best > 0:
            target[cover >= min(POSITIVE_COVER, 0.5 * best)] = 1.0
    weight[target > 0] = 1.0
    return target, weight
