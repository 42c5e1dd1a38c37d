"""Progress of a long loop, on a terminal and off one.

On a terminal: a tqdm bar where tqdm is installed (the train extra has it), else one line redrawn
in place. Off a terminal (a log file, CI, a pipe): a plain line at most every tenth of the way and
every LINE_SECONDS, and one at the end, so a long step shows it is alive without filling the log
with bars (a quick one prints its last line only); tqdm's `disable=None` would hide it there
altogether.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
LINES_OFF_TERMINAL = 10  # at most this many progress lines per loop, plus the last
LINE_SECONDS = 10.0  # and at most one every this many seconds


def progress(items: Iterable[T], desc: str, *, total: Optional[int] = None, unit: str = "img",
             enabled: bool = True, stream: Optional[TextIO] = None) -> Iterator[T]:
    """Yield `items`, reporting how far the loop has got on `stream` (default stderr)."""
    stream = stream if stream is not None else sys.stderr
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not enabled or total == 0:
        yield from items
        return
    if _isatty(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            yield from _lines(items, desc, total, unit, stream, in_place=True)
            return
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, file=stream)
        return
    yield from _lines(items, desc, total, unit, stream, in_place=False)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _lines(items: Iterable[T], desc: str, total: Optional[int], unit: str, stream: TextIO,
           in_place: bool) -> Iterator[T]:
    every = max(1, -(-total // LINES_OFF_TERMINAL)) if total else 100
    t0 = last = time.monotonic()
    done = 0

    def say(final: bool = False) -> None:
        of = f"/{total}" if total else ""
        line = f"{desc}: {done}{of} {unit} ({time.monotonic() - t0:.0f} s)"
        if in_place:
            stream.write("\r" + line + ("\n" if final else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    for item in items:
        yield item
        done += 1
        if done % every == 0 and done != total and (in_place or time.monotonic() - last >= LINE_SECONDS):
            say()
            last = time.monotonic()
    say(final=True)
