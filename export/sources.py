"""What to export: run directories (model + split + threshold + provenance) or a bare .keras file.

A run directory carries everything the bundle must state. A bare .keras file needs the split it
was trained with (`--split`); its threshold is then chosen on that split's validation images.
With no source at all, the committed reference model is exported: the FracAtlas one where it
exists, else the labelled phantom demonstration model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fracdata.runs import RUN_FILE, read_run, run_dirs

from .errors import ExportError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# fracture_map: box-supervised on real radiographs (the forearm set's run until a FracAtlas one
# exists), whose map localises real fractures where Grad-CAM of the phantom models did not
# (docs/results.md). Before it: custom_cnn_gap, our lean head; on phantom data it beats the paper's head over three seeds
# (docs/results.md) and is 45x smaller, which is what a Pi wants. The phantom reference is the
# film-path run (window normalisation, eight views, photo augmentation, 3,000 phantoms, seed 2),
# whose normalisation was chosen on validation photos (docs/results.md); before it, the seed-2
# run of the first pipeline.
REFERENCE_CANDIDATES = (MODELS_DIR / "fracatlas" / "fracture_map", MODELS_DIR / "forearm-map" / "fracture_map",
                        MODELS_DIR / "fracatlas" / "custom_cnn_gap", MODELS_DIR / "fracatlas" / "custom_cnn",
                        MODELS_DIR / "phantom-demo" / "custom_cnn_gap_film",
                        MODELS_DIR / "phantom-demo" / "custom_cnn_gap_seed2")


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
    """The first committed reference run whose data is here to check it on: a run on real
    radiographs needs its data folder (never committed); a phantom run regenerates its data."""
    for d in REFERENCE_CANDIDATES:
        if (d / RUN_FILE).is_file() and _data_present(d):
            return d
    raise ExportError(f"no committed reference model under {MODELS_DIR} with its data present; pass a run directory")


def _data_present(run_dir: Path) -> bool:
    import json

    record = json.loads((run_dir / RUN_FILE).read_text())
    if record["data"]["phantom"]:
        return True
    return Path(str(record["data"].get("provenance", {}).get("path", ""))).is_dir()


def _from_run_dir(d: Path) -> Source:
    run = read_run(d)
    return Source(run.name, run.model_path, run.split_path, run.record, run.metrics, f"run directory {d}")


def _from_keras(path: Path, split: Optional[Path]) -> Source:
    from train.models import list_models

    if split is None:
        raise ExportError(f"{path}: a bare .keras model needs --split (the split file it was trained with)")
    stem = path.parent.name if path.stem == "model" else path.stem
    name = next((n for n in sorted(list_models(), key=len, reverse=True) if stem.startswith(n)), None)
    if name is None:
        raise ExportError(f"{path}: cannot tell the architecture from the name; call it <model>.keras, "
                          f"one of {list_models()}")
    return Source(name, path, Path(split), None, None, f"model file {path}")


def resolve_sources(paths: Sequence[Path], models: Optional[List[str]] = None,
                    split: Optional[Path] = None) -> List[Source]:
    """Each path: a run dir, a folder of run dirs, or a .keras file. `models` picks runs by name."""
    from train.models import PAPER_MODELS

    if not paths:
        paths = [reference_dir().parent if models else reference_dir()]
    found: List[Source] = []
    for p in map(Path, paths):
        if p.suffix == ".keras":
            if not p.is_file():
                raise ExportError(f"{p}: model file not found")
            found.append(_from_keras(p, split))
        elif p.is_dir():
            found.extend(_from_run_dir(d) for d in run_dirs(p))
        else:
            raise ExportError(f"{p}: not a run directory, a folder of runs or a .keras file")
    if models:
        wanted = list(PAPER_MODELS) if models == ["all"] else models
        by_name = {s.name: s for s in found}
        missing = [m for m in wanted if m not in by_name]
        if missing:
            raise ExportError(f"no run for {', '.join(missing)} under {', '.join(map(str, paths))}; train it with "
                              f"`python -m train --model {','.join(missing)} --out DIR` and pass DIR")
        found = [by_name[m] for m in wanted]
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ExportError(f"two sources for the same model ({names}); export them in separate commands")
    return found
