"""Stratified (label x region) train/val/test split, made once, saved as a CSV of image IDs.

The split happens on image IDs before any augmentation, so no augmented copy of an image can reach
another split; its sha256 is recorded in every run and, later, in every bundle.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from edge_runtime.bundle import sha256_file as file_sha256  # noqa: F401 - one sha256 for every file

from .data import DataError, Dataset, Record

SPLITS = ("train", "val", "test")
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


def save_split(assignment: Dict[str, str], dataset: Dataset, path: Path) -> str:
    """Write image_id,split,label,region sorted by ID; return the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_id = dataset.by_id()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image_id", "split", "label", "region"])
        for image_id in sorted(assignment):
            r = by_id[image_id]
            w.writerow([image_id, assignment[image_id], r.label, r.region])
    return file_sha256(path)


def load_split(path: Path, dataset: Dataset) -> Dict[str, str]:
    """Read a split file and check it belongs to this dataset (same IDs, same labels)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    by_id = dataset.by_id()
    assignment: Dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"image_id", "split"} <= set(reader.fieldnames):
            raise DataError(f"{path}: split file needs columns image_id and split")
        for line, row in enumerate(reader, start=2):
            image_id, split = row["image_id"], row["split"]
            if split not in SPLITS:
                raise DataError(f"{path}: line {line}: unknown split {split!r}")
            if image_id in assignment:
                raise DataError(f"{path}: line {line}: image {image_id!r} listed twice")
            if image_id not in by_id:
                raise DataError(f"{path}: line {line}: image {image_id!r} is not in the dataset "
                                f"({dataset.root}); was this split made for other data?")
            if "label" in row and row["label"] not in (None, "") and int(row["label"]) != by_id[image_id].label:
                raise DataError(f"{path}: line {line}: label of {image_id!r} differs from dataset.csv")
            assignment[image_id] = split
    missing = set(by_id) - set(assignment)
    if missing:
        raise DataError(f"{path}: {len(missing)} dataset image(s) are in no split "
                        f"(e.g. {sorted(missing)[0]}); was this split made for other data?")
    return assignment


def records_by_split(dataset: Dataset, assignment: Dict[str, str]) -> Dict[str, List[Record]]:
    out: Dict[str, List[Record]] = {s: [] for s in SPLITS}
    for r in sorted(dataset.records, key=lambda r: r.image_id):
        out[assignment[r.image_id]].append(r)
    return out


def split_summary(parts: Dict[str, List[Record]]) -> Dict[str, Dict[str, int]]:
    return {s: {"images": len(rs), "fractured": sum(r.label for r in rs)} for s, rs in parts.items()}
