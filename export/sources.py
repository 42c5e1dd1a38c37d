"""What to export: run directories (model + split + threshold + provenance) or a bare .keras file.

A run directory carries everything the bundle must state. A bare .keras file needs the split it
was trained with (`--split`); its threshold is then chosen on that split's validation images.
With no source at all, the committed reference model is exported: the FracAtlas one where it
exists, else the labelled phantom demonstration model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from train.data import DataError
from train.split import file_sha256

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# custom_cnn_gap: our lean head; on phantom data it beats the paper's head over three seeds
# (docs/results.md) and is 45x smaller, which is what a Pi wants. The phantom reference is the
# film-path run (window normalisation, eight views, photo augmentation, 3,000 phantoms, seed 2),
# whose normalisation was chosen on validation photos (docs/results.md); before it, the seed-2
# run of the first pipeline.
REFERENCE_CANDIDATES = (MODELS_DIR / "fracatlas" / "custom_cnn_gap", MODELS_DIR / "fracatlas" / "custom_cnn",
                        MODELS_DIR / "phantom-demo" / "custom_cnn_gap_film",
                        MODELS_DIR / "phantom-demo" / "custom_cnn_gap_seed2")
PAPER_MODELS = ("custom_cnn", "efficientnetb0", "mobilenetv2", "resnet50")


@dataclass
class Source:
    name: str  # model registry name
    model_path: Path
    split_path: Path
    run: Optional[Dict]  # run.json, when the source is a run directory
    metrics: Optional[Dict]  # metrics.json, when present
    origin: str  # how it was found, for the manifest

    @property
    def phantom(self) -> bool:
        return bool(self.run and self.run["data"]["phantom"])


def reference_dir() -> Path:
    for d in REFERENCE_CANDIDATES:
        if (d / "run.json").is_file():
            return d
    raise DataError(f"no committed reference model under {MODELS_DIR}; pass a run directory")


def _from_run_dir(d: Path) -> Source:
    run = json.loads((d / "run.json").read_text())
    split = d / run["split"]["file"]
    if not split.is_file():
        raise DataError(f"{split}: the run's split file is missing")
    if file_sha256(split) != run["split"]["sha256"]:
        raise DataError(f"{split}: checksum differs from run.json's; the split was changed after training")
    model = d / "model.keras"
    if not model.is_file():
        raise DataError(f"{model}: the run has no model.keras")
    metrics_path = d / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return Source(run["model"]["name"], model, split, run, metrics, f"run directory {d}")


def _from_keras(path: Path, split: Optional[Path]) -> Source:
    from train.models import list_models

    if split is None:
        raise DataError(f"{path}: a bare .keras model needs --split (the split file it was trained with)")
    stem = path.parent.name if path.stem == "model" else path.stem
    name = next((n for n in sorted(list_models(), key=len, reverse=True) if stem.startswith(n)), None)
    if name is None:
        raise DataError(f"{path}: cannot tell the architecture from the name; call it <model>.keras, "
                        f"one of {list_models()}")
    return Source(name, path, Path(split), None, None, f"model file {path}")


def resolve_sources(paths: Sequence[Path], models: Optional[List[str]] = None,
                    split: Optional[Path] = None) -> List[Source]:
    """Each path: a run dir, a folder of run dirs, or a .keras file. `models` picks runs by name."""
    if not paths:
        paths = [reference_dir().parent if models else reference_dir()]
    found: List[Source] = []
    for p in map(Path, paths):
        if p.suffix == ".keras":
            if not p.is_file():
                raise DataError(f"{p}: model file not found")
            found.append(_from_keras(p, split))
        elif (p / "run.json").is_file():
            found.append(_from_run_dir(p))
        elif p.is_dir():
            runs = sorted(q.parent for q in p.glob("*/run.json"))
            if not runs:
                raise DataError(f"{p}: no run.json here or in its subfolders")
            found.extend(_from_run_dir(d) for d in runs)
        else:
            raise DataError(f"{p}: not a run directory, a folder of runs or a .keras file")
    if models:
        wanted = list(PAPER_MODELS) if models == ["all"] else models
        by_name = {s.name: s for s in found}
        missing = [m for m in wanted if m not in by_name]
        if missing:
            raise DataError(f"no run for {', '.join(missing)} under {', '.join(map(str, paths))}; train it with "
                            f"`python -m train --model {','.join(missing)} --out DIR` and pass DIR")
        found = [by_name[m] for m in wanted]
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise DataError(f"two sources for the same model ({names}); export them in separate commands")
    return found
