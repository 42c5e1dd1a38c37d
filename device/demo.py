"""`python -m device demo`: what the product does, in seconds, on samples shipped in the package.

The samples (device/samples/, made by tests/make_samples.py) are phantoms: two radiograph files
without a fracture and one with, and a simulated photo of that fractured film on a lightbox. They
go through exactly what a clinic's files and photos go through (the default bundle, the film
path, the overlays), and the answers and overlays land in one folder whose path is printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

SAMPLES = Path(__file__).resolve().parent / "samples"
INDEX = "samples.json"


def samples(folder: Path = SAMPLES) -> Dict[str, dict]:
    """name -> what the sample is (samples.json), for the files that are there."""
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    missing = [n for n in index if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: samples missing ({', '.join(missing)})")
    return index


def describe(meta: dict) -> str:
    truth = "with a fracture" if meta["fractured"] else "without a fracture"
    kind = "photo of a phantom film on a lightbox" if "photo" in meta["kind"] else f"phantom {meta['region']} radiograph"
    return f"{kind}, {truth}"


def run(predictor, out: Path, folder: Path = SAMPLES) -> Iterator[Tuple[str, dict, object]]:
    """(name, what it is, the answer) for every sample; overlays (and the flattened film) go to `out`."""
    from .triage import triage_file, triage_photo

    out.mkdir(parents=True, exist_ok=True)
    for name, meta in samples(folder).items():
        path, stem = folder / name, Path(name).stem
        heat: Optional[Path] = out / f"{stem}_heatmap.jpg"
        if "photo" in meta["kind"]:
            rec = triage_photo(predictor, path, out, heat, stem=stem)
        else:
            rec = triage_file(predictor, path, heat)
        yield name, meta, rec
