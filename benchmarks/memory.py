"""Peak resident memory of this process, as every benchmark and the fuzzer report it."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a worker started by a large
    parent (pytest with TensorFlow loaded, 2 GB) would report the parent's peak as its own."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
