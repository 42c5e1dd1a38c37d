"""DICOM to the same [0, 1] grayscale the JPEG path gives, through the optional pydicom.

Order follows the standard's display pipeline: modality LUT (rescale slope/intercept), then the
VOI LUT or the window the file carries (else the image's own range), then MONOCHROME1 inverted so
bone is bright as in the training JPEGs. No message here ever carries a tag value: a file's
patient name, ID or dates must never reach a log.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

import numpy as np

from .errors import ImageReadError
from .imageio import MAX_PIXELS, MIN_SIDE, DecodedImage

SUFFIXES = (".dcm", ".dicom", ".dic")


def looks_like_dicom(path: Union[str, Path]) -> bool:
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(arr: np.ndarray, ds, warnings: List[str]) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds:
        out = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float32)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return out / float(2 ** bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        # DICOM PS3.3 C.11.2.1.2.1, linear function.
        return np.clip(((arr - (c - 0.5)) / (w - 1.0)) + 0.5, 0.0, 1.0)
    lo, hi = float(arr.min()), float(arr.max())
    warnings.append("DICOM carries no window: scaled by the image's own range")
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def read_dicom(path: Union[str, Path]) -> DecodedImage:
    path = Path(path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise ImageReadError(path, "DICOM file, but pydicom is not installed "
                                   "(pip install 'fracture-edge[dicom]')") from None
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in SUFFIXES)
    except InvalidDicomError:
        raise ImageReadError(path, "not a valid DICOM file") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        raise ImageReadError(path, "corrupt or truncated DICOM file") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (a report or structured document?)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(path, f"image is {cols}x{rows} px, above the {MAX_PIXELS:,} px limit")
    if min(rows, cols) < MIN_SIDE:
        raise ImageReadError(path, f"image is {cols}x{rows} px, too small to read")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        arr = ds.pixel_array
    except Exception:  # pydicom's decoders raise many types; the syntax decides the message
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise ImageReadError(path, f"compressed transfer syntax '{syntax.name}' cannot be decoded here "
                                       "(a decoder such as pylibjpeg or GDCM is needed), or its data is corrupt") from None
        raise ImageReadError(path, "DICOM pixel data is truncated or inconsistent with its header") from None
    warnings: List[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
        warnings.append(f"multi-frame DICOM ({frames} frames): the first frame was read")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3:
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space
                arr = convert_color_space(arr, photometric, "RGB")
            arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        warnings.append(f"colour DICOM ({photometric}) converted to grayscale")
    arr = apply_modality_lut(arr, ds).astype(np.float32) if photometric.startswith("MONO") else arr.astype(np.float32)
    if arr.ndim != 2:
        raise ImageReadError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    pixels = _window(arr, ds, warnings)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "DICOM pixels contain non-finite values")
    bits = ds.get("BitsStored", "?")
    return DecodedImage(np.clip(pixels, 0.0, 1.0).astype(np.float32), f"DICOM {photometric} {bits}-bit",
                        (cols, rows), warnings)
