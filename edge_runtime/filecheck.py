"""Look at an input before opening it: only a readable regular file is ever opened.

Opening a FIFO blocks until someone writes to it, and a device or a socket never ends, so a batch
would hang on one odd entry in a watched folder. `stat` answers without opening anything. Missing
files and permission problems get their own words, so the technician knows what to fix (a
"corrupt" label would send them looking for a bad file that is fine).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from .errors import ImageReadError


def check_input_file(path: Union[str, Path]) -> int:
    """The file's size in bytes, or ImageReadError naming why it must not be opened."""
    try:
        st = os.stat(path)  # follows a symlink: a link to a regular file is a regular file
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied: this user cannot reach the file's folder") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot be looked at ({os.strerror(exc.errno) if exc.errno else exc})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise ImageReadError(path, "is a folder, not a file")
    if stat.S_ISFIFO(mode):
        raise ImageReadError(path, "is a named pipe (FIFO), not a file: refused without reading it")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise ImageReadError(path, "is a device, not a file: refused without reading it")
    if stat.S_ISSOCK(mode):
        raise ImageReadError(path, "is a socket, not a file: refused without reading it")
    if not stat.S_ISREG(mode):
        raise ImageReadError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageReadError(path, "file is empty")
    # Readability is left to the open itself (open_regular, open_error): os.access answers for the
    # real user and can be wrong under ACLs, network shares and sandboxes (proot said "denied").
    return st.st_size


def open_error(path: Union[str, Path], exc: OSError) -> ImageReadError:
    """An OSError raised while reading, in words: permission and disappearance are not corruption."""
    if isinstance(exc, PermissionError):
        return ImageReadError(path, "permission denied: this user cannot read the file")
    if isinstance(exc, FileNotFoundError):
        return ImageReadError(path, "file disappeared while it was being read")
    if isinstance(exc, IsADirectoryError):
        return ImageReadError(path, "is a folder, not a file")
    return ImageReadError(path, f"corrupt or truncated image ({exc})")


def open_regular(path: Union[str, Path]):
    """Open for reading without ever blocking, and make sure what was opened is a regular file:
    closes the gap between check_input_file's stat and the open (a file swapped for a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise open_error(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageReadError(path, "not a regular file (it changed while being opened): refused")
    return os.fdopen(fd, "rb")
