"""One way in for every image, on the device and in training: decode (Pillow or DICOM), then THE
preprocess. JPEGs decode at a reduced DCT scale no smaller than the model input, which training
uses too, so the device sees exactly the pixels the model was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from .dicom import looks_like_dicom, read_dicom
from .imageio import DecodedImage, read_grayscale
from .preprocess import PreprocessSpec, preprocess


def read_image(path: Union[str, Path], spec: PreprocessSpec) -> DecodedImage:
    """Decoded and reduced the same way whatever the format: JPEG by its codec's DCT scaling, the
    others by box averaging with the same factor, so one radiograph as JPEG, PNG or DICOM gives
    the model the same pixels."""
    draft = (spec.size, spec.size)
    # Both readers check the file before opening it, and looks_like_dicom opens without blocking.
    if looks_like_dicom(path):
        return read_dicom(path, draft_size=draft)
    return read_grayscale(path, draft_size=draft)


def load_input(path: Union[str, Path], spec: PreprocessSpec) -> Tuple[np.ndarray, DecodedImage]:
    """(model input (size, size, 1) float32, the decoded image) for one file."""
    decoded = read_image(path, spec)
    return preprocess(decoded.pixels, spec), decoded
