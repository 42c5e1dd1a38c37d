"""The FracAtlas reader and where data comes from (--data, FRACATLAS_DIR, ../shared, phantom)."""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "fracatlas"
ENV_VAR = "FRACATLAS_DIR"

REGIONS = ("hand", "leg", "hip", "shoulder")
VIEWS = ("frontal", "lateral", "oblique")
REQUIRED_COLUMNS = ("image_id", *REGIONS, "mixed", "hardware", "multiscan", "fractured")
CLASS_DIRS = {0: "Non_fractured", 1: "Fractured"}
CLASS_NAMES = ("non-fractured", "fractured")


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


@dataclass
class Dataset:
    name: str  # "FracAtlas" or "phantom"
    root: Path
    records: List[Record]
    phantom: bool = False
    provenance: Dict[str, object] = field(default_factory=dict)

    def by_id(self) -> Dict[str, Record]:
        return {r.image_id: r for r in self.records}

    def counts(self) -> Dict[str, int]:
        n_frac = sum(r.label for r in self.records)
        return {"images": len(self.records), "fractured": n_frac, "non_fractured": len(self.records) - n_frac}


def _flag(value: str, csv_path: Path, line: int, column: str) -> int:
    v = (value or "").strip()
    if v in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    raise DataError(f"{csv_path}: line {line}, column {column!r}: expected 0 or 1, got {value!r}")


def read_fracatlas(root: Path, name: str = "FracAtlas") -> Dataset:
    """Read `dataset.csv` and locate every image under images/Fractured or images/Non_fractured.

    A missing folder or CSV, a missing column or a bad flag stops here. A listed image that is
    missing on disk is kept as a record; the loader skips and counts it (see train.dataset).
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
    return Dataset(name=name, root=root, records=records)


def banner(lines: List[str]) -> str:
    width = max(len(s) for s in lines) + 4
    bar = "!" * width
    return "\n".join([bar, *[f"! {s.ljust(width - 4)} !" for s in lines], bar])


PHANTOM_BANNER = banner([
    "PHANTOM DATA: synthetic radiographs made by train.phantom.",
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


def load_data(arg: Optional[str], phantom_images: int = 1200, phantom_seed: int = 0,
              phantom_dir: Optional[Path] = None, quiet: bool = False) -> Dataset:
    """Resolve and read the data; generate the phantom set (cached) when that is the choice."""
    choice = resolve_data(arg)
    if choice.path is not None:
        ds = read_fracatlas(choice.path)
        ds.provenance = {"source": choice.reason, "path": str(choice.path)}
        marker = choice.path / "phantom.json"
        if marker.is_file():  # a phantom folder passed by path is still phantom, never "FracAtlas"
            ds.name, ds.phantom = "phantom", True
            ds.provenance.update({f"phantom_{k}": v for k, v in json.loads(marker.read_text()).items()})
            if not quiet:
                print(PHANTOM_BANNER, file=sys.stderr)
        readme = choice.path / "README.md"
        if readme.is_file():
            ds.provenance["readme_first_line"] = readme.read_text(errors="replace").strip().splitlines()[0][:200]
        return ds
    from .phantom import generate_phantom_dataset
    out = phantom_dir or default_phantom_dir(phantom_images, phantom_seed)
    if not quiet:
        print(PHANTOM_BANNER, file=sys.stderr)
        print(f"(data: {choice.reason}; phantom images in {out})", file=sys.stderr)
    generate_phantom_dataset(out, n_images=phantom_images, seed=phantom_seed, progress=not quiet)
    ds = read_fracatlas(out, name="phantom")
    ds.phantom = True
    ds.provenance = {"source": choice.reason, "path": str(out), "phantom_images": phantom_images,
                     "phantom_seed": phantom_seed}
    return ds
