"""Open a phone or Pi-camera photo for the film reader: reduced while decoding, never at full size.

A 12-108 MP JPEG is decoded at a reduced DCT scale (JPEG draft mode), so its long side lands
between DECODE_SIDE and twice that (a 108 MP photo, reduced by the codec's largest factor, 8,
at 1,500 px): the film reader needs a few hundred pixels across the film, not a hundred million. Other formats are box-reduced by an integer factor right after
decoding. Errors are ImageReadError with the reason, as for radiograph files. Pillow opens only
the format the content is, from the runtime's allow-list (`imageio.open_image`): an ICO named .jpg
would otherwise be decoded whole inside `Image.open`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from edge_runtime.errors import ImageReadError
from edge_runtime.filecheck import check_input_file, open_regular
from edge_runtime.imageio import (DECODE_ERRORS, check_file_size, decode_error, detached, has_alpha, on_black,
                                  open_image)

DECODE_SIDE = 1000  # decoded long side is at least this (when the photo has it), and below twice this
MAX_PHOTO_PIXELS = 200_000_000  # a 200 MP phone sensor; larger is treated as a decompression bomb
MAX_DECODED_PIXELS = 20_000_000  # what may actually be decoded (non-JPEG photos are not reduced by the codec)
GRAYSCALE_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1", "LA")  # stored gray: a file, not a photo


@dataclass
class Photo:
    image: Image.Image  # RGB, EXIF orientation applied, long side about DECODE_SIDE..2x
    original_size: Tuple[int, int]  # (width, height) as stored, after EXIF rotation
    source_mode: str  # as stored in the file ("RGB", "L", "I;16", ...)
    format: str

    @property
    def scale(self) -> float:
        """Decoded pixels per original pixel."""
        return self.image.size[0] / self.original_size[0]


def open_photo(path: Union[str, Path], decode_side: int = DECODE_SIDE) -> Photo:
    """The photo, decoded reduced. A failure is raised only after the except block is left, so the
    failed decoding's frames (and the image they hold) are freed first (as imageio's readers do)."""
    path = Path(path)
    check_file_size(path, check_input_file(path))
    problem = None
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP; 12-108 MP phone photos are expected here and bounded below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_regular(path) as fh, open_image(fh, path) as img:
                W, H = img.size
                if W * H > MAX_PHOTO_PIXELS:
                    raise ImageReadError(path, f"photo is {W}x{H} px, above the {MAX_PHOTO_PIXELS:,} px limit")
                fmt, mode = img.format or "?", img.mode
                if fmt in ("JPEG", "MPO"):  # the codec reduces by 2, 4 or 8 while decoding (MPO: a phone's JPEG)
                    k = max([f for f in (1, 2, 4, 8) if max(W, H) // f >= decode_side], default=1)
                    img.draft("RGB" if mode != "L" else "L", (W // k, H // k))
                if img.size[0] * img.size[1] > MAX_DECODED_PIXELS:
                    raise ImageReadError(path, f"photo is {W}x{H} px: too large to decode on this device "
                                               "unless it is a JPEG (save it as JPEG)")
                img.load()
                k = max(1, max(img.size) // decode_side)
                if has_alpha(img):  # composited, then reduced, as the web app's canvas does
                    img = on_black(img, k)[0]
                elif k > 1:
                    if img.mode.startswith("I;16"):
                        img = img.convert("I")  # converting 16-bit to RGB would clip it at 255
                    img = img.reduce(k) if img.mode in ("L", "RGB", "RGBA", "I", "F") else img.convert("RGB").reduce(k)
                orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
                img = ImageOps.exif_transpose(img)
                if orientation in (5, 6, 7, 8):
                    W, H = H, W
                out = _to_rgb(img, mode)
    except ImageReadError as exc:
        problem = detached(exc)
    except MemoryError:
        problem = MemoryError
    except DECODE_ERRORS as exc:
        problem = decode_error(path, exc)
    if problem is not None:
        raise decode_error(path, MemoryError()) if problem is MemoryError else problem
    return Photo(out, (W, H), mode, fmt)


def _to_rgb(img: Image.Image, mode: str) -> Image.Image:
    if mode.startswith("I") or mode == "F":  # 16-bit or float: scale by its own range to 8 bits
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8))
    return img.convert("RGB")


def chroma_spread(rgb: np.ndarray) -> float:
    """99th percentile of max-min over the channels, in 8-bit steps: ~0 for a gray image saved as
    RGB, several steps for any camera photo (casts, sensor colour noise)."""
    arr = np.asarray(rgb, np.float32)
    if arr.max() <= 1.0:
        arr = arr * 255
    return float(np.percentile(arr.max(axis=2) - arr.min(axis=2), 99))
