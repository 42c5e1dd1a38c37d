"""A memory ceiling for the one-shot commands, as the service's reader has (device/worker.py).

Every input is budgeted before it is decoded (imageio, dicom, codestream), but a case the budget
misses must end as a refusal, not as the kernel's OOM killer on a 1 GB Pi taking the whole batch:
`python -m edge_runtime predict` and `python -m device film` run their files under an
address-space limit (RLIMIT_AS) set after the model is loaded, at what the process maps then plus
an allowance. An allocation past it raises MemoryError, which the readers turn into that file's
error once the exception and its traceback, and with them what the failed decoding allocated,
are dropped (imageio._read_picture, dicom.read_dicom, Predictor.predict_file_safely); the batch
goes on. RLIMIT_AS counts address space, not resident memory: the interpreters'
threads and libraries map ~190-310 MB that is mostly not resident, hence "what it maps then"
rather than a fixed total. Where no such limit exists (not Linux), nothing is set.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

ENV_VAR = "FRACTURE_EDGE_MEMORY_MB"
# The service reader's default (device/cli.py --reader-memory-mb): the largest input the budget
# admits needed +241 MB of address space (a 3000^2 colour JPEG DICOM), inference +20 MB.
DEFAULT_MB = 512


def megabytes(text: str) -> int:
    """argparse type: a whole number of MB, 0 for no ceiling."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MB") from None
    if n < 0:
        raise argparse.ArgumentTypeError("choose 0 (no ceiling) or a positive number of MB")
    return n


def allowance_mb(flag: Optional[int]) -> int:
    """The flag's value, else $FRACTURE_EDGE_MEMORY_MB, else DEFAULT_MB."""
    if flag is not None:
        return flag
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_MB
    try:
        return megabytes(text)
    except argparse.ArgumentTypeError as exc:
        print(f"warning: ${ENV_VAR}: {exc}; using {DEFAULT_MB} MB", file=sys.stderr)
        return DEFAULT_MB


def mapped_bytes() -> Optional[int]:
    """This process's address space now (VmSize), or None where /proc does not say."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextmanager
def memory_ceiling(extra_mb: int) -> Iterator[Optional[int]]:
    """Within the block, allocations beyond what is mapped now plus `extra_mb` fail (MemoryError);
    yields the limit in bytes, or None where none was set (0, not Linux, no permission). Only the
    soft limit is lowered, and restored afterwards, so a caller that runs the command in-process
    (the tests) gets its own limit back."""
    limit = None
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, ValueError, OSError):
        soft = hard = None
    mapped = mapped_bytes() if extra_mb > 0 and soft is not None else None
    if mapped is not None:
        limit = mapped + extra_mb * 2 ** 20
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft <= limit:
            limit = None  # already at least as tight
        else:
            try:
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            except (ValueError, OSError):
                limit = None
    try:
        yield limit
    finally:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
