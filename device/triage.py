"""One input -> one result record, for the `film` command and the service alike.

A film photo is decoded reduced, checked, flattened and gated; a photo that fails gets
`retake: true`, the reasons (text and code) and no probability. One that passes is predicted
from the flattened array itself, through the same preprocessing a file gets. A file from a CR
reader goes straight to the runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from PIL import Image

from edge_runtime.errors import ImageReadError
from edge_runtime.imageio import DecodedImage
from edge_runtime.labels import RETAKE
from edge_runtime.overlay import save_image
from edge_runtime.predictor import Predictor
from edge_runtime.preprocess import min_filled_side, window
from edge_runtime.result import Result

from . import quality
from .filenames import FLAT_SUFFIX
from .film import FilmNotFound, Flattened, flatten_film
from .film_finder import working_copy
from .photo import GRAYSCALE_MODES, chroma_spread, open_photo



@dataclass
class Triaged(Result):
    """A Result as the film path and the service see it: how the input was read, and for a photo
    of film the gate's verdict (a refused photo: decision RETAKE, reasons, no probability)."""

    mode: Optional[str] = None  # "film" (a photo of film on a lightbox) or "file" (a radiograph file)
    retake: Optional[bool] = None
    quality: Optional[Dict[str, Any]] = None  # Quality.to_dict(): ok, reasons, codes, metrics
    film: Optional[Dict[str, Any]] = None  # corners, notes, short_side_px
    flattened: Optional[str] = None  # the flattened film kept (--keep, the service's store)


def display_image(flat: Flattened) -> np.ndarray:
    """The flattened film as a viewer would show it (auto-window); for people, not the model."""
    return window(flat.pixels, (0.5, 99.5))


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


def read_film(photo, minimum=None, flat_least=None) -> Dict[str, Any]:
    """{"quality": Quality, "flat": Flattened or None} for a decoded Photo; `minimum`: the film's
    least size for the model that will read it (quality.film_minimum); `flat_least`: the least
    pixels its flattened copy must hold (a file's bound: preprocess.min_filled_side)."""
    small, scale = working_copy(photo.image)
    gray_file = photo.source_mode in GRAYSCALE_MODES or chroma_spread(small) < quality.GRAY_CHROMA
    early = quality.before_finding(photo.original_size, small, gray_file)
    if early is not None:
        return {"quality": quality.Quality(False, [early]), "flat": None}
    try:
        flat = flatten_film(photo.image, original_size=photo.original_size, small=(small, scale))
    except FilmNotFound:
        return {"quality": quality.Quality(False, [quality.not_found(small)]), "flat": None}
    return {"quality": quality.assess(flat, minimum, flat_least), "flat": flat}


def triage_photo(predictor: Predictor, path: Path, keep_dir: Optional[Path],
                 heatmap_path: Optional[Path] = None, stem: Optional[str] = None) -> Triaged:
    """`stem` names the kept flattened image (default: the photo's own name)."""
    path = Path(path)
    rec = Triaged(file=str(path), mode="film", model=predictor.bundle.model_name, threshold=predictor.threshold)
    t_all = t0 = time.perf_counter()
    try:
        photo = open_photo(path)
    except ImageReadError as exc:
        rec.error = exc.reason
        return rec
    timings = {"decode": _ms(t0)}
    t0 = time.perf_counter()
    got = read_film(photo, quality.film_minimum(predictor.spec.size, predictor.spec.resize),
                    min_filled_side(predictor.spec)[1])
    timings["film"] = _ms(t0)  # checks, finding, flattening and the gate
    q, flat = got["quality"], got["flat"]
    rec.quality = q.to_dict()
    if flat is not None:
        rec.film = {"corners": np.round(flat.corners, 1).tolist(), "notes": flat.notes,
                    "short_side_px": round(flat.film_short_side_px, 1)}
        if keep_dir is not None:
            t0 = time.perf_counter()
            keep_dir.mkdir(parents=True, exist_ok=True)
            flat_path = keep_dir / f"{stem or path.stem}{FLAT_SUFFIX}"
            save_image(Image.fromarray((display_image(flat) * 255.0 + 0.5).astype(np.uint8)), flat_path, "PNG",
                       compress_level=1)  # a link left at that name is replaced, not followed
            rec.flattened = str(flat_path)
            timings["keep"] = _ms(t0)
    if not q.ok:
        timings["total"] = _ms(t_all)
        rec.retake, rec.decision, rec.timings_ms = True, RETAKE, timings
        return rec
    decoded = DecodedImage(flat.pixels, f"film photo ({photo.source_mode})", photo.original_size, [])
    # The out-of-scope gate measures the flattened film against its film groups too (photographed
    # training radiographs); a bundle without them records its verdict and does not refuse (scope.py).
    result = predictor.predict_pixels(decoded, path, heatmap_path, lambda: display_image(flat), film=True)
    if result.error:  # the film itself holds nothing to read (blank, flat)
        blank = quality.reason("blank_film", why=result.error)
        rec.quality = quality.Quality(False, [blank], q.metrics).to_dict()
        timings["total"] = _ms(t_all)
        rec.retake, rec.decision, rec.timings_ms = True, RETAKE, timings
        return rec
    out = result.as_(Triaged, mode="film", retake=False, quality=rec.quality, film=rec.film, flattened=rec.flattened)
    if result.timings_ms is not None:
        model_ms = {k: v for k, v in result.timings_ms.items() if k != "total"}
        out.timings_ms = {**timings, **model_ms, "total": _ms(t_all)}
    return out


def triage_file(predictor: Predictor, path: Path, heatmap_path: Optional[Path] = None) -> Triaged:
    return predictor.predict_file(path, heatmap_path).as_(Triaged, mode="file")
