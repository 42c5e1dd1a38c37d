"""One way in for every image, on the device and in training: decode (Pillow or DICOM), then THE
preprocess. JPEGs decode at a reduced DCT scale no smaller than the model input, which training
uses too, so the device sees exactly the pixels the model was trained on.

What a file is comes from its content, never its name (`content.py`): a PNG named .dcm is read as
the PNG it is, with a warning that its name is misleading; a DICOM named .png is read as DICOM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from .content import describe
from .dicom import SUFFIXES as DICOM_SUFFIXES
from .imageio import DecodedImage, read_file
from .preprocess import PreprocessSpec, preprocess


def read_image(path: Union[str, Path], spec: PreprocessSpec) -> DecodedImage:
    """Decoded and reduced the same way whatever the format: JPEG by its codec's DCT scaling, the
    others by box averaging with the same factor, so one radiograph as JPEG, PNG or DICOM gives
    the model the same pixels. The file is looked at with `stat` before anything opens it (a FIFO
    or a device is refused unopened), then opened and sniffed once (`imageio.read_file`)."""
    decoded, kind = read_file(path, (spec.size, spec.size), dicom_names=DICOM_SUFFIXES)
    suffix = Path(path).suffix
    if suffix.lower() in DICOM_SUFFIXES and kind not in ("DICOM", None):
        decoded.warnings.insert(0, f"named {suffix} but the content is {describe(kind)}, not DICOM: "
                                   "read as what it is")
    return decoded


def load_input(path: Union[str, Path], spec: PreprocessSpec) -> Tuple[np.ndarray, DecodedImage]:
    """(model input (size, size, 1) float32, the decoded image) for one file."""
    decoded = read_image(path, spec)
    return preprocess(decoded.pixels, spec), decoded
