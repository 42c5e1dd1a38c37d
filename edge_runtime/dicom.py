"""DICOM to the same [0, 1] grayscale the JPEG path gives, through the optional pydicom (3.x).

Order follows the standard's display pipeline: modality LUT (rescale slope/intercept), then the
VOI LUT or the window the file carries (else the image's own range), then MONOCHROME1 inverted so
bone is bright as in the training JPEGs.

Memory is bounded before anything is decoded: the header is read without the pixel data, only
the first frame is decoded, a deflated file is inflated against a byte budget first, and the
display pipeline runs in bands of rows that are box-reduced as they go, so a full-size detector
image never exists as float64. A compressed frame is read as pydicom would read it, its own
codestream header is checked against Rows, Columns and samples (`codestream.py`) and budgeted,
and only then is that same frame handed to a decoder, whichever is installed. What the content
is decides what is read, not the name: a PNG named .dcm is not parsed as DICOM. Every failure,
including pydicom's own on malformed values, is an ImageReadError, and no message here ever
carries a tag value: a patient's name, ID or dates must never reach a log.
"""

from __future__ import annotations

import logging
import os
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from .codestream import CHECKED_SYNTAXES, CodestreamError, check_frame
from .content import describe, sniff_file
from .errors import ImageReadError
from .filecheck import check_input_file, open_error, open_regular
from .imageio import (MAX_DECODE_BYTES, WORK_BYTES_PER_PIXEL, DecodedImage, box_reduce_by, check_cost,
                      check_shape, detached, reduce_factor)
from .scope import colour_fraction

SUFFIXES = (".dcm", ".dicom", ".dic")
DEFLATED = "1.2.840.10008.1.2.1.99"
BAND_ROWS = 512  # rows converted at a time (a multiple of every reduction factor)
MAX_DICOM_FILE_BYTES = MAX_DECODE_BYTES  # an uncompressed 43 x 43 cm 16-bit radiograph is ~40 MB
# What a decoder holds beside a compressed frame's samples, measured through pydicom on 3000^2
# frames: 1.3 (RLE) to 4.8 (colour JPEG) bytes per sample (Pillow's image and its tobytes copy,
# openjpeg's int32 planes, pydicom's copies). The compressed frame itself is held three times.
DECODER_BYTES_PER_SAMPLE = 5
FRAME_COPIES = 3


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

    if band.ndim == 3:  # colour, already RGB (pydicom converts YBR when decoding): gray by Rec. 601 luma
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


def read_dicom(path: Union[str, Path], draft_size: Optional[Tuple[int, int]] = None, *,
               checked: Optional[Tuple[int, Optional[str]]] = None) -> DecodedImage:
    """The first frame, displayed and box-reduced like the other formats (by the same factor
    `imageio.reduce_factor` gives for `draft_size`; None keeps the full size). `checked`: (size,
    content.sniff's kind) from a caller that has already looked at the file with `stat` and
    sniffed it (imageio.read_file), so it is not done twice."""
    path = Path(path)
    size, kind = checked if checked is not None else (check_input_file(path), None)
    if size > MAX_DICOM_FILE_BYTES:
        raise ImageReadError(path, f"DICOM file larger than {MAX_DICOM_FILE_BYTES // 2 ** 20} MB: "
                                   "not a single radiograph this runtime reads")
    if checked is None:
        kind = sniff_file(path)
    if kind not in ("DICOM", None):
        raise ImageReadError(path, f"the content is not DICOM (it looks like {describe(kind)}, whatever its "
                                   "name says)")
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageReadError(path, "DICOM file, but pydicom is not installed "
                                   "(pip install 'fracture-edge[dicom]')") from None
    # Every refusal is raised after the except block is left, so that the traceback (and through
    # it the dataset and the arrays of a failed decoding) is gone before the refusal is made.
    problem = None
    try:
        with _quiet_pydicom():
            return _read(path, draft_size, pydicom, InvalidDicomError, kind == "DICOM")
    except ImageReadError as exc:
        problem = detached(exc)
    except MemoryError:
        problem = MemoryError
    except OSError as exc:
        problem = open_error(path, exc)
    except Exception as exc:  # pydicom's parsers and decoders raise many types on malformed files
        problem = ImageReadError(path, f"DICOM could not be decoded ({type(exc).__name__}); "
                                       "the file is malformed or uses an unsupported feature")
    if problem is MemoryError:
        problem = ImageReadError(path, "DICOM image too large to decode within this process's memory ceiling")
    raise problem


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's own warnings and log records quote the values they complain about ("Invalid value
    for VR UI: '...'"), and a malformed value can run on into the patient's name: none of them may
    reach stderr or the service's log. Only our own messages, which never quote a value, do."""
    logger = logging.getLogger("pydicom")
    was = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = was


