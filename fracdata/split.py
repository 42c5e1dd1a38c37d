"""The split file: a CSV of image IDs and their split (train/val/test), saved once, checked against
the data it is used with, and grouped into records per split.

The split is made on image IDs before any augmentation (train/split.py makes it, stratified by
label x region), so no augmented copy of an image can reach another split; its sha256 is recorded
in every run and, later, in every bundle.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

from .data import PHANTOM_PREFIX, DataError, Dataset, Record
from .provenance import sha256_file

SPLITS = ("train", "val", "test")


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
    return sha256_file(path)


def load_split(path: Path, dataset: Dataset, other_sources: bool = False) -> Dict[str, str]:
    """Read a split file and check it belongs to this dataset (same IDs, same labels). With
    `other_sources`, the file may also list images of other sources mixed in at training (the
    phantoms of a combined run, `phantom/...`): they are left out, every image of this dataset
    must still be listed."""
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
            if image_id not in by_id and other_sources and image_id.startswith(PHANTOM_PREFIX):
                continue
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
