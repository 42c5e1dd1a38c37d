"""The image sets beyond the training split that the out-of-scope gate is fitted on.

- Copies of the real training radiographs processed as another X-ray system would (train/augment.py,
  Acquisition: local equalisation, tone curves, unsharp masking, collimation bands, lead markers),
  in their radiograph's group: without them the gate refused 24-58% of real radiographs so
  processed (docs/results.md, "Radiographs from another X-ray system").
- Generated out-of-scope images (fracdata.ood), as files and photographed through the device's
  film path: the outside half of the gate's outlier direction (edge_runtime/scope.py).

Each is seeded apart from what measures it: the copies draw effects from ranges kept apart from
train.acquisition_shift's, and the generated set has its own seed (scope_fit.OUTLIER_SEED).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import PreprocessSpec, checked_input, content_problem, normalize_intensity
from fracdata.data import PHANTOM_SOURCE, Record, record_source
from fracdata.progress import progress

OOD_STREAM = 4  # photos of generated images: apart from scope_film.STREAMS (1-3)


@dataclass
class Copies:
    images: np.ndarray  # (n, size, size, 1) model inputs
    records: List[Record]  # each copy's radiograph


def acquisition_copies(loaded, copies: int, seed: int) -> Copies:
    """`copies` processed copies of each real (not phantom) radiograph of a loaded split."""
    from train.augment import acquisition

    size = loaded.spec.size
    images, records = [], []
    for i, (r, x) in enumerate(zip(loaded.records, loaded.resized)):
        if record_source(r) == PHANTOM_SOURCE:
            continue
        for k in range(copies):
            y = acquisition(x, [], np.random.default_rng([seed, 5, i, k]))
            if content_problem(y) is None:
                images.append(normalize_intensity(y, loaded.spec)[:, :, None])
                records.append(r)
    return Copies(np.stack(images) if images else np.zeros((0, size, size, 1), np.float32), records)


@dataclass
class Generated:
    images: np.ndarray  # (n, size, size, 1) model inputs
    kinds: List[str]
    unread: Dict[str, int] = field(default_factory=dict)  # why some were not read (refused before the model)

    def by_kind(self) -> Dict[str, int]:
        return dict(sorted(Counter(self.kinds).items()))


def _listed(folder: Path) -> List[tuple]:
    meta = json.loads((folder / "ood_set.json").read_text())
    return [(kind, folder / f) for kind, files in meta["files"].items() for f in files]


def read_ood(folder: Path, spec: PreprocessSpec) -> Generated:
    """A generated set's images as the device reads files (blank, flat and noise refused before the
    model, as the runtime refuses them)."""
    images, kinds, unread = [], [], Counter()
    for kind, path in _listed(folder):
        try:
            x, problem, _ = checked_input(read_image(path, spec).pixels, spec)
        except ImageReadError:
            unread["unreadable"] += 1
            continue
        if problem:
            unread[problem] += 1
            continue
        images.append(x)
        kinds.append(kind)
    return Generated(np.stack(images) if images else np.zeros((0, spec.size, spec.size, 1), np.float32), kinds,
                     dict(unread))


def photograph_ood(folder: Path, spec: PreprocessSpec, seed: int, desc: str, enabled: bool = True,
                   workers: Optional[int] = None) -> Generated:
    """Each generated image photographed once on a lightbox (a scene drawn over every clinic
    condition) and read back by the device's film path; what the film path refuses is left out."""
    from device.photo_round_trip import PhotoJob, model_inputs

    listed = _listed(folder)
    jobs = [PhotoJob(seed=(seed, OOD_STREAM, i), path=str(p)) for i, (_, p) in enumerate(listed)]
    images, kinds, unread = [], [], Counter()
    for (kind, _), (x, why) in zip(listed, progress(model_inputs(jobs, spec, workers), desc, total=len(jobs),
                                                    enabled=enabled)):
        if x is None:
            unread[why.split(": ", 1)[-1]] += 1
            continue
        images.append(x)
        kinds.append(kind)
    return Generated(np.stack(images) if images else np.zeros((0, spec.size, spec.size, 1), np.float32), kinds,
                     dict(unread))
