"""The FracAtlas reader, the record every reader makes, and where data comes from (--data,
FRACATLAS_DIR, ../shared, phantom). The other layouts (a folder per class, a YOLO export) and the
detection of which one a folder holds are in fracdata/readers.py."""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from edge_runtime.labels import NEGATIVE, POSITIVE

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "fracatlas"
ENV_VAR = "FRACATLAS_DIR"

REGIONS = ("hand", "leg", "hip", "shoulder")
VIEWS = ("frontal", "lateral", "oblique")
REQUIRED_COLUMNS = ("image_id", *REGIONS, "mixed", "hardware", "multiscan", "fractured")
CLASS_DIRS = {0: "Non_fractured", 1: "Fractured"}
CLASS_NAMES = (NEGATIVE, POSITIVE)  # index = label (0, 1)


class DataError(RuntimeError):
    """The dataset folder or its CSV cannot be used; the message names the file."""


@dataclass(frozen=True)
class Record:
    image_id: str
    path: Path
    label: int  # 1 = fractured
    region: str  # hand | leg | hip | shoulder | mixed | unknown
    view: str  # frontal | lateral | oblique (joined with + when several) | unknown
    hardware: int
    multiscan: int
    # Fracture boxes, (x0, y0, x1, y1) relative to the stored image: None = not known (no annotation
    # for this image), () = known to have none (a non-fractured image).
    boxes: Optional[Tuple[Tuple[float, float, float, float], ...]] = None
    split: Optional[str] = None  # train | val | test where the data's own folders say so
    source: str = ""  # which of a combined dataset's parts it came from ("phantom", or the real set's name)


UNLABELLED = -1  # the label of records in Dataset.unlabelled: nothing says whether they are fractured


@dataclass
class Dataset:
    name: str  # "FracAtlas", "phantom", or the folder's name for the other layouts
    root: Path
    records: List[Record]
    phantom: bool = False
    provenance: Dict[str, object] = field(default_factory=dict)
    format: str = "fracatlas"  # fracatlas | folders | yolo (fracdata/readers.py)
    unlabelled: List[Record] = field(default_factory=list)  # read, but with no label (see --unboxed)
    notes: List[str] = field(default_factory=list)  # what the reader assumed or ignored, for people
    annotations: Optional[str] = None  # where the fracture boxes came from, None when there are none

    def by_id(self) -> Dict[str, Record]:
        return {r.image_id: r for r in self.records}

    def counts(self) -> Dict[str, int]:
        n_frac = sum(r.label for r in self.records)
        out = {"images": len(self.records), "fractured": n_frac, "non_fractured": len(self.records) - n_frac}
        boxed = sum(1 for r in self.records if r.label == 1 and r.boxes)
        if boxed:
            out["fractured_with_boxes"] = boxed
        if self.unlabelled:
            out["unlabelled"] = len(self.unlabelled)
        return out

    def require_boxes_or_both_classes(self) -> None:
        """A fracture-map model learns from boxes alone (their cells, and every cell away from
        them), or from both classes."""
        if any(r.label == 1 and r.boxes for r in self.records):
            return
        self.require_both_classes()

    def require_both_classes(self) -> None:
        """Training and a validation threshold need both classes; say why they are missing."""
        c = self.counts()
        if c["fractured"] and c["non_fractured"]:
            return
        hint = ""
        if self.unlabelled:
            hint = (f"; {len(self.unlabelled)} image(s) had no boxes and are unlabelled: pass --unboxed negative "
                    "if images without boxes are not fractured")
        raise DataError(f"{self.root}: needs both fractured and non-fractured images to train, has "
                        f"{c['fractured']} fractured and {c['non_fractured']} non-fractured{hint}")


def _flag(value: str, csv_path: Path, line: int, column: str) -> int:
    v = (value or "").strip()
    if v in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    raise DataError(f"{csv_path}: line {line}, column {column!r}: expected 0 or 1, got {value!r}")


