"""DICOM to the same [0, 1] grayscale the JPEG path gives, through the optional pydicom (3.x).

Order follows the standard's display pipeline: modality LUT (rescale slope/intercept), then the
VOI LUT or the window the file carries (else the image's own range), then MONOCHROME1 inverted so
bone is bright as in the training JPEGs.

Memory is bounded before anything is decoded: the header is read without the pixel data, only
the first frame is decoded, a deflated file is inflated against a byte budget first, and the
display pipeline runs in bands of rows that are box-reduced as they go, so a full-size detector
image never exists as float64. Every failure, including pydicom's own on malformed values, is an
ImageReadError, and no message here ever carries a tag value: a patient's name, ID or dates must
never reach a log.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .errors import ImageReadError
from .filecheck import check_input_file, open_error, open_regular
from .imageio import (MAX_DECODE_BYTES, WORK_BYTES_PER_PIXEL, DecodedImage, box_reduce_by, check_cost,
                      check_shape, reduce_factor)

SUFFIXES = (".dcm", ".dicom", ".dic")
DEFLATED = "1.2.840.10008.1.2.1.99"
BAND_ROWS = 512  # rows converted at a time (a multiple of every reduction factor)
MAX_DICOM_FILE_BYTES = MAX_DECODE_BYTES  # an uncompressed 43 x 43 cm 16-bit radiograph is ~40 MB


def looks_like_dicom(path: Union[str, Path]) -> bool:
    """By suffix, or by the 'DICM' magic at byte 128. Callers check the file first
    (edge_runtime.filecheck), so this never opens a FIFO or a device."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open_regular(path) as fh:
            head = fh.read(132)
    except (OSError, ImageReadError):
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _number(ds, keyword: str, path: Path, default=None, kind=float):
    """A numeric tag's (first) value, or an error that names the tag, never its value."""
    if keyword not in ds:
        return default
    try:
        value = ds[keyword].value
        if value is None or value == "":
            return default
        if not isinstance(value, (str, bytes)) and hasattr(value, "__getitem__"):
            value = value[0]
        out = kind(float(value)) if kind is int else kind(value)
    except Exception:  # pydicom raises many types on a malformed value
        raise ImageReadError(path, f"DICOM {keyword} is not a valid number") from None
    if kind is float and not np.isfinite(out):
        raise ImageReadError(path, f"DICOM {keyword} is not a finite number")
    return out


def _check_inflated_size(path: Path) -> None:
    """A deflated dataset is inflated whole by pydicom, and kept twice (the buffer, then the pixel
    value): a 2 MB file can hold gigabytes of zeros. The stream is found where pydicom finds it,
    after the meta group as pydicom parses it, never by the length the file declares."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    limit = MAX_DECODE_BYTES // 3
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as fh:
        read_preamble(fh, True)
        _read_file_meta_info(fh)
        while True:
            chunk = fh.read(1 << 16) if not inflater.unconsumed_tail else b""
            data = inflater.unconsumed_tail + chunk
            if not data:
                break
            total += len(inflater.decompress(data, 1 << 20))
            if total > limit:
                raise ImageReadError(path, f"deflated DICOM inflates to more than {limit // 2 ** 20} MB, "
                                           "above what this runtime allows for one image")
            if inflater.eof:
                break


def _window_params(ds, path: Path) -> Optional[Tuple[float, float]]:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    return _number(ds, "WindowCenter", path), _number(ds, "WindowWidth", path)


def _display(band: np.ndarray, ds, photometric: str, window, voi_lut: bool, own_range) -> np.ndarray:
    """Raw stored values of some rows -> [0, 1] as a viewer shows them (no tag value involved)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if band.ndim == 3:  # colour: gray by Rec. 601 luma
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space
            band = convert_color_space(band, photometric, "RGB")
        return np.clip(band[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
                       / float(np.iinfo(band.dtype).max if band.dtype.kind in "ui" else 1.0), 0.0, 1.0)
    arr = np.asarray(apply_modality_lut(band, ds), dtype=np.float32)
    if voi_lut:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(arr, ds, prefer_lut=True), dtype=np.float32) / float(2 ** bits - 1)
    elif window is not None:
        c, w = window
        if w <= 1.0:  # PS3.3 C.11.2.1.2.1: width 1 is a threshold at the centre (below 1 is invalid)
            out = (arr > c - 0.5).astype(np.float32)
        else:
            out = ((arr - (c - 0.5)) / (w - 1.0)) + 0.5
    else:
        lo, hi = own_range
        out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    out = np.clip(out, 0.0, 1.0)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def read_dicom(path: Union[str, Path], draft_size: Optional[Tuple[int, int]] = None) -> DecodedImage:
    """The first frame, displayed and box-reduced like the other formats (by the same factor
    `imageio.reduce_factor` gives for `draft_size`; None keeps the full size)."""
    path = Path(path)
    if check_input_file(path) > MAX_DICOM_FILE_BYTES:
        raise ImageReadError(path, f"DICOM file larger than {MAX_DICOM_FILE_BYTES // 2 ** 20} MB: "
                                   "not a single radiograph this runtime reads")
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageReadError(path, "DICOM file, but pydicom is not installed "
                                   "(pip install 'fracture-edge[dicom]')") from None
    try:
        return _read(path, draft_size, pydicom, InvalidDicomError)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(path, "DICOM image too large to decode in the memory available") from None
    except OSError as exc:
        raise open_error(path, exc) from None
    except Exception as exc:  # pydicom's parsers and decoders raise many types on malformed files
        raise ImageReadError(path, f"DICOM could not be decoded ({type(exc).__name__}); "
                                   "the file is malformed or uses an unsupported feature") from None


