"""Bundle + interpreter + Grad-CAM head: one image file in, one result record out.

A file that cannot be read gives a record with `error` set and no probability; the caller's batch
goes on. Each stage is timed so the device (and benchmarks/) can see where the time goes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Union

import numpy as np

from .backends import open_session
from .bundle import Bundle, load_bundle
from .errors import ImageReadError
from .gradcam import load_head
from .imageio import read_grayscale
from .inputs import read_image
from .overlay import save_overlay
from .preprocess import preprocess

POSITIVE, NEGATIVE = "fractured", "non-fractured"
OVERLAY_SIDE = 768  # long side of the overlay PNG: readable on a phone, cheap to write


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class Predictor:
    """Load once, predict many. `gradcam=False` skips the heatmap (and its cost)."""

    def __init__(self, bundle: Union[Bundle, str, Path, None] = None, backend: str = "auto",
                 artifact: Optional[str] = None, threads: Optional[int] = None, gradcam: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.spec = self.bundle.spec
        self.threshold = self.bundle.threshold
        self.session = open_session(self.bundle, backend, artifact, threads)
        self.head = load_head(self.bundle) if gradcam else None

    @property
    def backend(self) -> str:
        return self.session.backend

    @property
    def artifact(self) -> str:
        return self.session.artifact.key

    def infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw outputs by role for one preprocessed image (size, size, 1)."""
        return self.session.run(x[None] if x.ndim == 3 else x)

    def probability(self, x: np.ndarray) -> float:
        return float(self.infer(x)["prob"].reshape(-1)[0])

    def heatmap(self, outputs: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
        if self.head is None:
            return None
        return self.head.cam(outputs["features"], outputs.get("hidden"))[1]

    def predict_file(self, path: Union[str, Path], heatmap_path: Optional[Path] = None) -> Dict[str, Any]:
        path = Path(path)
        rec: Dict[str, Any] = {"file": str(path), "model": self.bundle.model_name, "backend": self.backend,
                               "artifact": self.artifact, "threshold": self.threshold}
        t_all = time.perf_counter()
        timings: Dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            decoded = read_image(path, self.spec)
            timings["decode"] = _ms(t0)
        except ImageReadError as exc:
            rec.update(error=exc.reason, warnings=[])
            return rec
        t0 = time.perf_counter()
        x = preprocess(decoded.pixels, self.spec)
        timings["preprocess"] = _ms(t0)
        t0 = time.perf_counter()
        out = self.infer(x)
        timings["inference"] = _ms(t0)
        p = float(out["prob"].reshape(-1)[0])
        rec.update(probability=round(p, 6), decision=POSITIVE if p >= self.threshold else NEGATIVE,
                   source={"mode": decoded.source_mode, "width": decoded.source_size[0],
                           "height": decoded.source_size[1]},
                   warnings=list(decoded.warnings))
        if self.head is not None:
            t0 = time.perf_counter()
            heat = self.heatmap(out)
            timings["gradcam"] = _ms(t0)
            if heatmap_path is not None:
                t0 = time.perf_counter()
                base = decoded.pixels
                # The model's decode is drafted down to ~128 px; a readable overlay needs more, and
                # decoding bigger for everyone would change what the model sees. Only with --heatmap.
                if max(base.shape) < OVERLAY_SIDE and not decoded.source_mode.startswith("DICOM"):
                    base = read_grayscale(path, draft_size=(OVERLAY_SIDE, OVERLAY_SIDE)).pixels
                rec["heatmap"] = str(save_overlay(heatmap_path, base, heat, max_side=OVERLAY_SIDE))
                timings["overlay"] = _ms(t0)
        elif heatmap_path is not None:
            rec["warnings"].append("this bundle has no Grad-CAM head: no heatmap")
        timings["total"] = _ms(t_all)
        rec["timings_ms"] = timings
        return rec

    def predict_files(self, paths: Iterable[Union[str, Path]],
                      heatmap_dir: Optional[Path] = None) -> Iterator[Dict[str, Any]]:
        used = set()
        for p in paths:
            target = None
            if heatmap_dir is not None:
                stem, k = Path(p).stem, 1
                while f"{stem}_gradcam.png" in used:
                    k += 1
                    stem = f"{Path(p).stem}_{k}"
                used.add(f"{stem}_gradcam.png")
                target = Path(heatmap_dir) / f"{stem}_gradcam.png"
            yield self.predict_file(p, target)
