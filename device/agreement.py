"""How often a photographed film gives the same decision as the radiograph file itself.

Each file is turned into simulated photos of film on a lightbox (device/simulate.py) with the
given faults, flattened and gated like a real photo, and predicted; the decision is compared with
the runtime's decision on the file. On real radiographs this measures what flattening costs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

from edge_runtime.predictor import Predictor

from .simulate import default_faults, photo_of_film, radiograph_from_file
from .triage import triage_photo


def film_agreement(predictor: Predictor, files: Sequence[Path], faults: Sequence[str] = ("clean", "cast", "uneven", "moire"),
                   seed: int = 0) -> Dict[str, Dict[str, object]]:
    direct = {str(f): predictor.predict_file(f) for f in files}
    out: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fault in faults:
            same, retakes, n, diffs = 0, 0, 0, []
            for i, f in enumerate(files):
                d = direct[str(f)]
                if d.get("error"):
                    continue
                photo, _ = photo_of_film(radiograph_from_file(f), default_faults(fault), seed=seed + i)
                p = Path(tmp) / f"{fault}_{i}.jpg"
                photo.save(p, quality=92)
                rec = triage_photo(predictor, p, Path(tmp))
                n += 1
                if rec.get("retake") or rec.get("error"):
                    retakes += 1
                    continue
                same += rec["decision"] == d["decision"]
                diffs.append(abs(rec["probability"] - d["probability"]))
            answered = n - retakes
            out[fault] = {"images": n, "retakes": retakes, "answered": answered,
                          "same_decision": same / answered if answered else None,
                          "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None}
    return out


def collect(paths: Sequence[Path], limit: int) -> List[Path]:
    files: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png")))
        else:
            files.append(p)
    return files[:limit] if limit else files