def image_size(path: Path) -> Optional[Tuple[int, int]]:
    """(width, height) from the file's header, or None where it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def read_fracatlas(root: Path, name: str = "FracAtlas") -> Dataset:
    """Read `dataset.csv` and locate every image under images/Fractured or images/Non_fractured;
    attach the fracture boxes from `Annotations/` (YOLO, else COCO, VGG or PASCAL VOC) when present.

    A missing folder or CSV, a missing column or a bad flag stops here, and so does a malformed
    annotation. A listed image that is missing on disk is kept as a record; the loader skips and
    counts it (see fracdata.images).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    csv_path = root / "dataset.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: dataset.csv not found (expected FracAtlas layout: "
                        "dataset.csv, images/Fractured, images/Non_fractured)")
    for d in CLASS_DIRS.values():
        if not (root / "images" / d).is_dir():
            raise DataError(f"{root / 'images' / d}: image folder not found")
    records: List[Record] = []
    seen = set()
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                image_id = (row["image_id"] or "").strip()
                if not image_id:
                    raise DataError(f"{csv_path}: line {line}: empty image_id")
                if image_id in seen:
                    raise DataError(f"{csv_path}: line {line}: duplicate image_id {image_id!r}")
                seen.add(image_id)
                label = _flag(row["fractured"], csv_path, line, "fractured")
                flags = {r: _flag(row[r], csv_path, line, r) for r in REGIONS}
                mixed = _flag(row["mixed"], csv_path, line, "mixed")
                set_regions = [r for r in REGIONS if flags[r]]
                region = "mixed" if mixed or len(set_regions) > 1 else (set_regions[0] if set_regions else "unknown")
                views = [v for v in VIEWS if v in row and (row[v] or "0").strip() in ("1", "1.0")]
                records.append(Record(
                    image_id=image_id,
                    path=root / "images" / CLASS_DIRS[label] / image_id,
                    label=label, region=region, view="+".join(views) or "unknown",
                    hardware=_flag(row["hardware"], csv_path, line, "hardware"),
                    multiscan=_flag(row["multiscan"], csv_path, line, "multiscan"),
                ))
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not a UTF-8 text CSV ({exc})") from None
    except csv.Error as exc:
        raise DataError(f"{csv_path}: malformed CSV ({exc})") from None
    if not records:
        raise DataError(f"{csv_path}: no rows")
    if len({r.label for r in records}) < 2:
        raise DataError(f"{csv_path}: needs both fractured and non-fractured images")
    ds = Dataset(name=name, root=root, records=records)
    _attach_fracatlas_boxes(ds)
    return ds


def _attach_fracatlas_boxes(ds: Dataset) -> None:
    from .boxes import fracatlas_annotations

    paths = {r.image_id: r.path for r in ds.records}
    by_stem = {Path(i).stem: i for i in paths}

    def size_of(file_name: str):
        image_id = file_name if file_name in paths else by_stem.get(Path(file_name).stem)
        return image_size(paths[image_id]) if image_id else None

    found, source = fracatlas_annotations(ds.root, size_of)
    if source is None:
        return
    boxes = {}
    for key, bs in found.items():
        image_id = key if key in paths else by_stem.get(Path(key).stem)
        if image_id is not None:
            boxes.setdefault(image_id, []).extend(bs)
    orphans = sum(1 for k in found if (k if k in paths else by_stem.get(Path(k).stem)) is None)
    out, boxed, negatives_boxed = [], 0, 0
    for r in ds.records:
        if r.label == 0:
            negatives_boxed += bool(boxes.get(r.image_id))
            out.append(_replace(r, boxes=()))
        elif boxes.get(r.image_id):
            boxed += 1
            out.append(_replace(r, boxes=tuple(boxes[r.image_id])))
        else:
            out.append(r)
    ds.records = out
    n_frac = sum(r.label for r in out)
    ds.notes.append(f"fracture boxes from {source}: {boxed} of {n_frac} fractured images have at least one")
    if negatives_boxed:
        ds.notes.append(f"{negatives_boxed} non-fractured image(s) carry boxes in {source}; ignored")
    if orphans:
        ds.notes.append(f"{orphans} annotation(s) in {source} name no image of dataset.csv; ignored")
    ds.annotations = source


def _replace(r: Record, **kw) -> Record:
    from dataclasses import replace
    return replace(r, **kw)


