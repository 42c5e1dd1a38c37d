"""Decode a radiograph file into a 2-D float32 array in [0, 1].

Training and the device both read images through `read_grayscale`, so a JPEG, a 16-bit PNG or a
colour photo becomes the same pixels in both places. Pillow opens only the format the content is
(`open_image`): some of its formats decode inside `Image.open` (an ICO decodes the largest image
it wraps), before any budget could be checked, and the allowed ones hold their metadata there (a
TIFF listing 3,000,000 strips took 569 MB), so each container is walked first, within bounds
(`codestream.check_container`). A file that still exhausts the memory ceiling is that file's
error: the exception, its traceback and the image they hold are dropped before the refusal is
made, so the batch goes on.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from .codestream import MetadataError, check_container
from .content import HEAD_BYTES, PILLOW_FORMATS, describe, not_readable, sniff
from .errors import ImageReadError
from .scope import colour_fraction
from .filecheck import check_input_file, open_error, open_regular

# Larger than any plain radiograph (a 43 x 43 cm detector at 100 um is ~18.5 MP); anything
# above this is treated as a decompression bomb rather than decoded.
MAX_PIXELS = 80_000_000
MIN_SIDE = 16
# Memory is bounded before decoding, in bytes, not only in pixels: a 16-bit image costs more
# than an 8-bit one, and a 78 KB PNG can declare 80 MP. With the interpreter's ~60 MB this
# keeps one input under ~400 MB, what a 1 GB Pi can spare.
MAX_DECODE_BYTES = 256 * 2 ** 20
MAX_ASPECT = 12  # a stitched long-leg radiograph is about 1:4; a 60:1 strip is not a radiograph
WORK_BYTES_PER_PIXEL = 24  # gray conversion, colour check and float copies, at the reduced size

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_REDUCIBLE = ("L", "RGB", "RGBA", "LA", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA")  # and "P" with a transparent index
ON_BLACK_ROWS = 256  # on_black works a band at a time: its copies stay a few MB whatever the image
TRANSPARENCY_WARNING = "transparent pixels read as composited onto black"


@dataclass
class DecodedImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1]
    source_mode: str
    source_size: Tuple[int, int]  # (width, height) as stored in the file
    warnings: List[str] = field(default_factory=list)
    colour: Optional[float] = None  # a colour file's coloured fraction (scope.colour_fraction); None for gray ones


# What Pillow and its plugins raise on files that are not images, or are malformed or truncated.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                 ZeroDivisionError, OverflowError, MemoryError, Image.DecompressionBombError)


def decode_error(path: Union[str, Path], exc: BaseException) -> ImageReadError:
    """One of DECODE_ERRORS, in words that say what to do about it."""
    if isinstance(exc, UnidentifiedImageError):
        return ImageReadError(path, "not an image, or a kind of image file this device cannot open (it reads "
                                    "JPEG, PNG, TIFF, BMP, GIF, WebP and DICOM)")
    if isinstance(exc, Image.DecompressionBombError):
        return ImageReadError(path, f"far more pixels than a radiograph has: refused as a decompression bomb ({exc})")
    if isinstance(exc, MemoryError):
        return ImageReadError(path, "image too large to decode within this process's memory ceiling")
    if isinstance(exc, OSError) and not type(exc) is OSError:  # permission, vanished: not corruption
        return open_error(path, exc)
    return ImageReadError(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})")


def check_file_size(path: Union[str, Path], size: int) -> None:
    """No single radiograph or photo file is this large; a file that is can make a decoder hold
    it whole (metadata, tags) before any image budget applies."""
    if size > MAX_DECODE_BYTES:
        raise ImageReadError(path, f"file larger than {MAX_DECODE_BYTES // 2 ** 20} MB: not a single image "
                                   "this runtime reads")


def open_image(fh, path: Union[str, Path], kind: Optional[str] = None) -> Image.Image:
    """Image.open restricted to the one format the content is (content.sniff, or `kind` when the
    caller sniffed it already), from an allow-list of formats that decode no pixels while
    opening; the name is never consulted. The container is walked first (codestream.check_container):
    metadata or structure that Pillow would hold while opening it (a TIFF listing millions of
    strips, megabytes of GIF comments, PNG or WebP chunks or JPEG APP segments) is refused unread."""
    if kind is None:
        kind = sniff(fh.read(HEAD_BYTES))
    fh.seek(0)
    if kind == "DICOM":
        raise ImageReadError(path, "the content is DICOM: read it with the runtime's DICOM reader "
                                   "(`python -m edge_runtime predict`), not as a picture")
    if kind not in PILLOW_FORMATS:
        raise not_readable(path, kind)
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    try:
        check_container(kind, fh, size)
    except MetadataError as exc:
        raise ImageReadError(path, f"{describe(kind)} that {exc}: not a radiograph; refused before opening "
                                   "it") from None
    return Image.open(fh, formats=[kind])


def _is_jpeg(img: Image.Image) -> bool:
    return isinstance(img, JpegImageFile)  # JPEG, and MPO (a phone's JPEG with a second picture)


def container_bits(peak: float, mode: str) -> int:
    """Bits actually used by a 16-bit image: CR readers often store 10-, 12- or 14-bit data in
    16-bit PNG/TIFF, which divided by 65535 would look almost black. Rounded up to an even count."""
    if mode == "I" and peak <= 255:
        return 8
    used = max(int(peak).bit_length(), 10)
    return min(16, used + (used % 2))


def reduce_factor(size: Tuple[int, int], draft_size: Tuple[int, int]) -> int:
    """JPEG draft mode's choice: the largest of 1, 2, 4, 8 that keeps both sides >= draft_size."""
    w, h = size
    return max([f for f in (2, 4, 8) if w // f >= draft_size[0] and h // f >= draft_size[1]], default=1)


def box_reduce_by(pixels: np.ndarray, f: int) -> np.ndarray:
    """What Image.reduce does, on a decoded array (DICOM), so every format reaches the model alike."""
    h, w = pixels.shape
    if f == 1:
        return pixels.astype(np.float32, copy=False)
    # As Image.reduce (and the JPEG codec) do: a partial last block is averaged over what it has.
    H, W = -(-h // f), -(-w // f)
    total = np.zeros((H * f, W * f), np.float64)
    count = np.zeros((H * f, W * f), np.float64)
    total[:h, :w], count[:h, :w] = pixels, 1.0
    sums = total.reshape(H, f, W, f).sum(axis=(1, 3))
    return (sums / count.reshape(H, f, W, f).sum(axis=(1, 3))).astype(np.float32)


def _reduce(img: Image.Image, draft_size: Tuple[int, int]) -> Image.Image:
    """What JPEG's draft mode does for other formats: box-average by 2, 4 or 8, never below
    draft_size, so a full-size PNG or TIFF is not resized from millions of float pixels."""
    factor = reduce_factor(img.size, draft_size)
    if factor == 1:
        return img
    if img.mode not in _REDUCIBLE:
        img = img.convert(_reducible_mode(img))
    return img.reduce(factor)


def _reducible_mode(img: Image.Image) -> str:
    """The mode Image.reduce accepts that keeps what matters: 16-bit depth, colour, transparency."""
    if img.mode.startswith("I;16"):
        return "I"  # converting 16-bit to L would clip it at 255
    if img.mode == "1":
        return "L"
    if img.mode in ("P", "PA"):
        return "RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB"
    return "RGB"


def has_alpha(img: Image.Image) -> bool:
    """An alpha channel, a palette's transparent index or a gray or RGB colour key (PNG's tRNS, which
    a browser honours). 16-bit images are left as stored: a browser does not read them at all."""
    return img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "1", "RGB") and "transparency" in img.info)


def on_black(img: Image.Image, factor: int = 1) -> Tuple[Image.Image, bool]:
    """(the image composited onto black, each colour times its alpha, rounded, then box-reduced by
    `factor`; whether any pixel was transparent). A browser's canvas stores it so: the web app reads
    the same levels (webapp/src/lib/decode.js), where reading the colour stored under a see-through
    pixel would read what no viewer shows; black is also what surrounds a radiograph (air). Done a
    band of rows at a time (a multiple of `factor`, so the reduction is the whole image's), so no
    full-size copy is made. Gray stays gray (mode L), colour becomes RGB; the EXIF travels with it."""
    gray = img.mode in ("LA", "L", "1")
    width, height = img.size
    out = Image.new("L" if gray else "RGB", (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, ON_BLACK_ROWS // factor)
    transparent = False
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        with_alpha = band.convert("LA" if gray else "RGBA")  # applies a palette's or colour key's transparency
        transparent = transparent or with_alpha.getchannel("A").getextrema()[0] < 255
        if gray:
            part = with_alpha.convert("La").getchannel(0)
        else:
            part = Image.merge("RGB", with_alpha.convert("RGBa").split()[:3])
        out.paste(part.reduce(factor) if factor > 1 else part, (0, top // factor))
    out.info = {k: v for k, v in img.info.items() if k != "transparency"}
    return out, transparent


def _stored_bytes(mode: str) -> int:
    """Bytes per pixel of Pillow's own buffer for a mode."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_cost(size: Tuple[int, int], mode: str, draft_size: Optional[Tuple[int, int]],
                decoder_extra: int = 0, alpha: bool = False) -> int:
    """Bytes that decoding an image of `size` (as the decoder will produce it) may take;
    `decoder_extra` is what the codec itself holds beside the image (see _decoder_extra); `alpha`:
    it may be transparent (on_black makes a reduced copy, a band at a time)."""
    w, h = size
    f = reduce_factor(size, draft_size) if draft_size is not None else 1
    conversion = 4 if f > 1 and mode not in _REDUCIBLE and not alpha else 0
    # on_black: its reduced output, and a band's copies (RGBA, premultiplied, three bands, RGB)
    composite = 4 * -(-w // f) * -(-h // f) + 16 * w * ON_BLACK_ROWS if alpha else 0
    return (w * h * (_stored_bytes(mode) + conversion) + (w // f) * (h // f) * WORK_BYTES_PER_PIXEL
            + decoder_extra + composite)


def _decoder_extra(img: Image.Image, full_size: Tuple[int, int], file_bytes: int = 0) -> int:
    """What the codec holds beside the image, measured: a progressive JPEG keeps every DCT
    coefficient at full size (2 bytes per sample), whatever the draft; WebP decodes into its own
    RGBA buffer, from a copy of the whole file (`file_bytes`); libtiff may hold a whole strip."""
    w, h = full_size
    fmt = img.format
    if _is_jpeg(img) and (img.info.get("progressive") or img.info.get("progression")):
        return w * h * 2 * (1 if img.mode == "L" else 3)
    if fmt == "WEBP":
        return w * h * 4 + file_bytes
    if fmt == "TIFF":
        return w * h * _stored_bytes(img.mode)
    return 0


def check_shape(path: Union[str, Path], width: int, height: int) -> None:
    """Refuse, before any decoding, an image too large, too small or too thin to be a radiograph."""
    if width * height > MAX_PIXELS:
        raise ImageReadError(path, f"image is {width}x{height} px, above the {MAX_PIXELS:,} px limit "
                                   "(possible decompression bomb)")
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(path, f"image is {width}x{height} px, too small to read")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageReadError(path, f"image is {width}x{height} px: a strip more than {MAX_ASPECT}:1, "
                                   "not a radiograph")


def check_cost(path: Union[str, Path], cost: int) -> None:
    if cost > MAX_DECODE_BYTES:
        raise ImageReadError(path, f"decoding it would take about {cost / 2 ** 20:,.0f} MB, above the "
                                   f"{MAX_DECODE_BYTES // 2 ** 20} MB this runtime allows for one image")


def _colour(img: Image.Image, mode: str) -> Tuple[bool, Optional[float]]:
    """(whether any colour is visible, the coloured fraction the out-of-scope gate reads) of a decoded
    image; (False, None) for gray modes."""
    if mode in ("L", "1", "F") or mode in _SIXTEEN_BIT_MODES:
        return False, None
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return bool(np.percentile(spread, 99) > 8), colour_fraction(rgb)


def read_grayscale(path: Union[str, Path], draft_size: Optional[Tuple[int, int]] = None) -> DecodedImage:
    """Read one image file; raise ImageReadError naming the file on anything unreadable.

    `draft_size` lets a JPEG decode at a reduced DCT scale (never below that size), and other
    formats be box-reduced likewise, which is several times faster for full-size radiographs that
    are shrunk to the model's input size anyway. DICOM content (whatever the name) goes to the
    DICOM reader.
    """
    return read_file(path, draft_size)[0]


def read_file(path: Union[str, Path], draft_size: Optional[Tuple[int, int]] = None,
              dicom_names: Tuple[str, ...] = ()) -> Tuple[DecodedImage, Optional[str]]:
    """(the decoded image, the kind content.sniff found). The file is checked with `stat`, opened
    and sniffed once; DICOM content, or content of no known kind under a name ending in one of
    `dicom_names` (a DICOM file without its preamble), goes to the DICOM reader, the rest to Pillow."""
    path = Path(path)
    size = check_input_file(path)
    with open_regular(path) as fh:
        kind = sniff(fh.read(HEAD_BYTES))
        dicom = kind == "DICOM" or (kind is None and path.suffix.lower() in dicom_names)
        if not dicom:
            check_file_size(path, size)
            return _read_picture(fh, path, kind, draft_size, size), kind
    from .dicom import read_dicom
    return read_dicom(path, draft_size, checked=(size, kind)), kind


def _read_picture(fh, path: Path, kind: Optional[str], draft_size: Optional[Tuple[int, int]],
                  size: int) -> DecodedImage:
    """A picture through Pillow. Every failure is raised as ImageReadError only after the except
    block is left: the exception's traceback holds the frames, and through them the image, the
    tile list and whatever else the failed decoder made, so a refusal made inside the handler
    (or a record built from it) would have to find memory beside them. A MemoryError is not even
    turned into words until then."""
    problem: Union[ImageReadError, type, None] = None
    try:
        return _decode(fh, path, kind, draft_size, size)
    except ImageReadError as exc:
        problem = detached(exc)
    except MemoryError:
        problem = MemoryError
    except DECODE_ERRORS as exc:
        problem = decode_error(path, exc)
    raise decode_error(path, MemoryError()) if problem is MemoryError else problem


def detached(exc: BaseException) -> BaseException:
    """`exc` without its traceback or the exceptions it was raised beside (and their tracebacks):
    what a caller keeps of a refusal must not keep the frames of the failed decoding alive."""
    exc.__context__ = exc.__cause__ = None
    return exc.with_traceback(None)


def _decode(fh, path: Path, kind: Optional[str], draft_size: Optional[Tuple[int, int]], size: int) -> DecodedImage:
    warnings: List[str] = []
    with open_image(fh, path, kind) as img:
        width, height = img.size
        check_shape(path, width, height)
        if draft_size is not None and _is_jpeg(img):
            img.draft("L" if img.mode == "L" else img.mode, draft_size)
        check_cost(path, decode_cost(img.size, img.mode, draft_size, _decoder_extra(img, (width, height), size),
                                     has_alpha(img)))
        pages = getattr(img, "n_frames", 1)
        if isinstance(pages, int) and pages > 1:
            warnings.append(f"{img.format or 'image'} file holds {pages} pages or frames: only the first was read")
        img.load()
        mode = img.mode  # as stored: reducing a 16-bit image goes through mode "I"
        if has_alpha(img):  # composited, then reduced: the browser reduces what it composited
            img, transparent = on_black(img, reduce_factor(img.size, draft_size) if draft_size is not None else 1)
            if transparent:
                warnings.append(TRANSPARENCY_WARNING)
        elif draft_size is not None and not _is_jpeg(img):
            img = _reduce(img, draft_size)
        img = ImageOps.exif_transpose(img)
        coloured, colour = _colour(img, mode)
        pixels = _unit_gray(img, mode, warnings, coloured)
    if pixels.ndim != 2:
        raise ImageReadError(path, f"unexpected pixel array shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "image contains non-finite values")
    return DecodedImage(np.clip(pixels, 0.0, 1.0).astype(np.float32), mode, (width, height), warnings, colour)


def _unit_gray(img: Image.Image, mode: str, warnings: List[str], coloured: bool = False) -> np.ndarray:
    """A loaded image (`mode`: as stored) as one gray channel in [0, 1], with what was done said."""
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float32)
        bits = container_bits(float(arr.max()), mode)
        if bits not in (8, 16):
            warnings.append(f"{bits}-bit data in a 16-bit file: scaled by {2 ** bits - 1}")
        return arr / float(2 ** bits - 1)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        warnings.append("floating-point image rescaled by its own min and max")
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if coloured:
        warnings.append(f"colour image ({mode}) converted to grayscale; if it is a photo of a film "
                        "on a lightbox, read it with `python -m device film` instead")
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
