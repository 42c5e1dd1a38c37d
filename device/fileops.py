"""Two file-system primitives the service and the updater both need to be crash-safe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Optional


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` survive a power cut (a folder that cannot be opened
    is skipped: there is nothing to sync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exclusive_lock(path: Path, note_pid: bool = False) -> Optional[IO[str]]:
    """An flock on `path`, or None if another process holds it. The kernel releases it when the
    holder dies, even by kill -9. Keep the returned file open as long as the lock is needed.
    `note_pid` writes our pid into the file, for the message the next one prints."""
    import fcntl

    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    if note_pid:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
    return fh
