"""The data layouts users bring, detected from `--data DIR` (`--data-format` overrides):

- **fracatlas**: `dataset.csv` + `images/Fractured`, `images/Non_fractured` (+ `Annotations/`);
- **folders**: a folder per class, `fractured/` beside `not fractured/`, `non_fractured/` or
  `normal/` (any case; `-`, `_` and spaces alike), at the top or under `train/`, `val/`, `test/`
  (Kaggle's bone-fracture sets, Keras's `image_dataset_from_directory`); the split is honoured;
- **yolo**: `images/` and `labels/` (at the top, under `train/`, `valid/`, `test/`, or as
  `images/train` + `labels/train`), with `data.yaml` or a class list. An image with a box is
  fractured; what an image without boxes is, `--unboxed` says (default: unknown, not guessed).

Image IDs are paths relative to DIR (`train/fractured/a.jpg`), so the same file name in two
folders stays two images. Near-duplicate images across splits are found by train/duplicates.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .data import UNLABELLED, DataError, Dataset, Record, read_fracatlas

FORMATS = ("auto", "fracatlas", "folders", "yolo")
UNBOXED = ("unknown", "negative", "fractured")
DEFAULT_UNBOXED = "unknown"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
POSITIVE_DIRS = {"fractured", "fracture", "fractures"}
NEGATIVE_DIRS = {"not fractured", "non fractured", "nonfractured", "normal", "unfractured", "no fracture"}

EXPECTED = """expected one of:
  FracAtlas: dataset.csv, images/Fractured, images/Non_fractured (boxes in Annotations/ when present);
  a folder per class: fractured/ beside 'not fractured/', non_fractured/ or normal/, at the top or under train/, val/, test/;
  a YOLO export: images/ and labels/ (at the top, or under train/, valid/, test/), with data.yaml or classes.txt"""


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[-_]", " ", name)).strip().lower()


def _subdirs(d: Path) -> List[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _images_under(d: Path) -> List[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(d).parts))


def _class_dirs(d: Path) -> Optional[Tuple[Path, Path]]:
    """(fractured folder, non-fractured folder) directly under d, or None."""
    pos = [p for p in _subdirs(d) if _norm(p.name) in POSITIVE_DIRS]
    neg = [p for p in _subdirs(d) if _norm(p.name) in NEGATIVE_DIRS]
    if len(pos) > 1 or len(neg) > 1:
        raise DataError(f"{d}: several folders for one class ({', '.join(p.name for p in pos + neg)}); keep one each")
    return (pos[0], neg[0]) if pos and neg else None


def _split_dirs(root: Path) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for p in _subdirs(root):
        s = SPLIT_NAMES.get(p.name.lower())
        if s is None:
            continue
        if s in out:
            raise DataError(f"{root}: both {out[s].name}/ and {p.name}/ would be the {s} split; keep one")
        out[s] = p
    return out


# ---------------------------------------------------------------- detection

def _looks_yolo(root: Path) -> bool:
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return True
    return any((d / "images").is_dir() and (d / "labels").is_dir() for d in _split_dirs(root).values())


def _looks_folders(root: Path) -> bool:
    if _class_dirs(root):
        return True
    return any(_class_dirs(d) for d in _split_dirs(root).values())


def detect_format(root: Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if (root / "dataset.csv").is_file():
        return "fracatlas"
    if _looks_yolo(root):
        return "yolo"
    if _looks_folders(root):
        return "folders"
    seen = ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(root.iterdir())[:12]) or "nothing"
    raise DataError(f"{root}: no known data layout here (found: {seen}); {EXPECTED}")


def read_dataset(root: Path, data_format: str = "auto", unboxed: str = DEFAULT_UNBOXED) -> Dataset:
    """Read DIR in the layout `data_format` names, or the one detected."""
    root = Path(root)
    if data_format not in FORMATS:
        raise DataError(f"unknown --data-format {data_format!r}; choose from {', '.join(FORMATS)}")
    if unboxed not in UNBOXED:
        raise DataError(f"unknown --unboxed {unboxed!r}; choose from {', '.join(UNBOXED)}")
    fmt = detect_format(root) if data_format == "auto" else data_format
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if fmt == "fracatlas":
        return read_fracatlas(root)
    if fmt == "folders":
        return read_folders(root)
    return read_yolo(root, unboxed)


# ---------------------------------------------------------------- a folder per class

def read_folders(root: Path) -> Dataset:
    root = Path(root)
    splits = _split_dirs(root)
    top = _class_dirs(root)
    with_classes = {s: d for s, d in splits.items() if _class_dirs(d)}
    if top and with_classes:
        raise DataError(f"{root}: class folders both at the top ({top[0].name}/) and under "
                        f"{', '.join(d.name for d in with_classes.values())}/; which is the data?")
    if not top and not with_classes:
        raise DataError(f"{root}: no class folders (fractured/ beside 'not fractured/', non_fractured/ or "
                        f"normal/) at the top or under train/, val/, test/; {EXPECTED}")
    places = [(None, root)] if top else sorted(with_classes.items())
    records: List[Record] = []
    notes: List[str] = []
    for split, d in places:
        pos, neg = _class_dirs(d)
        for label, folder in ((1, pos), (0, neg)):
            for p in _images_under(folder):
                records.append(Record(image_id=p.relative_to(root).as_posix(), path=p, label=label,
                                      region="unknown", view="unknown", hardware=0, multiscan=0,
                                      boxes=() if label == 0 else None, split=split))
        others = [p.name for p in _subdirs(d) if p not in (pos, neg)]
        if others:
            notes.append(f"{d.relative_to(root).as_posix() or '.'}: folders ignored (not a class): {', '.join(others[:6])}")
    if not records:
        raise DataError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if top is None:
        empty = [s for s in ("train", "val", "test") if s not in with_classes]
        notes.append(f"split from the folders: {', '.join(sorted(with_classes))}"
                     + (f" (no {' or '.join(empty)} folder: carved from train when training)" if empty else ""))
    ds = Dataset(name=root.name, root=root, records=records, format="folders", notes=notes)
    _check_labels(ds)
    return ds


# ---------------------------------------------------------------- YOLO export

def _yolo_places(root: Path) -> List[Tuple[Optional[str], Path, Path]]:
    """(split, images folder, labels folder) for each place the export keeps images."""
    places: List[Tuple[Optional[str], Path, Path]] = []
    for s, d in _split_dirs(root).items():
        if (d / "images").is_dir():
            places.append((s, d / "images", d / "labels"))
    if (root / "images").is_dir():
        inner = {SPLIT_NAMES[p.name.lower()]: p for p in _subdirs(root / "images") if p.name.lower() in SPLIT_NAMES}
        if inner and not places:
            places += [(s, p, root / "labels" / p.name) for s, p in sorted(inner.items())]
        elif not places:
            places.append((None, root / "images", root / "labels"))
        else:
            raise DataError(f"{root}: images/ at the top and under {', '.join(s for s, _, _ in places)}/; "
                            "which is the data?")
    return places


def read_yolo(root: Path, unboxed: str = DEFAULT_UNBOXED) -> Dataset:
    """Images with at least one box are fractured. Every class counts as a fracture mark (the
    class names are recorded); an image without boxes (empty or missing label file) is what
    `unboxed` says: unknown (kept apart, unlabelled), negative, or fractured (box unknown)."""
    from .boxes import read_class_names, read_yolo_file

    root = Path(root)
    places = _yolo_places(root)
    if not places:
        raise DataError(f"{root}: no images/ folder beside labels/; {EXPECTED}")
    names, names_file = read_class_names(root)
    records: List[Record] = []
    unlabelled: List[Record] = []
    empty = missing = orphans = 0
    class_counts: Dict[int, int] = {}
    for split, img_dir, lab_dir in places:
        images = _images_under(img_dir)
        stems = set()
        for p in images:
            rel = p.relative_to(img_dir).with_suffix(".txt")
            stems.add(rel.as_posix())
            label_file = lab_dir / rel
            if label_file.is_file():
                boxes, classes = read_yolo_file(label_file)
                empty += not boxes
            else:
                boxes, classes = [], []
                missing += 1
            for c in classes:
                class_counts[c] = class_counts.get(c, 0) + 1
            if names is not None and any(c < 0 or c >= len(names) for c in classes):
                raise DataError(f"{label_file}: class id {max(classes)} but {names_file} names {len(names)} classes")
            image_id = p.relative_to(root).as_posix()
            base = dict(image_id=image_id, path=p, region="unknown", view="unknown", hardware=0, multiscan=0, split=split)
            if boxes:
                records.append(Record(label=1, boxes=tuple(boxes), **base))
            elif unboxed == "negative":
                records.append(Record(label=0, boxes=(), **base))
            elif unboxed == "fractured":
                records.append(Record(label=1, boxes=None, **base))
            else:
                unlabelled.append(Record(label=UNLABELLED, boxes=None, **base))
        if lab_dir.is_dir():
            orphans += sum(1 for q in lab_dir.rglob("*.txt") if q.relative_to(lab_dir).as_posix() not in stems
                           and q.name != "classes.txt")
    if not records and not unlabelled:
        raise DataError(f"{root}: the images/ folder(s) hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    n_unboxed = empty + missing
    notes = []
    if names is None:
        notes.append("no data.yaml or class list (classes.txt): class names unknown; every box counts as a fracture")
    else:
        notes.append(f"classes from {names_file}: {', '.join(names)}; every box of any class counts as a fracture")
    notes.append(f"{len(records) + len(unlabelled) - n_unboxed} image(s) with boxes: fractured")
    if n_unboxed:
        what = {"unknown": "UNLABELLED (not assumed fractured or not; left out of training and of sensitivity, "
                           "their probabilities reported apart; --unboxed negative|fractured to say what they are)",
                "negative": "assumed NOT fractured (--unboxed negative)",
                "fractured": "assumed fractured, location unknown (--unboxed fractured)"}[unboxed]
        notes.append(f"{n_unboxed} image(s) without boxes ({empty} empty label file(s), {missing} without one): {what}")
    if orphans:
        notes.append(f"{orphans} label file(s) without an image; ignored")
    if any(s for s, _, _ in places):
        notes.append(f"split from the folders: {', '.join(sorted({s for s, _, _ in places if s}))}")
    ds = Dataset(name=root.name, root=root, records=records, format="yolo", unlabelled=unlabelled, notes=notes,
                 annotations="labels/ (YOLO)")
    ds.provenance = {"unboxed": unboxed, "class_names": names, "class_names_from": names_file,
                     "boxes_per_class": {str(k): v for k, v in sorted(class_counts.items())}}
    _check_labels(ds)
    return ds


def _check_labels(ds: Dataset) -> None:
    ids = [r.image_id for r in ds.records + ds.unlabelled]
    if len(ids) != len(set(ids)):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{ds.root}: image {dup!r} read twice")


def layout_split(ds: Dataset, seed: int = 42) -> Optional[Dict[str, str]]:
    """The data's own split (image ID -> train/val/test) when every record has one; a missing val
    or test split is carved from train (stratified by label, seeded). None when there is none."""
    if not ds.records or any(r.split is None for r in ds.records):
        return None
    assignment = {r.image_id: r.split for r in ds.records}
    train = sorted(i for i, s in assignment.items() if s == "train")
    by_id = ds.by_id()
    for missing, fraction in (("val", 0.15), ("test", 0.15)):
        if missing in assignment.values():
            continue
        if len(train) < 10:
            raise DataError(f"{ds.root}: no {missing} split and too few training images ({len(train)}) to carve one")
        from sklearn.model_selection import train_test_split

        labels = [by_id[i].label for i in train]
        strat = labels if min(labels.count(0), labels.count(1)) >= 2 else None
        keep, carved = train_test_split(train, test_size=fraction / 0.70, random_state=seed, stratify=strat)
        for i in carved:
            assignment[i] = missing
        train = sorted(keep)
    return assignment
