"""Quiet by default: what `python -m train`, `train.evaluate` and `export.quantize` do about the
start-up chatter of the libraries they load, unless `--verbose`.

TensorFlow's native libraries print before anyone can configure them (absl's "All log messages
before absl::InitializeLog()", the oneDNN notice, "failed call to cuInit" on a machine without a
GPU); later C++ logs obey TF_CPP_MIN_LOG_LEVEL, Python ones (TensorFlow's deprecation notes, absl,
tf2onnx) their loggers. `quiet_start` sets those, then imports the modules the command will need
with the process's stderr held back, and passes on every held-back line that is not such noise.
Nothing here changes what the libraries compute (oneDNN stays on). This module imports only the
standard library (and edge_runtime.environment, itself standard library only); the modules to load
are named by the caller.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import warnings
from typing import Sequence

from edge_runtime.environment import held_stderr

LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnx", "h5py")
WARNING_MODULES = r"(tensorflow|keras|tf_keras|tf2onnx|onnx|onnxruntime|absl|google\.protobuf|h5py)(\.|$)"
# Native lines held back: absl's preamble and its I/W/E-prefixed records (info, warning, error:
# "I0000 00:00:1795984781.319274   16758 port.cc:153] oneDNN custom operations are on..."), and
# the TFLite calibrator's settings line.
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                    r"|[IWE]\d{4} \S+\s+\d+ \S+:\d+\] .*"
                    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
                    r"|fully_quantize: \d+, inference_type: .*)$")
_quiet = False  # set by quiet_start: native_noise_filtered() filters only then


def is_noise(line: str) -> bool:
    return bool(_NOISE.match(line.rstrip("\r\n")))


def quiet_logging() -> None:
    """C++ logs below FATAL off (unless TF_CPP_MIN_LOG_LEVEL is set already), the libraries'
    Python loggers at ERROR, their Python warnings ignored."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=WARNING_MODULES)


def native_stderr_filtered():
    """Hold back what is written to file descriptor 2 (by C++ or Python) inside the block, then
    write out the lines that are not start-up noise (edge_runtime.environment.held_stderr)."""
    return held_stderr(keep=lambda line: not is_noise(line))


def native_noise_filtered():
    """`native_stderr_filtered()` where the command asked for quiet (quiet_start), else nothing:
    for a step whose native library prints regardless (the TFLite calibrator)."""
    return native_stderr_filtered() if _quiet else contextlib.nullcontext()


def quiet_start(verbose: bool, modules: Sequence[str] = ()) -> None:
    """Unless `verbose`: quiet the libraries' logging, then import `modules` (e.g. "tensorflow")
    with their native start-up lines filtered out. Modules already imported are left alone."""
    global _quiet
    if verbose:
        return
    _quiet = True
    quiet_logging()
    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return
    with native_stderr_filtered():
        for name in todo:
            importlib.import_module(name)