def _read(path: Path, draft_size, pydicom, InvalidDicomError, has_magic: bool) -> DecodedImage:
    ds, syntax, uid, compressed = _dataset(path, pydicom, InvalidDicomError, has_magic)
    rows, cols, frames, samples, bits = _geometry(ds, path)
    f = reduce_factor((cols, rows), draft_size) if draft_size is not None else 1
    frame_bytes = rows * cols * samples * max(1, bits // 8)
    band_bytes = min(BAND_ROWS, rows) * cols * samples * 4 * 4  # float copies of one band
    cost = frame_bytes + band_bytes + (rows // f) * (cols // f) * WORK_BYTES_PER_PIXEL
    if compressed:
        frame, opts, cost = _checked_frame(path, uid, syntax, (rows, cols, samples, bits), cost)
    check_cost(path, cost)
    notes: List[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): only the first frame was read")
    if not photometric.startswith("MONO"):
        notes.append(f"colour DICOM ({photometric}) converted to grayscale")
    if compressed:
        buffer = encapsulate_one(frame)
        del frame  # the decoder gets the checked bytes themselves, held once
        arr = _decode_frame(path, uid, buffer, opts)
        del buffer
    else:
        arr = _uncompressed_frame(path, ds, syntax)
    if arr.ndim == 3 and photometric.startswith("MONO"):
        arr = arr[0]  # a decoder that kept the frame axis
    if arr.ndim not in (2, 3) or arr.shape[:2] != (rows, cols):
        raise ImageReadError(path, "DICOM pixel array does not match its header's rows and columns")
    colour = None
    if arr.ndim == 3 and not photometric.startswith("MONO"):  # what the out-of-scope gate reads of a colour file
        top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
        colour = colour_fraction(arr[::f, ::f, :3].astype(np.float32) * (255.0 / top))
    pixels = _displayed(arr, ds, path, photometric, f, notes)
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "DICOM pixels contain non-finite values")
    bits_stored = _number(ds, "BitsStored", path, bits, int)
    return DecodedImage(np.clip(pixels, 0.0, 1.0).astype(np.float32),
                        f"DICOM {photometric} {bits_stored}-bit", (cols, rows), notes, colour)


def _dataset(path: Path, pydicom, InvalidDicomError, has_magic: bool):
    """(the header as a dataset, without the pixel data; transfer syntax; its UID; compressed?),
    a deflated file's inflated size checked first."""
    force = not has_magic and path.suffix.lower() in SUFFIXES  # a DICOM name, no preamble: try
    syntax = None
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        syntax = str(meta.get("TransferSyntaxUID", "")) or None
        if syntax == DEFLATED:
            _check_inflated_size(path)
    except InvalidDicomError:
        if not force:
            raise ImageReadError(path, "not a valid DICOM file") from None
    uid = pydicom.uid.UID(syntax) if syntax else None
    try:
        compressed = uid is not None and uid.is_encapsulated
    except ValueError:  # not a transfer syntax pydicom knows (its value is not quoted: a tag value)
        raise ImageReadError(path, "DICOM transfer syntax is not one this runtime knows") from None
    try:
        # Large values (the pixel data) stay on disk until asked for; only the header is parsed.
        # Encapsulated pixel data has no length to defer by: pydicom would read it whole.
        ds = pydicom.dcmread(path, force=force, defer_size=4096, stop_before_pixels=compressed)
    except InvalidDicomError:
        raise ImageReadError(path, "not a valid DICOM file") from None
    except (EOFError, ValueError, KeyError, TypeError, IndexError, OverflowError):
        raise ImageReadError(path, "corrupt or truncated DICOM file") from None
    if not compressed and "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if not has_magic:
            raise ImageReadError(path, "the content is not DICOM: no DICOM header ('DICM' at byte 128) and no "
                                       "pixel data")
        raise ImageReadError(path, "DICOM file has no pixel data (a report or structured document?)")
    return ds, syntax, uid, compressed


def _geometry(ds, path: Path) -> Tuple[int, int, int, int, int]:
    """(rows, columns, frames, samples per pixel, bits allocated), checked possible and a radiograph's shape."""
    rows = _number(ds, "Rows", path, 0, int)
    cols = _number(ds, "Columns", path, 0, int)
    frames = _number(ds, "NumberOfFrames", path, 1, int)
    samples = _number(ds, "SamplesPerPixel", path, 1, int)
    bits = _number(ds, "BitsAllocated", path, 16, int)
    if rows <= 0 or cols <= 0 or frames <= 0 or samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(path, "DICOM image dimensions are missing or impossible")
    check_shape(path, cols, rows)
    return rows, cols, frames, samples, bits


def _checked_frame(path: Path, uid, syntax: str, geometry: Tuple[int, int, int, int], cost: int):
    """(the first compressed frame, pydicom's decoding options, the cost with what decoding it
    holds), before any decoder: the frame as pydicom would read it, and its own header checked
    against the DICOM header's `geometry` (rows, columns, samples, bits)."""
    rows, cols, samples, bits = geometry
    if syntax not in CHECKED_SYNTAXES:
        raise ImageReadError(path, f"compressed transfer syntax '{uid.name}' is not one this runtime reads")
    samples_total = rows * cols * samples
    cost += samples_total * DECODER_BYTES_PER_SAMPLE
    frame, opts = _first_frame(path, uid, cost)
    if (opts.get("rows"), opts.get("columns"), opts.get("samples_per_pixel", 1), opts.get("bits_allocated")) \
            != (rows, cols, samples, bits):
        raise ImageReadError(path, "DICOM header is inconsistent: its image attributes differ where pydicom "
                                   "reads them for decoding")
    try:
        extra = check_frame(syntax, frame, rows, cols, samples, bits)
    except CodestreamError as exc:
        raise ImageReadError(path, f"compressed transfer syntax '{uid.name}': its first frame {exc}; "
                                   "refused before decoding") from None
    cost += (samples_total * max(0, extra["sample_bytes"] - max(1, bits // 8)) + extra["decoder_bytes"]
             + FRAME_COPIES * len(frame))
    return frame, opts, cost


def _uncompressed_frame(path: Path, ds, syntax: Optional[str]) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        # One frame only; from the file itself where pydicom can (it then reads just that frame).
        return pixel_array(ds if syntax in (None, DEFLATED) else str(path), index=0)
    except MemoryError:
        raise
    except Exception:
        raise ImageReadError(path, "DICOM pixel data is truncated, inconsistent with its header, or in a "
                                   "transfer syntax this runtime cannot read") from None


def _displayed(arr: np.ndarray, ds, path: Path, photometric: str, f: int, warnings: List[str]) -> np.ndarray:
    """The stored values through the display pipeline (VOI LUT, else the window, else the image's
    own range), in bands of rows box-reduced by `f` as they go."""
    rows = arr.shape[0]
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
    return np.concatenate(out, axis=0) if len(out) > 1 else out[0]


def _first_frame(path: Path, uid, cost: int) -> Tuple[bytes, dict]:
    """The first frame's compressed bytes and pydicom's decoding options, found exactly as
    pydicom's own `pixel_array(path, index=0)` finds them (offset tables included); the frame's
    extent is measured from the item headers first, so an oversized one is refused unread."""
    try:
        from pydicom.encaps import get_frame, parse_basic_offsets, parse_fragments
        from pydicom.pixels.utils import _DEFAULT_TAGS, _array_common
    except ImportError:  # a pydicom whose internals moved: refuse rather than decode unchecked
        raise ImageReadError(path, f"compressed transfer syntax '{uid.name}' cannot be checked with this pydicom "
                                   "version (3.0 is supported)") from None
    with open_regular(path) as fh:
        try:
            _, opts = _array_common(fh, list(_DEFAULT_TAGS))
        except AttributeError:  # no pixel data element
            raise ImageReadError(path, "DICOM file has no pixel data (a report or structured document?)") from None
        try:
            start = fh.tell()
            check_cost(path, cost + FRAME_COPIES * _first_frame_extent(fh, opts, parse_basic_offsets, parse_fragments))
            fh.seek(start)
            frame = get_frame(fh, 0, number_of_frames=opts["number_of_frames"],
                              extended_offsets=opts.get("extended_offsets"))
        except (MemoryError, OSError, ImageReadError):
            raise
        except Exception:  # pydicom raises many types on a malformed item structure
            raise ImageReadError(path, f"compressed transfer syntax '{uid.name}': its pixel data is not a valid "
                                       "sequence of compressed frames") from None
    opts = {k: v for k, v in opts.items() if k != "extended_offsets"}
    opts["number_of_frames"] = 1
    return frame, opts


def _first_frame_extent(fh, opts: dict, parse_basic_offsets, parse_fragments) -> int:
    """An upper bound on the bytes get_frame will read for frame 0, from item headers only."""
    end = os.fstat(fh.fileno()).st_size
    offsets = parse_basic_offsets(fh)
    _, items = parse_fragments(fh)
    if not items:
        return 0
    total = max(0, end - items[0])
    if opts.get("extended_offsets") or opts["number_of_frames"] == 1:
        return total
    if len(offsets) > 1:
        return max(0, min(total, offsets[1] - offsets[0]))
    if len(items) == opts["number_of_frames"]:
        return max(0, min(total, (items[1] if len(items) > 1 else end) - items[0]))
    return total


def encapsulate_one(frame: bytes) -> bytes:
    """One frame as encapsulated pixel data (an empty offset table, then the frame as one item)."""
    import struct
    pad = b"\0" if len(frame) % 2 else b""
    return (b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0" + struct.pack("<I", len(frame) + len(pad))
            + frame + pad)


def _decode_frame(path: Path, uid, buffer: bytes, opts: dict) -> np.ndarray:
    """Decode the checked frame itself (not the file again), with whichever decoder is installed."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(path, f"compressed transfer syntax '{uid.name}' is not one this runtime reads") from None
    if not decoder.is_available:
        raise ImageReadError(path, f"compressed transfer syntax '{uid.name}' needs a decoder that is not installed "
                                   "here (pylibjpeg with its plugins, or GDCM)")
    try:
        arr, _ = decoder.as_array(buffer, index=0, validate=True, raw=False, **opts)
    except MemoryError:
        raise
    except Exception:  # every decoder raises its own types on corrupt data
        raise ImageReadError(path, f"compressed transfer syntax '{uid.name}': its first frame could not be decoded "
                                   "(the compressed data is corrupt)") from None
    return arr
