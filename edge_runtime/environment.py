"""What this machine runs, and what its native libraries print: standard library only, so every
package of the project (and the runtime on a device) uses the same two helpers.

`versions()` / `package_version()`: "which Python, platform and packages made this" (run.json, a
manifest's provenance, a benchmark, the installed interpreters).

`held_stderr()`: native libraries (TensorFlow, LiteRT's XNNPACK notice) write straight to file
descriptor 2, where Python's logging cannot reach them; newcomers read those lines as failures.
The block's output is held back, then only the lines the caller keeps are written; if the block
raises, everything it printed is written, since it may explain the error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as _metadata
import os
import platform
import sys
import tempfile
from typing import Callable, Dict, Iterator, Optional, Sequence

VERBOSE_ENV = "FRACTURE_EDGE_VERBOSE"  # set: nothing is held back


def package_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution (its pip name), None where it is absent."""
    try:
        return _metadata.version(distribution)
    except _metadata.PackageNotFoundError:
        return None


def versions(packages: Sequence[str] = ()) -> Dict[str, Optional[str]]:
    """Python, platform and machine, then each package's installed version (None where absent)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "platform": platform.platform(),
                                     "machine": platform.machine()}
    for pkg in packages:
        out[pkg] = package_version(pkg)
    return out


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV) or os.environ.get("FRACTURE_EDGE_DEBUG"))


@contextlib.contextmanager
def held_stderr(keep: Callable[[str], bool] = lambda line: False) -> Iterator[None]:
    """Hold back file descriptor 2 inside the block; then write the lines `keep` accepts (all of
    them if the block raised). With $FRACTURE_EDGE_VERBOSE set, nothing is held."""
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (an embedded interpreter): nothing to hold
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            out = "".join(line for line in lines if failed or keep(line))
            if out:
                sys.stderr.write(out)
                sys.stderr.flush()
