"""Run directories as training leaves them, read back by evaluation and export.

A run directory holds run.json (how the model was trained, on which data, with which
PreprocessSpec), the split file whose sha256 run.json records, and model.keras. `run_dirs` finds
them (one, or one per model under a `--model all` folder); `read_run` reads one and refuses a
split changed after training; `dataset_for_run` reads the run's data again the way the run did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .data import DataError, Dataset, load_data
from .provenance import sha256_file

RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Run:
    dir: Path
    record: Dict  # run.json
    split_path: Path  # checked against run.json's sha256
    metrics: Optional[Dict]  # metrics.json, where present

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    @property
    def name(self) -> str:
        return self.record["model"]["name"]


def run_dirs(path: Path) -> List[Path]:
    """`path` itself when it is a run directory, else the run directories one level below it."""
    path = Path(path)
    if (path / RUN_FILE).is_file():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{RUN_FILE}"))
    if not found:
        raise DataError(f"{path}: no {RUN_FILE} here or in its subfolders")
    return found


def read_run(run_dir: Path) -> Run:
    """run.json, the split it names (checksum checked) and metrics.json where present."""
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise DataError(f"{run_file}: not a run directory ({RUN_FILE} missing)")
    record = json.loads(run_file.read_text())
    split = run_dir / record["split"]["file"]
    if not split.is_file():
        raise DataError(f"{split}: the run's split file is missing")
    sha = sha256_file(split)
    if sha != record["split"]["sha256"]:
        raise DataError(f"{split}: checksum {sha[:12]} differs from the one recorded in {RUN_FILE} "
                        f"({record['split']['sha256'][:12]}); the split was changed after training")
    if not (run_dir / MODEL_FILE).is_file():
        raise DataError(f"{run_dir / MODEL_FILE}: the run has no {MODEL_FILE}")
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return Run(run_dir, record, split, metrics)


def dataset_for_run(run: Dict, data_arg: Optional[str], data_format: Optional[str] = None,
                    unboxed: Optional[str] = None, quiet: bool = False) -> Dataset:
    """The run's data (`run` is its run.json), read the way the run read it (layout and --unboxed
    from its provenance) unless the arguments say otherwise."""
    prov = run["data"]["provenance"]
    kw = {"data_format": data_format or prov.get("format"), "unboxed": unboxed or prov.get("unboxed")}
    mix = prov.get("phantom_mix")
    if mix:  # real data with phantoms mixed in (fracdata.data.combine)
        kw.update(phantom_mix=mix["phantom_images"], phantom_seed=mix["phantom_seed"])
    if data_arg:
        return load_data(data_arg, data_format=data_format, unboxed=unboxed, quiet=quiet,
                         **({"phantom_mix": kw["phantom_mix"], "phantom_seed": kw["phantom_seed"]} if mix else {}))
    if run["data"]["phantom"] and "phantom_images" in prov:
        return load_data("phantom", phantom_images=prov["phantom_images"], phantom_seed=prov["phantom_seed"],
                         quiet=quiet)
    if Path(prov.get("path", "")).is_dir():
        return load_data(prov["path"], quiet=quiet, **kw)
    return load_data(None, quiet=quiet)
