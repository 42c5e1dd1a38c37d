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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from train.reference import auc, sens_spec

GRADCAM_FLOAT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Tolerances:
    max_auc_drop: float = 0.01  # |ΔAUC|, either direction
    min_agreement: float = 0.98
    max_mean_abs_diff: float = 0.02
    max_abs_diff: float = 0.15

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def classification(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, Optional[float]]:
    pred = (p >= threshold).astype(int)
    a = auc(y, p)
    return {"auc": a, "accuracy": float((pred == y).mean()) if len(y) else None, **sens_spec(y, pred)}


def _corr(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def compare(y: np.ndarray, p_float: np.ndarray, p_art: np.ndarray, threshold: float,
            cams_ref: Optional[np.ndarray] = None, cams_art: Optional[np.ndarray] = None) -> Dict[str, object]:
    """Metrics of one artifact against the float model on the same preprocessed images.

    `cams_*` are raw Grad-CAM maps (n, h, w): the reference from GradientTape, the artifact's
    from edge_runtime.gradcam."""
    ref, art = classification(y, p_float, threshold), classification(y, p_art, threshold)
    diff = np.abs(p_art - p_float)
    out: Dict[str, object] = {
        **art, "n": int(len(y)),
        "delta_auc": None if art["auc"] is None or ref["auc"] is None else art["auc"] - ref["auc"],
        "agreement": float(((p_art >= threshold) == (p_float >= threshold)).mean()),
        "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
    }
    if cams_ref is not None and cams_art is not None:
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
    d = metrics.get("delta_auc")
    if d is not None and abs(d) > tol.max_auc_drop:
        bad.append(f"|ΔAUC| {abs(d):.4f} > {tol.max_auc_drop}")
    if metrics["agreement"] < tol.min_agreement:
        bad.append(f"agreement {metrics['agreement']:.4f} < {tol.min_agreement}")
    if metrics["mean_abs_diff"] > tol.max_mean_abs_diff:
        bad.append(f"mean |Δp| {metrics['mean_abs_diff']:.4f} > {tol.max_mean_abs_diff}")
    if metrics["max_abs_diff"] > tol.max_abs_diff:
        bad.append(f"max |Δp| {metrics['max_abs_diff']:.4f} > {tol.max_abs_diff}")
    gmax = metrics.get("gradcam_max_abs_diff")
    if precision == "float32" and gmax is not None and gmax > GRADCAM_FLOAT_TOLERANCE:
        bad.append(f"Grad-CAM differs from the GradientTape reference by {gmax:.2e} > {GRADCAM_FLOAT_TOLERANCE}")
    return bad
