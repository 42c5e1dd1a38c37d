"""Make the stratified (label x region) train/val/test split, seeded (scikit-learn draws it).
Saving, reading and checking split files is fracdata.split's.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Sequence, Tuple

from fracdata.data import Dataset, Record
# Kept importable from here for callers outside train/ and export/ (tests/test_edge_runtime.py).

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def _strata(records: Sequence[Record], min_count: int) -> List[str]:
    """label x region; strata too small to spread over three splits fall back to the label alone."""
    keys = [f"{r.label}|{r.region}" for r in records]
    counts = Counter(keys)
    return [k if counts[k] >= min_count else k.split("|")[0] + "|rare" for k in keys]


def make_split(dataset: Dataset, fractions: Tuple[float, float, float] = DEFAULT_FRACTIONS,
               seed: int = 42) -> Dict[str, str]:
    from sklearn.model_selection import train_test_split

    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")
    recs = sorted(dataset.records, key=lambda r: r.image_id)
    ids = [r.image_id for r in recs]
    strata = _strata(recs, min_count=8)
    if min(Counter(strata).values()) < 3:
        strata = [s.split("|")[0] for s in strata]
    holdout = fractions[1] + fractions[2]
    train_ids, rest_ids, _, rest_strata = train_test_split(
        ids, strata, test_size=holdout, random_state=seed, stratify=strata)
    val_ids, test_ids = train_test_split(
        rest_ids, test_size=fractions[2] / holdout, random_state=seed + 1,
        stratify=rest_strata if min(Counter(rest_strata).values()) >= 2 else None)
    assignment = {i: "train" for i in train_ids}
    assignment.update({i: "val" for i in val_ids})
    assignment.update({i: "test" for i in test_ids})
    return assignment
