"""Decode a radiograph file into a 2-D float32 array in [0, 1].

Training and the device both read images through `read_grayscale`, so a JPEG, a 16-bit PNG or a
colour photo becomes the same pixels in both places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

# Larger than any plain radiograph (a 43 x 43 cm detector at 100 um is ~18.5 MP); anything
# above this is treated as a decompression bomb rather than decoded.
MAX_PIXELS = 80_000_000
MIN_SIDE = 16

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass
class DecodedImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1]
    source_mode: str
    source_size: Tuple[int, int]  # (width, height) as stored in the file
    warnings: List[str] = field(default_factory=list)


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


def box_reduce(pixels: np.ndarray, draft_size: Tuple[int, int]) -> np.ndarray:
    """The same reduction on a decoded array (DICOM), so every format reaches the model alike."""
    h, w = pixels.shape
    f = reduce_factor((w, h), draft_size)
    if f == 1:
        return pixels
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
    if factor == 1 or img.mode not in ("L", "RGB", "RGBA", "LA", "I", "F") + tuple(_SIXTEEN_BIT_MODES):
        return img
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor)


def _is_colour(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return bool(np.percentile(spread, 99) > 8)


def read_grayscale(path: Union[str, Path], draft_size: Optional[Tuple[int, int]] = None) -> DecodedImage:
    """Read one image file; raise ImageReadError naming the file on anything unreadable.

    `draft_size` lets a JPEG decode at a reduced DCT scale (never below that size), and other
    formats be box-reduced likewise, which is several times faster for full-size radiographs that
    are shrunk to 128 px anyway.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty")
    warnings: List[str] = []
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageReadError(
                    path, f"image is {width}x{height} px, above the {MAX_PIXELS:,} px limit "
                    "(possible decompression bomb)")
            if min(width, height) < MIN_SIDE:
                raise ImageReadError(path, f"image is {width}x{height} px, too small to read")
            if draft_size is not None and img.format == "JPEG":
                img.draft("L" if img.mode == "L" else img.mode, draft_size)
            img.load()
            mode = img.mode  # as stored: reducing a 16-bit image goes through mode "I"
            if draft_size is not None and img.format != "JPEG":
                img = _reduce(img, draft_size)
            img = ImageOps.exif_transpose(img)
            if mode in _SIXTEEN_BIT_MODES:
                arr = np.asarray(img, dtype=np.float32)
                bits = container_bits(float(arr.max()), mode)
                if bits not in (8, 16):
                    warnings.append(f"{bits}-bit data in a 16-bit file: scaled by {2 ** bits - 1}")
                pixels = arr / float(2 ** bits - 1)
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)
                lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
                pixels = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
                warnings.append("floating-point image rescaled by its own min and max")
            else:
                if mode not in ("L", "1") and _is_colour(img):
                    warnings.append(f"colour image ({mode}) converted to grayscale; if it is a photo of a film "
                                    "on a lightbox, read it with `python -m device film` instead")
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                    warnings.append("transparency discarded")
                pixels = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image, or an image format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None
    if pixels.ndim != 2:
        raise ImageReadError(path, f"unexpected pixel array shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "image contains non-finite values")
    return DecodedImage(np.clip(pixels, 0.0, 1.0).astype(np.float32), mode, (width, height), warnings)