def banner(lines: List[str]) -> str:
    width = max(len(s) for s in lines) + 4
    bar = "!" * width
    return "\n".join([bar, *[f"! {s.ljust(width - 4)} !" for s in lines], bar])


PHANTOM_BANNER = banner([
    "PHANTOM DATA: synthetic radiographs made by fracdata.phantom.",
    "Every number from this run is a DEMONSTRATION of the pipeline,",
    "not a clinical result, and the model is not a clinical model.",
])


@dataclass(frozen=True)
class DataChoice:
    path: Optional[Path]  # None means phantom
    reason: str


def resolve_data(arg: Optional[str], environ: Optional[Dict[str, str]] = None,
                 shared: Path = SHARED_DATA) -> DataChoice:
    """--data PATH (or 'phantom'), else $FRACATLAS_DIR, else ../shared/data/fracatlas, else phantom."""
    env = os.environ if environ is None else environ
    if arg:
        if arg == "phantom":
            return DataChoice(None, "--data phantom")
        p = Path(arg).expanduser()
        if not p.is_dir():
            raise DataError(f"{p}: --data folder not found")
        return DataChoice(p, "--data")
    if env.get(ENV_VAR):
        p = Path(env[ENV_VAR]).expanduser()
        if not p.is_dir():
            raise DataError(f"{p}: ${ENV_VAR} points at a folder that does not exist")
        return DataChoice(p, f"${ENV_VAR}")
    if shared.is_dir():
        return DataChoice(shared, str(shared))
    return DataChoice(None, "no --data, no $FRACATLAS_DIR and no ../shared/data/fracatlas: phantom default")


def default_phantom_dir(n_images: int, seed: int) -> Path:
    from .phantom import GENERATOR_VERSION
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "fracture-edge" / f"phantom-v{GENERATOR_VERSION}-n{n_images}-seed{seed}"


PHANTOM_SOURCE = "phantom"  # Record.source of phantom images, alone or mixed into real data
PHANTOM_PREFIX = PHANTOM_SOURCE + "/"  # image IDs of the phantoms mixed into real data


def record_source(r: "Record") -> str:
    """Which part of a dataset a record comes from: PHANTOM_SOURCE, or the real set's name
    ("real" when it has none). The one place that decides what is a phantom."""
    return PHANTOM_SOURCE if r.image_id.startswith(PHANTOM_PREFIX) or r.source == PHANTOM_SOURCE else (r.source or "real")


def combine(real: Dataset, phantoms: Dataset) -> Dataset:
    """Real radiographs with phantoms mixed in: one dataset, each record tagged with its source;
    phantom IDs prefixed with `phantom/` so the split file keeps the two apart. The result is not
    phantom data (real radiographs are in it), and says what was mixed in its provenance."""
    from dataclasses import replace

    records = [replace(r, source=real.name) for r in real.records]
    records += [replace(r, image_id=PHANTOM_PREFIX + r.image_id, source=PHANTOM_SOURCE) for r in phantoms.records]
    ds = Dataset(name=f"{real.name} + phantom", root=real.root, records=records, phantom=False, format=real.format,
                 unlabelled=[replace(r, source=real.name) for r in real.unlabelled],
                 notes=real.notes + [f"{len(phantoms.records)} phantom radiographs mixed in (source 'phantom')"],
                 annotations=real.annotations)
    ds.provenance = {**real.provenance,
                     "phantom_mix": {"phantom_images": phantoms.provenance.get("phantom_images"),
                                     "phantom_seed": phantoms.provenance.get("phantom_seed"),
                                     "path": str(phantoms.root)}}
    return ds


