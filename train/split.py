"""Make the stratified (label x region) train/val/test split, seeded (scikit-learn draws it).
Saving, reading and checking split files is fracdata.split's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

from fracdata.data import PHANTOM_SOURCE, Dataset, Record
# Kept importable from here for callers outside train/ and export/ (tests/test_edge_runtime.py).

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def _strata(records: Sequence[Record], min_count: int) -> List[str]:
    """label x region; strata too small to spread over three splits fall back to the label alone."""
    keys = [f"{r.label}|{r.region}" for r in records]
    counts = Counter(keys)
    return [k if counts[k] >= min_count else k.split("|")[0] + "|rare" for k in keys]


def make_split(dataset: Dataset, fractions: Tuple[float, float, float] = DEFAULT_FRACTIONS,
               seed: int = 42, groups: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """image_id -> train/val/test, stratified by label x region. With `groups` (image_id -> group,
    train.duplicates.duplicate_groups), every group lands whole in one split: the split is drawn
    over the groups (each stratified by its first member; fractured if any member is)."""
    from sklearn.model_selection import train_test_split

    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")
    if groups:
        return _grouped(dataset, fractions, seed, groups)
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


def _grouped(dataset: Dataset, fractions, seed: int, groups: Dict[str, str]) -> Dict[str, str]:
    members: Dict[str, List[Record]] = {}
    for r in sorted(dataset.records, key=lambda r: r.image_id):
        members.setdefault(groups.get(r.image_id, r.image_id), []).append(r)
    heads = [replace(rs[0], image_id=g, label=max(r.label for r in rs)) for g, rs in sorted(members.items())]
    by_group = make_split(Dataset(dataset.name, dataset.root, heads), fractions, seed)
    return {r.image_id: by_group[g] for g, rs in members.items() for r in rs}


def split_by_source(dataset: Dataset, seed: int = 42, progress: bool = False) -> Tuple[Dict[str, str], str]:
    """(assignment, how it was made) for each source of the data (real radiographs, mixed-in
    phantoms) on its own: the real images keep the data's own split folders where it has them,
    else are split with their exact and near-duplicate copies kept in one split; phantoms are
    split stratified by label x region, exact copies together."""
    from fracdata.readers import layout_split

    from .duplicates import duplicate_groups

    by_source: Dict[str, List[Record]] = {}
    for r in dataset.records:
        by_source.setdefault(r.source or dataset.name, []).append(r)
    assignment: Dict[str, str] = {}
    how = []
    for source, recs in sorted(by_source.items()):
        part = Dataset(dataset.name, dataset.root, recs, phantom=dataset.phantom or source == PHANTOM_SOURCE)
        own = layout_split(part, seed)
        if own is not None:
            assignment.update(own)
            how.append(f"{source}: the data's own split folders")
            continue
        near = not part.phantom
        groups = duplicate_groups(recs, near=near, progress=progress)
        n_joined = len(recs) - len(set(groups.values()))
        assignment.update(make_split(part, seed=seed, groups=groups))
        how.append(f"{source}: train.split (seed {seed}, 70/15/15, stratified label x region; "
                   f"{'exact and near-duplicate' if near else 'exact'} copies kept in one split, {n_joined} image(s) "
                   "joined to another)")
    return assignment, "; ".join(how)
