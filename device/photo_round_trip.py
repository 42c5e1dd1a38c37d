"""A radiograph photographed (device/simulate.py) and read back by the device's own film path
(device/triage.read_film), up to THE preprocessing: the model's input for a film photo.

Export fits the out-of-scope gate's film groups on these, and `train.scope_evaluate --photos`
measures what the gate refuses of photographed films, so both see exactly what a clinic's photo
becomes, not a stand-in. The scene of each photo is drawn at random over every condition a clinic
produces (device/simulate.ANSWER_CONDITIONS), seeded per photo, so a run is reproducible and the
work can be spread over processes.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, checked_input, min_filled_side

from .simulate import ANSWER_CONDITIONS

# The radiograph is shrunk to at most this long side before the simulator photographs it: far
# above any model input, and it keeps a 4,000-px radiograph from costing seconds per photo.
RADIOGRAPH_SIDE = 1200
MAX_WORKERS = 8  # each spawned worker holds 100-200 MB


@dataclass(frozen=True)
class PhotoJob:
    """One photo: which radiograph (a file, or pixels already in memory), the seed of its scene."""
    seed: Tuple[int, ...]
    path: Optional[str] = None
    pixels: Optional[np.ndarray] = None  # (h, w) float32 in [0, 1], when there is no file
    condition: Optional[str] = None  # None: drawn from ANSWER_CONDITIONS by the seed


def _radiograph(job: PhotoJob) -> np.ndarray:
    from PIL import Image

    if job.pixels is not None:
        img = np.asarray(job.pixels, np.float32)
    else:
        from edge_runtime.imageio import read_grayscale

        img = read_grayscale(job.path, (RADIOGRAPH_SIDE, RADIOGRAPH_SIDE)).pixels  # a JPEG draft: never below
    h, w = img.shape
    if max(h, w) > RADIOGRAPH_SIDE:
        k = RADIOGRAPH_SIDE / max(h, w)
        img = np.asarray(Image.fromarray(img).resize((max(1, round(w * k)), max(1, round(h * k))),
                                                     Image.Resampling.BOX), np.float32)
    return img


def model_input(job: PhotoJob, spec: PreprocessSpec) -> Tuple[Optional[np.ndarray], str]:
    """(the model's input for the photo's flattened film, the condition) or (None, why not): a
    photo the film path refuses (quality gate, no film found) gives no input, as on the device."""
    from . import quality
    from .photo import open_photo
    from .simulate import simulate
    from .triage import read_film

    rng = np.random.default_rng(list(job.seed))
    condition = job.condition or ANSWER_CONDITIONS[int(rng.integers(len(ANSWER_CONDITIONS)))]
    try:
        data, _ = simulate(_radiograph(job), condition, rng)
    except RuntimeError:  # no scene fits this film's shape
        return None, f"{condition}: not simulated"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(data)
        got = read_film(open_photo(path), quality.film_minimum(spec.size, spec.resize), min_filled_side(spec)[1])
    if not got["quality"].ok:
        return None, f"{condition}: {','.join(r.code for r in got['quality'].reasons)}"
    x, problem, _ = checked_input(got["flat"].pixels, spec, file=False)
    return (x, condition) if problem is None else (None, f"{condition}: {problem}")


def _one(args):
    """One job, never raising: an unreadable radiograph or a fault in the film path on one photo is
    counted with the refusals (and named), not allowed to break the pool and the whole export."""
    job, spec = args
    try:
        return model_input(job, spec)
    except Exception as exc:  # noqa: BLE001 - see above
        return None, f"error: {Path(job.path).name if job.path else 'pixels'}: {type(exc).__name__}"


def model_inputs(jobs: Sequence[PhotoJob], spec: PreprocessSpec,
                 workers: Optional[int] = None) -> Iterator[Tuple[Optional[np.ndarray], str]]:
    """model_input for each job, yielded in order, over `workers` processes (default: the CPUs).
    The processes are spawned, not forked: the caller may hold TensorFlow's threads."""
    workers = max(1, min(workers or _cpus(), MAX_WORKERS, len(jobs)))
    if workers == 1:
        for job in jobs:
            yield _one((job, spec))
        return
    import multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(_one, [(j, spec) for j in jobs], chunksize=4)
    finally:  # a worker killed (memory), or the caller stopped: no waiting for the remaining photos
        pool.shutdown(wait=True, cancel_futures=True)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's CPU set, where there is one
    except AttributeError:
        return os.cpu_count() or 1