def load_data(arg: Optional[str], phantom_images: int = 1200, phantom_seed: int = 0,
              phantom_dir: Optional[Path] = None, quiet: bool = False, data_format: Optional[str] = None,
              unboxed: Optional[str] = None, phantom_mix: int = 0) -> Dataset:
    """Resolve and read the data; generate the phantom set (cached) when that is the choice.

    `data_format` (auto, fracatlas, folders, yolo) and `unboxed` (what a YOLO export's images
    without boxes are: unknown, negative, fractured) go to fracdata.readers.read_dataset. What the
    reader assumed is printed on stderr (unless quiet) and kept in the provenance. `phantom_mix`
    phantoms (seed `phantom_seed`) are mixed into real data (fracdata.data.combine)."""
    if phantom_mix:
        real = load_data(arg, quiet=quiet, data_format=data_format, unboxed=unboxed)
        if real.phantom:
            return real  # no real data found: phantoms already
        phantoms = load_data("phantom", phantom_images=phantom_mix, phantom_seed=phantom_seed, quiet=True)
        return combine(real, phantoms)
    from .readers import DEFAULT_UNBOXED, read_dataset

    choice = resolve_data(arg)
    if choice.path is not None:
        _add_phantom_boxes(choice.path, quiet)
        ds = read_dataset(choice.path, data_format or "auto", unboxed or DEFAULT_UNBOXED)
        ds.provenance = {"source": choice.reason, "path": str(choice.path), **describe(ds)}  # + the reader's own
        marker = choice.path / "phantom.json"
        if marker.is_file():  # a phantom folder passed by path is still phantom, never "FracAtlas"
            ds.name, ds.phantom = "phantom", True
            ds.records = [_replace(r, source=PHANTOM_SOURCE) for r in ds.records]
            ds.provenance.update({f"phantom_{k}": v for k, v in json.loads(marker.read_text()).items()})
            if not quiet:
                print(PHANTOM_BANNER, file=sys.stderr)
        readme = choice.path / "README.md"
        if readme.is_file():
            text = readme.read_text(errors="replace").strip()
            ds.provenance["readme_first_line"] = text.splitlines()[0][:200]
            credit = licence_paragraph(text)
            if credit:
                ds.provenance["licence_and_credit"] = credit
        if not quiet:
            for note in ds.notes:
                print(f"data ({ds.format}): {note}", file=sys.stderr)
        return ds
    from .phantom import generate_phantom_dataset
    out = phantom_dir or default_phantom_dir(phantom_images, phantom_seed)
    if not quiet:
        print(PHANTOM_BANNER, file=sys.stderr)
        print(f"(data: {choice.reason}; phantom images in {out})", file=sys.stderr)
        if not (out / "phantom.json").is_file():
            print(f"first use of this phantom set: drawing {phantom_images:,} images once (about "
                  f"{max(1, round(phantom_images / 25 / 60))} min on 2 cores); later runs reuse them", file=sys.stderr)
    generate_phantom_dataset(out, n_images=phantom_images, seed=phantom_seed, progress=not quiet)
    ds = read_fracatlas(out, name="phantom")
    ds.phantom = True
    ds.records = [_replace(r, source=PHANTOM_SOURCE) for r in ds.records]
    ds.provenance = {"source": choice.reason, "path": str(out), "phantom_images": phantom_images,
                     "phantom_seed": phantom_seed, **describe(ds)}
    return ds


def licence_paragraph(readme: str) -> Optional[str]:
    """The README's paragraph that names the data's source and licence (CC BY asks for credit
    wherever results are published; export copies it into the bundle's manifest and report)."""
    import re

    for para in re.split(r"\n\s*\n", readme):
        if re.search(r"\blicen[cs]e\b", para, re.IGNORECASE):
            return " ".join(para.split())[:800]
    return None


def _add_phantom_boxes(folder: Path, quiet: bool) -> None:
    """A phantom folder made before phantoms carried their fracture boxes gets them (the images are
    not touched: the boxes come from rendering the fractured ones again, which is deterministic)."""
    from .phantom import ANNOTATIONS, GENERATOR_VERSION, generate_phantom_dataset

    marker = folder / "phantom.json"
    if not marker.is_file() or (folder / ANNOTATIONS).is_dir():
        return
    try:
        params = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    if params.get("generator_version") != GENERATOR_VERSION:
        return
    size = tuple(params["size"]) if params.get("size") else None
    generate_phantom_dataset(folder, n_images=params["n_images"], seed=params["seed"], progress=not quiet, size=size)


def describe(ds: Dataset) -> Dict[str, object]:
    """The reader's side of the provenance: layout, where boxes came from, what was assumed, and
    whatever the reader itself recorded (a YOLO export's class names and --unboxed)."""
    return {**ds.provenance, "format": ds.format, "annotations": ds.annotations, "notes": list(ds.notes)}
