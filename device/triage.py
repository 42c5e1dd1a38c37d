"""One input -> one result record, for the `film` command and the service alike.

A film photo is flattened and checked first; a photo that fails the gate gets `retake: true`,
the reasons, and no probability. A file from a CR reader goes straight to the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_runtime.imageio import MAX_PIXELS
from edge_runtime.predictor import Predictor

from .film import FilmNotFound, flatten_film
from .quality import assess


def _open_photo(path: Path) -> Image.Image:
    if not path.is_file():
        raise ValueError("file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ValueError("file is empty")
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise ValueError(f"photo is {img.size[0]}x{img.size[1]} px, above the {MAX_PIXELS:,} px limit")
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not an image, or an image format Pillow cannot read") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt or truncated image ({exc})") from None


def triage_photo(predictor: Predictor, path: Path, keep_dir: Path,
                 heatmap_path: Optional[Path] = None) -> Dict[str, Any]:
    path = Path(path)
    rec: Dict[str, Any] = {"file": str(path), "mode": "film", "model": predictor.bundle.model_name,
                           "threshold": predictor.threshold}
    try:
        photo = _open_photo(path)
    except ValueError as exc:
        rec.update(error=str(exc), warnings=[])
        return rec
    try:
        flat = flatten_film(photo)
    except FilmNotFound as exc:
        rec.update(retake=True, decision="retake", quality={"ok": False, "reasons": [str(exc)], "metrics": {}},
                   warnings=[])
        return rec
    quality = assess(photo, flat)
    keep_dir.mkdir(parents=True, exist_ok=True)
    flat_path = keep_dir / f"{path.stem}_flat.png"
    Image.fromarray((flat.pixels * 255.0 + 0.5).astype(np.uint8)).save(flat_path)
    rec.update(quality=quality.to_dict(), flattened=str(flat_path), film_notes=flat.notes)
    if not quality.ok:
        rec.update(retake=True, decision="retake", warnings=[])
        return rec
    result = predictor.predict_file(flat_path, heatmap_path)
    result.update(file=str(path), mode="film", flattened=str(flat_path), quality=quality.to_dict(),
                  film_notes=flat.notes, retake=False)
    return result


def triage_file(predictor: Predictor, path: Path, heatmap_path: Optional[Path] = None) -> Dict[str, Any]:
    rec = predictor.predict_file(path, heatmap_path)
    rec["mode"] = "file"
    return rec
