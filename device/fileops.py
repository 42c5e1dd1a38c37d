"""File-system primitives the service and the updater need to be crash-safe, and the service
needs to trust nothing it finds in a watched folder."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import IO, Optional, Sequence, Tuple

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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


def exclusive_lock(path: Path, note_pid: bool = False, read_only_ok: bool = False) -> Optional[IO[str]]:
    """An flock on `path`, or None if another process holds it. The kernel releases it when the
    holder dies, even by kill -9. Keep the returned file open as long as the lock is needed.
    `note_pid` writes our pid into the file, for the message the next one prints.
    `read_only_ok`: on a folder that cannot be written (a read-only SD card) an existing lock file
    is locked read-only (flock needs no write access); OSError if there is none to lock."""
    import fcntl

    try:
        fh = open(path, "a+")
    except OSError as exc:
        if not read_only_ok:
            raise
        try:
            fh = open(path, "r")
        except OSError:
            raise exc from None  # nothing to lock yet: the reason the file could not be made
        note_pid = False
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


def open_dir(path: str) -> int:
    """A descriptor on a folder the configuration names (a link there is the administrator's)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)


def open_beneath(root_fd: int, parts: Sequence[str]) -> int:
    """Open the regular file `parts` below the folder `root_fd` without following any symbolic
    link on the way, and without blocking: every folder is opened O_NOFOLLOW | O_DIRECTORY from
    the one before, the file O_NOFOLLOW | O_NONBLOCK. A link swapped in for the file or for any
    folder above it fails (ELOOP, ENOTDIR) instead of leading out of the watched folder, and a
    FIFO swapped in does not block. The caller fstat()s the result: only S_ISREG may be read."""
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "no file named")
    fd = os.dup(root_fd)
    try:
        for name in parts[:-1]:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        flags = os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | _CLOEXEC
        return os.open(parts[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def identity(st: os.stat_result) -> Tuple[int, int]:
    """(device, inode): what tells one file or folder apart from every other, whatever path,
    link or bind mount leads to it."""
    return st.st_dev, st.st_ino


def file_kind(mode: int) -> str:
    """What a directory entry is, in the words every refusal uses (a link's own mode: "a
    symbolic link"; "a FIFO" is how a technician's tools name a named pipe)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def mb(n: int) -> str:
    """A size in words: "2,048 MB", "256 MB", "1.5 MB", "0.000954 MB" (binary megabytes)."""
    v = n / 2 ** 20
    return f"{v:,.0f} MB" if v >= 10 else f"{v:.3g} MB"


def remove_path(path: Path, ignore_errors: bool = False) -> None:
    """Whatever is at `path` goes: a folder with what is in it, a file, or a link itself (never
    what it points to). Nothing there is not an error. OSError if it cannot be removed, unless
    `ignore_errors`."""
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=ignore_errors)  # then as much as can be removed goes
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def disk_space(path: Path) -> Tuple[int, int]:
    """(bytes free for this user, bytes in all) on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
