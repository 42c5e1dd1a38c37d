"""Does each artifact, run by the edge runtime, still answer like the float Keras model?

Tolerance defaults, and why:
- |ΔAUC| ≤ 0.01: a tenth of the width of the AUC's 95% CI on FracAtlas's ~600-image test split
  (≈ ±0.04), so quantization may not move the ranking by anything the evaluation could see.
- decision agreement ≥ 98%: at most 2 in 100 radiographs may change side of the threshold.
- mean |Δp| ≤ 0.02: five steps of the int8 output's resolution (1/256); a systematic shift
  larger than that moves the operating point chosen on validation.
- max |Δp| ≤ 0.15: one image may sit on a steep part of the sigmoid, but not swing from
  "clearly negative" to "clearly positive".
- Grad-CAM on a float artifact must match the GradientTape reference to 1e-3 (it is exact
  arithmetic; a larger gap is an export bug). On int8 the correlation is reported, not gated.
- A fracture map is the heatmap and the answer at once: on a float artifact each cell's
  P(fracture) must match the float model's to 1e-3; on int8 the per-image correlation of the maps
  must average at least 0.95 on real radiographs (on all images where there are none): below
  that, int8 would point a clinician somewhere the float model does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from train.reference import auc, sens_spec

GRADCAM_FLOAT_TOLERANCE = 1e-3
MAP_FLOAT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Tolerances:
    max_auc_drop: float = 0.01  # |ΔAUC|, either direction
    min_agreement: float = 0.98
    max_mean_abs_diff: float = 0.02
    max_abs_diff: float = 0.15
    min_map_correlation: float = 0.95  # fracture maps, quantized artifacts: mean per-image r on real images

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def classification(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, Optional[float]]:
    pred = (p >= threshold).astype(int)
    a = auc(y, p)
    return {"auc": a, "accuracy": float((pred == y).mean()) if len(y) else None, **sens_spec(y, pred)}


def content_cells(shape, spec, grid) -> np.ndarray:
    """(gh, gw) bool: the map cells whose centre lies on the image, not on letterbox padding (where
    both maps are low, which would inflate their correlation)."""
    from edge_runtime.preprocess import content_box

    top, left, h, w = content_box(shape, spec)
    gh, gw = grid
    cy = (np.arange(gh) + 0.5) * spec.size / gh
    cx = (np.arange(gw) + 0.5) * spec.size / gw
    return ((cy >= top) & (cy < top + h))[:, None] & ((cx >= left) & (cx < left + w))[None, :]


def _corr(a: np.ndarray, b: np.ndarray, keep: Optional[np.ndarray] = None) -> Optional[float]:
    if keep is not None and keep.sum() >= 2:
        a, b = a[keep], b[keep]
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 and b.std() == 0:
        return None  # both flat: nothing to correlate (their values are gated by |Δ| elsewhere)
    if a.std() == 0 or b.std() == 0:
        return 0.0  # one map flat and the other not: they do not agree on where, whatever the mean
    return float(np.corrcoef(a, b)[0, 1])


def _answers(y: np.ndarray, p_float: np.ndarray, p_art: np.ndarray, threshold: float) -> Dict[str, object]:
    ref, art = classification(y, p_float, threshold), classification(y, p_art, threshold)
    diff = np.abs(p_art - p_float)
    return {**art, "n": int(len(y)),
            "delta_auc": None if art["auc"] is None or ref["auc"] is None else art["auc"] - ref["auc"],
            "agreement": float(((p_art >= threshold) == (p_float >= threshold)).mean()),
            "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}


def by_source(y: np.ndarray, p: np.ndarray, threshold: float, sources: Optional[np.ndarray]) -> Optional[Dict]:
    """The float model's figures per source, when real radiographs and phantoms were mixed."""
    if sources is None or len(set(sources)) < 2:
        return None
    return {str(s): {**classification(y[sources == s], p[sources == s], threshold), "n": int((sources == s).sum())}
            for s in sorted(set(sources))}


