"""Where photos come from: the Raspberry Pi camera (picamera2) or files, behind one interface.

picamera2 exists only on Raspberry Pi OS (apt's python3-picamera2); it is imported when a Pi
camera is asked for, so everything else imports cleanly anywhere, and tests drive PiCamera with
an object that mimics picamera2's capture API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps


class CameraUnavailable(RuntimeError):
    """No camera here; the message says why and what to do."""


class PiCamera:
    """A Pi camera module through picamera2: full-resolution stills as RGB PIL images."""

    def __init__(self, picam=None, size: Optional[Tuple[int, int]] = None):
        if picam is None:
            try:
                from picamera2 import Picamera2  # noqa: PLC0415 - only on a Pi
            except ImportError:
                raise CameraUnavailable("picamera2 is not installed: on Raspberry Pi OS run "
                                        "`sudo apt install python3-picamera2` and create the venv with "
                                        "--system-site-packages; elsewhere photograph with a phone and use "
                                        "`python -m device film PHOTO`") from None
            try:
                picam = Picamera2()
            except (RuntimeError, IndexError) as exc:  # no camera connected or enabled
                raise CameraUnavailable(f"no camera found by picamera2 ({exc})") from None
        self.picam = picam
        main = {"format": "RGB888"} if size is None else {"format": "RGB888", "size": tuple(size)}
        self.picam.configure(self.picam.create_still_configuration(main=main))
        self.picam.start()

    def capture(self) -> Image.Image:
        arr = np.asarray(self.picam.capture_array("main"))
        # picamera2's "RGB888" is stored B, G, R per pixel.
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 2::-1]).astype(np.uint8), "RGB")

    def close(self) -> None:
        self.picam.stop()
        close = getattr(self.picam, "close", None)
        if close:
            close()


class FileSource:
    """Photos already taken (a phone, a folder): same interface as the camera."""

    def __init__(self, paths: Iterable[Union[str, Path]]):
        self._paths: Iterator[Path] = iter(Path(p) for p in paths)

    def capture(self) -> Image.Image:
        path = next(self._paths, None)
        if path is None:
            raise CameraUnavailable("no more photos in this file source")
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")

    def close(self) -> None:
        pass


def open_camera(kind: str = "pi", files: Iterable[Union[str, Path]] = ()) -> Union[PiCamera, FileSource]:
    if kind == "pi":
        return PiCamera()
    if kind == "file":
        return FileSource(files)
    raise CameraUnavailable(f"unknown camera {kind!r}; use 'pi' or 'file'")
