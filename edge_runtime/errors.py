"""Errors that name the file and the reason, so a batch can report them and go on."""

from __future__ import annotations

from pathlib import Path
from typing import Union


class ImageReadError(ValueError):
    """An input image could not be turned into pixels."""

    def __init__(self, path: Union[str, Path], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # rebuilt from both arguments: it crosses process boundaries (a worker pool)
        return (type(self), (self.path, self.reason))