def _read(path: Path, draft_size, pydicom, InvalidDicomError) -> DecodedImage:
    from pydicom.pixels import pixel_array

    force = path.suffix.lower() in SUFFIXES
    syntax = None
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        syntax = str(meta.get("TransferSyntaxUID", "")) or None
        if syntax == DEFLATED:
            _check_inflated_size(path)
    except InvalidDicomError:
        if not force:
            raise ImageReadError(path, "not a valid DICOM file") from None
    try:
        # Large values (the pixel data) stay on disk until asked for; only the header is parsed.
        ds = pydicom.dcmread(path, force=force, defer_size=4096)
    except InvalidDicomError:
        raise ImageReadError(path, "not a valid DICOM file") from None
    except (EOFError, ValueError, KeyError, TypeError, IndexError, OverflowError):
        raise ImageReadError(path, "corrupt or truncated DICOM file") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (a report or structured document?)")
    rows = _number(ds, "Rows", path, 0, int)
    cols = _number(ds, "Columns", path, 0, int)
    frames = _number(ds, "NumberOfFrames", path, 1, int)
    samples = _number(ds, "SamplesPerPixel", path, 1, int)
    bits = _number(ds, "BitsAllocated", path, 16, int)
    if rows <= 0 or cols <= 0 or frames <= 0 or samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(path, "DICOM image dimensions are missing or impossible")
    check_shape(path, cols, rows)
    f = reduce_factor((cols, rows), draft_size) if draft_size is not None else 1
    frame_bytes = rows * cols * samples * max(1, bits // 8)
    band_bytes = min(BAND_ROWS, rows) * cols * samples * 4 * 4  # float copies of one band
    check_cost(path, frame_bytes + band_bytes + (rows // f) * (cols // f) * WORK_BYTES_PER_PIXEL)
    warnings: List[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    if frames > 1:
        warnings.append(f"multi-frame DICOM ({frames} frames): only the first frame was read")
    if not photometric.startswith("MONO"):
        warnings.append(f"colour DICOM ({photometric}) converted to grayscale")
    is_compressed = bool(syntax) and getattr(pydicom.uid.UID(syntax), "is_compressed", False)
    try:
        # One frame only; from the file itself where pydicom can (it then reads just that frame).
        arr = pixel_array(ds if syntax in (None, DEFLATED) else str(path), index=0)
    except Exception:
        if is_compressed:
            raise ImageReadError(path, f"compressed transfer syntax '{pydicom.uid.UID(syntax).name}' cannot be "
                                       "decoded here (a decoder such as pylibjpeg or GDCM is needed), "
                                       "or its data is corrupt") from None
        raise ImageReadError(path, "DICOM pixel data is truncated, inconsistent with its header, or in a "
                                   "transfer syntax this runtime cannot read") from None
    if arr.ndim == 3 and photometric.startswith("MONO"):
        arr = arr[0]  # a decoder that kept the frame axis
    if arr.ndim not in (2, 3) or arr.shape[:2] != (rows, cols):
        raise ImageReadError(path, "DICOM pixel array does not match its header's rows and columns")
    voi_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    if voi_lut:
        item = ds.VOILUTSequence[0]
        if "LUTDescriptor" not in item or "LUTData" not in item:
            raise ImageReadError(path, "DICOM VOI LUT is incomplete")
    window = None if voi_lut else _window_params(ds, path)
    own_range = (0.0, 1.0)
    if not voi_lut and window is None and photometric.startswith("MONO"):
        from pydicom.pixels import apply_modality_lut
        lo, hi = np.inf, -np.inf
        for r in range(0, rows, BAND_ROWS):
            m = np.asarray(apply_modality_lut(arr[r:r + BAND_ROWS], ds), dtype=np.float32)
            lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
        own_range = (lo, hi)
        warnings.append("DICOM carries no window: scaled by the image's own range")
    step = BAND_ROWS - BAND_ROWS % f
    out = [box_reduce_by(_display(arr[r:r + step], ds, photometric, window, voi_lut, own_range), f)
           for r in range(0, rows, step)]
    pixels = np.concatenate(out, axis=0) if len(out) > 1 else out[0]
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "DICOM pixels contain non-finite values")
    bits_stored = _number(ds, "BitsStored", path, bits, int)
    return DecodedImage(np.clip(pixels, 0.0, 1.0).astype(np.float32),
                        f"DICOM {photometric} {bits_stored}-bit", (cols, rows), warnings)