def compare(y: np.ndarray, p_float: np.ndarray, p_art: np.ndarray, threshold: float,
            cams_ref: Optional[np.ndarray] = None, cams_art: Optional[np.ndarray] = None,
            kind: str = "gradcam", real: Optional[np.ndarray] = None,
            sources: Optional[np.ndarray] = None, cells: Optional[np.ndarray] = None) -> Dict[str, object]:
    """Metrics of one artifact against the float model on the same preprocessed images.

    `cams_*` are maps (n, h, w): with kind "gradcam" raw Grad-CAM maps (the reference from
    GradientTape, the artifact's from edge_runtime.gradcam); with kind "map" fracture maps (each
    cell's P(fracture), float model against artifact), whose correlation is also given over the
    `real` images (a bool mask) alone. With `sources` (one name per image) naming more than one,
    every figure is also given per source, and the gate applies to each: a pooled AUC over real
    fractures and phantom negatives would reward "real ⇒ fractured", and phantoms outnumbering
    real images could hide int8 drift on the real ones. `cells` (n, h, w) bool limits the maps'
    correlation to each image's own cells (content_cells)."""
    out: Dict[str, object] = _answers(y, p_float, p_art, threshold)
    if sources is not None and len(set(sources)) > 1:
        out["by_source"] = {str(s): _answers(y[sources == s], p_float[sources == s], p_art[sources == s], threshold)
                            for s in sorted(set(sources))}
    if cams_ref is not None and cams_art is not None and kind == "map":
        keep = [None] * len(cams_ref) if cells is None else cells
        corrs = np.array([np.nan if c is None else c for c in (_corr(r, a, k) for r, a, k in zip(cams_ref, cams_art, keep))])
        ok = ~np.isnan(corrs)
        out["map_correlation_mean"] = float(corrs[ok].mean()) if ok.any() else None
        out["map_correlation_min"] = float(corrs[ok].min()) if ok.any() else None
        if real is not None and (ok & real).any():
            out["map_correlation_real_mean"] = float(corrs[ok & real].mean())
            out["map_correlation_real_n"] = int((ok & real).sum())
        out["map_max_abs_diff"] = float(np.abs(np.asarray(cams_ref) - np.asarray(cams_art)).max())
    elif cams_ref is not None and cams_art is not None:
        corrs = [c for c in (_corr(r, a) for r, a in zip(cams_ref, cams_art)) if c is not None]
        out["gradcam_correlation_mean"] = float(np.mean(corrs)) if corrs else None
        out["gradcam_correlation_min"] = float(np.min(corrs)) if corrs else None
        # Relative to each reference map's peak (what the overlay shows); blank maps are skipped.
        rel = [np.abs(a - r).max() / r.max() for r, a in zip(cams_ref, cams_art) if r.max() > 0]
        out["gradcam_max_abs_diff"] = float(max(rel)) if rel else None
    return out


def failures(metrics: Dict[str, object], tol: Tolerances, precision: str) -> List[str]:
    """Each failed check as 'what: measured vs limit' (empty when the artifact passes)."""
    bad = []
    groups = metrics.get("by_source") or {"": metrics}
    for source, g in groups.items():  # per source when sources were mixed: each must pass on its own
        on = f" on {source}" if source else ""
        d = g.get("delta_auc")
        if d is not None and abs(d) > tol.max_auc_drop:
            bad.append(f"|ΔAUC|{on} {abs(d):.4f} > {tol.max_auc_drop}")
        if g["agreement"] < tol.min_agreement:
            bad.append(f"agreement{on} {g['agreement']:.4f} < {tol.min_agreement}")
        if g["mean_abs_diff"] > tol.max_mean_abs_diff:
            bad.append(f"mean |Δp|{on} {g['mean_abs_diff']:.4f} > {tol.max_mean_abs_diff}")
        if g["max_abs_diff"] > tol.max_abs_diff:
            bad.append(f"max |Δp|{on} {g['max_abs_diff']:.4f} > {tol.max_abs_diff}")
    gmax = metrics.get("gradcam_max_abs_diff")
    if precision == "float32" and gmax is not None and gmax > GRADCAM_FLOAT_TOLERANCE:
        bad.append(f"Grad-CAM differs from the GradientTape reference by {gmax:.2e} > {GRADCAM_FLOAT_TOLERANCE}")
    mmax = metrics.get("map_max_abs_diff")
    if precision == "float32" and mmax is not None and mmax > MAP_FLOAT_TOLERANCE:
        bad.append(f"fracture map differs from the float model's by {mmax:.2e} > {MAP_FLOAT_TOLERANCE}")
    r = metrics.get("map_correlation_real_mean", metrics.get("map_correlation_mean"))
    if precision != "float32" and r is not None and r < tol.min_map_correlation:
        where = "real radiographs" if "map_correlation_real_mean" in metrics else "the test images"
        bad.append(f"fracture map correlation with float on {where} {r:.4f} < {tol.min_map_correlation}")
    return bad
