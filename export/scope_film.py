"""The out-of-scope gate's film groups: training radiographs photographed and flattened.

A flattened film photo lies farther from the training files than a file does (the camera's
curve, light falloff, the warp's resampling): against the file groups alone, 12-33% of in-scope
photos of real radiographs were refused (docs/results.md, "Out of scope"). So export also
photographs radiographs of each group with the simulator, reads them back through the device's
own film path (device/photo_round_trip.py) and fits a film group per file group, thresholded like
the file groups on photographed validation radiographs. The device measures a flattened film
against every group, a file against the file groups only (edge_runtime/scope.py).

Photos of the validation and test splits use their own seeds (streams 2 and 3; the fit, 1), so
the thresholds and the reported refusal rate never see the photos the means were fitted on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from edge_runtime.preprocess import PreprocessSpec
from edge_runtime.scope import FILM_PREFIX
from fracdata.data import Record
from fracdata.progress import progress

from .scope_fit import group_of

STREAMS = {"train": 1, "val": 2, "test": 3}


def conditions() -> List[str]:
    from device.simulate import ANSWER_CONDITIONS

    return list(ANSWER_CONDITIONS)


@dataclass
class Photographed:
    """Model inputs of photographed radiographs that the film path accepted, and their records."""
    images: np.ndarray  # (n, size, size, 1)
    records: List[Record]
    photos: int = 0  # photos taken
    refused: Dict[str, int] = field(default_factory=dict)  # the film path's refusals, by condition: reason

    @property
    def groups(self) -> List[str]:
        """Each photo's film group: FILM_PREFIX + its radiograph's group."""
        return [FILM_PREFIX + group_of(r) for r in self.records]

    def summary(self) -> Dict:
        return {"photos": self.photos, "read": len(self.groups), "by_group": dict(Counter(self.groups)),
                "refused": dict(sorted(self.refused.items(), key=lambda kv: -kv[1]))}


def choose(records: Sequence[Record], per_group: int, seed: int) -> List[Record]:
    """Up to `per_group` records of each (source, label) group, a seeded draw; in id order."""
    by: Dict[str, List[Record]] = {}
    for r in sorted(records, key=lambda r: r.image_id):
        by.setdefault(group_of(r), []).append(r)
    rng = np.random.default_rng(seed)
    out = []
    for g in sorted(by):
        rs = by[g]
        idx = sorted(rng.choice(len(rs), size=min(per_group, len(rs)), replace=False)) if rs else []
        out += [rs[i] for i in idx]
    return out


def photograph(records: Sequence[Record], spec: PreprocessSpec, seed: int, split: str, desc: str,
               enabled: bool = True, workers=None) -> Photographed:
    """Each record photographed once (a scene drawn over every clinic condition, seeded by
    (seed, split, index)) and read back as the device reads a photo."""
    from device.photo_round_trip import PhotoJob, model_inputs

    jobs = [PhotoJob(seed=(seed, STREAMS[split], i), path=str(r.path)) for i, r in enumerate(records)]
    images, read, refused = [], [], Counter()
    for r, (x, why) in zip(records, progress(model_inputs(jobs, spec, workers), desc, total=len(jobs),
                                             enabled=enabled)):
        if x is None:
            refused[why] += 1
            continue
        images.append(x)
        read.append(r)
    size = spec.size
    return Photographed(np.stack(images) if images else np.zeros((0, size, size, 1), np.float32), read,
                        len(jobs), dict(refused))
