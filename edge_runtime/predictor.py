"""Bundle + interpreter + Grad-CAM head: one image file in, one result record out.

A file that cannot be read, or holds nothing to read (blank, flat, noise), gives a record with
`error` set and no probability; the caller's batch goes on. So does a failure of our own on one
file (`internal_error: true`): the batch answers the others and the CLI exits 3. A heatmap that
cannot be written is a warning on an answer that stands. A flattened film photo enters through
`predict_pixels`, after decoding, so it meets exactly the preprocessing a file does. Each stage
is timed so the device (and benchmarks/) can see where the time goes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from .backends import open_session
from .bundle import Bundle, BundleError, load_bundle
from .errors import ImageReadError
from .fracture_map import map_logits, sigmoid
from .gradcam import load_head
from .dicom import read_dicom
from .imageio import DecodedImage, detached, read_grayscale
from .inputs import read_image
from .labels import NEGATIVE, OUT_OF_SCOPE, OVERLAY_BANNER, OVERLAY_DISCLAIMER, POSITIVE
from .result import Result
from .overlay import save_overlay
from .preprocess import checked_input, map_on_image, merge_maps, views
from .scope import colour_refusal, load_gate

UNFAMILIAR_PHOTO = ("the model does not recognise this film as a limb radiograph of the kind it was trained on "
                    "(its out-of-scope check, which this bundle does not enforce on photos: it has no film groups): "
                    "make sure it is one before trusting the answer")
OVERLAY_SIDE = 768  # long side of the overlay (a JPEG): readable on a phone, cheap to write


class UniqueStems:
    """Output names for a batch: IMG_0001, IMG_0001_2, ... so that two inputs with the same name
    (from two folders, or .jpg beside .png) never overwrite each other's pictures."""

    def __init__(self) -> None:
        self.used: set = set()

    def take(self, path: Union[str, Path]) -> str:
        base = Path(path).stem
        stem, k = base, 1
        while stem in self.used:
            k += 1
            stem = f"{base}_{k}"
        self.used.add(stem)
        return stem


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
        self.map = self.bundle.fracture_map  # the model's own fracture map, when it has one
        self.head = load_head(self.bundle) if gradcam and self.map is None else None
        self.calibration = self.bundle.calibration  # Platt scaling; the threshold is on its scale
        self.gate = load_gate(self.bundle, self.artifact)  # the out-of-scope gate, for this artifact
        if self.gate is not None and "pooled" not in self.session.roles():
            raise BundleError(self.bundle.path, f"{self.artifact}: the out-of-scope gate needs the model's 'pooled' "
                                                "output, which this model file does not give")

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
        """P(fractured) of one preprocessed view from one inference (no averaging over views)."""
        out = self.infer(x)
        if self.map is not None:
            return self._pooled(map_logits(out["map"]))
        return float(out["prob"].reshape(-1)[0])

    def _pooled(self, logits: np.ndarray) -> float:
        """A fracture map's answer: P(fractured) of its (h, w) cell logits, pooled as the manifest says."""
        return float(sigmoid(self.map.pooling.pool(logits)))

    def heatmap(self, outputs: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
        """One view's heatmap from its raw outputs: a fracture map's P(fracture) per cell, or
        Grad-CAM scaled to its peak; None without either."""
        if self.map is not None:
            return sigmoid(map_logits(outputs["map"])).astype(np.float32)
        if self.head is None:
            return None
        return self.head.cam(outputs["features"], outputs.get("hidden"))[1]

    @property
    def has_heatmap(self) -> bool:
        """Whether answers come with a map: the model's own fracture map, or Grad-CAM."""
        return self.map is not None or self.head is not None

    def map_answer(self, x: np.ndarray) -> Tuple[float, np.ndarray, Optional[np.ndarray]]:
        """(probability, merged map of cell logits (h, w), mean pooled features or None) of a
        fracture-map model: each view's map turned back, the logits averaged, then pooled
        (edge_runtime/fracture_map.py)."""
        outs = [self.infer(v) for v in views(x, self.spec)]
        logits = merge_maps(np.stack([map_logits(o["map"]) for o in outs]), self.spec)
        pooled = _mean_pooled(outs)
        return self._pooled(logits), logits, pooled

    def calibrated(self, p: float) -> float:
        """The probability people see and the threshold is on: Platt-scaled where the bundle says."""
        return self.calibration.apply(p) if self.calibration is not None else p

    def answer(self, x: np.ndarray, timings: Optional[Dict[str, float]] = None,
               calibrated: bool = True) -> Tuple[float, Optional[np.ndarray]]:
        """(probability, raw map or None) for one preprocessed image (size, size, 1). A fracture-map
        model: the pooled map, and the map itself as P(fracture) per cell. Otherwise: the mean
        over the spec's views, and their Grad-CAM maps, each turned back before averaging.
        `calibrated=False`: the model's own probability (export compares it with the float model's)."""
        p, raw, _ = self.assess(x, timings)
        return (self.calibrated(p) if calibrated else p), raw

    def assess(self, x: np.ndarray, timings: Optional[Dict[str, float]] = None
               ) -> Tuple[float, Optional[np.ndarray], Optional[np.ndarray]]:
        """(uncalibrated probability, raw map or None, pooled features or None): what `answer`
        gives, and the features the out-of-scope gate measures, from the same inference."""
        t0 = time.perf_counter()
        if self.map is not None:
            p, logits, pooled = self.map_answer(x)
            if timings is not None:
                timings["inference"] = _ms(t0)
            t0 = time.perf_counter()
            heat = sigmoid(logits).astype(np.float32)
            if timings is not None:
                timings["heatmap"] = _ms(t0)
            return p, heat, pooled
        outs = [self.infer(v) for v in views(x, self.spec)]
        p = float(np.mean([float(o["prob"].reshape(-1)[0]) for o in outs]))
        pooled = _mean_pooled(outs)
        if timings is not None:
            timings["inference"] = _ms(t0)
        if self.head is None:
            return p, None, pooled
        t0 = time.perf_counter()
        raw = merge_maps(np.stack([self.head.cam(o["features"], o.get("hidden"))[0] for o in outs]), self.spec)
        if timings is not None:
            timings["gradcam"] = _ms(t0)
        return p, raw, pooled

    def predict_file(self, path: Union[str, Path], heatmap_path: Optional[Path] = None) -> Result:
        path = Path(path)
        t0 = time.perf_counter()
        try:
            decoded = read_image(path, self.spec)
        except ImageReadError as exc:
            rec = self._header(path)
            rec.error = exc.reason
            return rec
        decode_ms = _ms(t0)

        def display() -> np.ndarray:
            # The model's decode is reduced to about its input size; a readable overlay needs more, and
            # decoding bigger for everyone would change what the model sees. Only with --heatmap;
            # if the bigger decode is refused (its memory bound) the model's pixels are drawn.
            if max(decoded.pixels.shape) >= OVERLAY_SIDE:
                return decoded.pixels
            try:
                if decoded.source_mode.startswith("DICOM"):
                    return read_dicom(path, draft_size=(OVERLAY_SIDE, OVERLAY_SIDE)).pixels
                return read_grayscale(path, draft_size=(OVERLAY_SIDE, OVERLAY_SIDE)).pixels
            except ImageReadError:
                return decoded.pixels

        rec = self.predict_pixels(decoded, path, heatmap_path, display, t_start=t0)
        if rec.timings_ms is not None:
            rec.timings_ms = {"decode": decode_ms, **rec.timings_ms}
        return rec

    def predict_pixels(self, decoded: DecodedImage, name: Union[str, Path], heatmap_path: Optional[Path] = None,
                       display: Optional[Callable[[], np.ndarray]] = None, t_start: Optional[float] = None,
                       gate: bool = True, film: bool = False) -> Result:
        """One decoded image (a file's pixels, or a flattened film: `film=True`) -> its result
        record. The out-of-scope gate refuses a film only when the bundle's gate was fitted on
        photographed films (scope.py); otherwise, and with `gate=False` (the self-test's drawn
        images), its verdict is recorded with `enforced: false`."""
        rec = self._header(name)
        t_all = t_start if t_start is not None else time.perf_counter()
        timings: Dict[str, float] = {}
        rec.source = {"mode": decoded.source_mode, "width": decoded.source_size[0], "height": decoded.source_size[1]}
        rec.warnings = list(decoded.warnings)
        enforce = gate and self.gate is not None and (not film or self.gate.covers_film)
        refused = colour_refusal(decoded.colour, self.gate.colour_limit) if enforce else None
        if refused:  # a colour picture: refused before the model runs
            return self._refused(rec, refused, timings, t_all)
        t0 = time.perf_counter()
        # a file's own size is checked (not a flattened film's, which the film path bounds, nor the
        # self-test's drawn images)
        x, problem, _ = checked_input(decoded.pixels, self.spec, file=gate and not film)
        if problem:
            rec.source = None
            rec.error = problem
            return rec
        timings["preprocess"] = _ms(t0)
        p_model, raw, pooled = self.assess(x, timings)
        if self.gate is not None:
            rec.scope = self.gate.check(pooled, decoded.colour, film)
            if enforce and not rec.scope["in_scope"]:
                return self._refused(rec, rec.scope, timings, t_all)
            if not enforce:
                rec.scope["enforced"] = False
                if not rec.scope["in_scope"]:  # said, though not enforced on photos: the reader should look twice
                    rec.warnings.append(UNFAMILIAR_PHOTO)
        p = self.calibrated(p_model)
        rec.probability = round(p, 6)
        if self.calibration is not None:
            rec.probability_model = round(p_model, 6)
        rec.decision = POSITIVE if p >= self.threshold else NEGATIVE
        if self.spec.n_views > 1:
            rec.views = self.spec.n_views
        if raw is not None:
            heat = raw if self.map is not None else relative(raw)
            if heatmap_path is not None:
                t0 = time.perf_counter()
                try:
                    base = display() if display is not None else decoded.pixels
                    rec.heatmap = str(save_overlay(heatmap_path, base, self._on_image(heat, decoded.pixels.shape),
                                                      max_side=OVERLAY_SIDE, probability=p, threshold=self.threshold,
                                                      absolute=self.map is not None, footer=OVERLAY_DISCLAIMER,
                                                      banner=OVERLAY_BANNER if self.bundle.demonstration_only
                                                      else None))
                except (OSError, ImageReadError) as exc:  # a full disk, or the file changed under us
                    rec.warnings.append(f"heatmap not written ({getattr(exc, 'reason', None) or exc})")
                    if isinstance(exc, OSError) and exc.errno:
                        rec.heatmap_errno = exc.errno  # the service retries a full disk later
                timings["overlay"] = _ms(t0)
        elif heatmap_path is not None:
            rec.warnings.append("this bundle has no fracture map or Grad-CAM head: no heatmap")
        timings["total"] = _ms(t_all)
        rec.timings_ms = timings
        return rec

    @staticmethod
    def _refused(rec: Result, scope: Dict, timings: Dict[str, float], t_all: float) -> Result:
        """Outside what the model reads: no probability, no heatmap, the reason in `scope`."""
        rec.scope, rec.decision = scope, OUT_OF_SCOPE
        timings["total"] = _ms(t_all)
        rec.timings_ms = timings
        return rec

    def _on_image(self, heat: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
        """The heatmap over the image itself: cropped to the unpadded part when letterboxed."""
        if self.spec.resize == "stretch":
            return heat  # the overlay upsamples it to the image itself
        return map_on_image(heat, shape, self.spec)

    def _header(self, name: Union[str, Path]) -> Result:
        return Result(file=str(name), model=self.bundle.model_name, backend=self.backend, artifact=self.artifact,
                      threshold=self.threshold)

    def predict_files(self, paths: Iterable[Union[str, Path]],
                      heatmap_dir: Optional[Path] = None) -> Iterator[Result]:
        stems = UniqueStems()
        for p in paths:
            target = Path(heatmap_dir) / f"{stems.take(p)}_heatmap.jpg" if heatmap_dir is not None else None
            yield self.predict_file_safely(p, target)

    def predict_file_safely(self, path: Union[str, Path], heatmap_path: Optional[Path] = None) -> Result:
        """predict_file, with any failure of ours turned into that file's record. The record is
        made after the except block is left: the exception's traceback holds the frames of the
        failed work, and through them whatever it allocated, so past the memory ceiling
        (edge_runtime/memlimit.py) a record made inside the handler would fail again and end the batch."""
        out_of_memory, failure = False, None
        try:
            return self.predict_file(path, heatmap_path)
        except MemoryError:
            out_of_memory = True  # nothing allocated, nothing of the failed work kept
        except Exception as exc:  # noqa: BLE001 - one file must never end the batch
            failure = detached(exc)
        if out_of_memory:  # past the process's memory ceiling: a refusal, not a crash
            rec = self._header(path)
            rec.error = ("out of memory while reading this file: it needs more memory than this device allows "
                         "one image (--memory-mb)")
            return rec
        return internal_error_record(self._header(path), failure)


def _mean_pooled(outs) -> Optional[np.ndarray]:
    """The out-of-scope gate's features of one image: its views' pooled outputs averaged (None
    for a model without them)."""
    return np.mean([o["pooled"].reshape(-1) for o in outs], axis=0) if "pooled" in outs[0] else None


def relative(raw: np.ndarray) -> np.ndarray:
    """A Grad-CAM map scaled to its own peak (Grad-CAM has no absolute scale); all zero if blank.
    A fracture map needs no scaling: each cell already is P(fracture)."""
    peak = float(raw.max())
    return raw / peak if peak > 0 else np.zeros_like(raw)


def internal_error_record(rec: Result, exc: BaseException) -> Result:
    """Only the exception's type: its text may quote a file's content (a DICOM tag value)."""
    rec.error = f"internal error ({type(exc).__name__}) on this file; please report it"
    rec.internal_error, rec.warnings = True, []
    return rec
