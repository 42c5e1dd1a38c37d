"""Which training images calibrate int8, chosen once for TFLite and ONNX alike.

Only the training split is eligible: calibrating on test images would let the check grade the
quantizer on what it was tuned on. The sample is stratified by source x label x region (every
stratum keeps its share: real radiographs beside mixed-in phantoms, fractures included, since
their activations are the ones that must not clip) and seeded, so a rerun picks the same images.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Dict, List, Sequence

import numpy as np

from fracdata.data import Record

DEFAULT_SIZE = 200


def choose_calibration(train_records: Sequence[Record], n: int = DEFAULT_SIZE, seed: int = 0) -> List[Record]:
    records = sorted(train_records, key=lambda r: r.image_id)
    if n <= 0:
        raise ValueError("calibration size must be positive")
    if n >= len(records):
        return records
    strata: Dict[str, List[Record]] = defaultdict(list)
    for r in records:
        strata[f"{r.source}/{r.label}/{r.region}"].append(r)
    rng = np.random.default_rng(seed)
    # Largest-remainder allotment so the shares add up to exactly n.
    exact = {k: n * len(v) / len(records) for k, v in strata.items()}
    take = {k: int(np.floor(e)) for k, e in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - take[k]), k))[: n - sum(take.values())]:
        take[k] += 1
    chosen = []
    for k in sorted(strata):
        idx = rng.permutation(len(strata[k]))[: take[k]]
        chosen.extend(strata[k][i] for i in sorted(idx))
    return sorted(chosen, key=lambda r: r.image_id)


def ids_sha256(records: Sequence[Record]) -> str:
    return hashlib.sha256("\n".join(r.image_id for r in records).encode()).hexdigest()
