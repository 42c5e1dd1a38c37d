"""A bundle's self-test: fixed images, and the probabilities export recorded for them.

A bundle that passes its checksums can still be wrong on a device: an interpreter build whose
kernels differ, a numpy or Pillow that resizes differently. Before a clinic switches to a new
bundle (`python -m device update`), the runtime answers the same few images export answered and
compares. The images are drawn from arithmetic alone (no random generator, no files), so every
machine makes exactly the same pixels: a bone with a displaced break, an intact bone, and two
of each at other angles and exposures.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

GENERATOR = "edge_runtime.selftest v1"
N_IMAGES = 6
# Float kernels differ across CPUs in the last bits; int8 ones may round one step apart.
TOLERANCE = {"float32": 1e-3, "float16": 5e-3, "int8": 0.02}
# The gate's score (a distance over its threshold, ~1 at the boundary; compared relative to itself
# above 1) through the same kernels: an int8 step in a few pooled features moves it by thousandths.
SCOPE_TOLERANCE = {"float32": 2e-3, "float16": 0.01, "int8": 0.03}


def image(i: int, size: int = 320) -> np.ndarray:
    """The i-th self-test radiograph, (size, size) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = (i * 0.61) % 1.0 - 0.5
    broken = i % 2 == 0
    exposure = 0.8 + 0.1 * (i % 3)
    u = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)  # across the bone
    v = -(xx - 0.5) * np.sin(angle) + (yy - 0.5) * np.cos(angle)  # along it
    if broken:
        u = u + np.where(v > 0.05, 0.035, 0.0)  # the distal fragment displaced
    soft = 0.25 + 0.15 * np.exp(-(u / 0.3) ** 2)
    cortex = np.exp(-((np.abs(u) - 0.06) / 0.012) ** 2)
    medulla = 0.35 * np.exp(-(u / 0.045) ** 2)
    img = soft + 0.5 * cortex + medulla
    if broken:
        img = img * (1.0 - 0.6 * np.exp(-((v - 0.05) / 0.008) ** 2) * (np.abs(u) < 0.09))
    img = img * exposure + 0.02 * np.sin(37.0 * xx + 23.0 * yy + i)  # a deterministic grain
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def answers(predictor, film: bool = False) -> Tuple[List[float], Optional[List[float]], Optional[List[float]]]:
    """The predictor's probabilities on the self-test images, through THE preprocessing, the
    out-of-scope gate's scores on them (None without a gate) and the logit along its outlier
    direction (None without one: the score is the larger of two ratios, so it may not show the
    direction's arithmetic); `film`: scored as flattened film photos are (the film groups too). The
    drawn images are outside what a real model reads, so the gate's verdict is measured, not
    enforced: the score still exercises the gate's arithmetic (features, means, precisions,
    thresholds, direction) on this device."""
    from .imageio import DecodedImage

    probs, scores, outliers = [], [], []
    for i in range(N_IMAGES):
        img = image(i)
        rec = predictor.predict_pixels(DecodedImage(img, "selftest", (img.shape[1], img.shape[0])), f"selftest_{i}",
                                       gate=False, film=film)
        if rec.error:
            raise RuntimeError(f"self-test image {i} was refused: {rec.error}")
        probs.append(float(rec.probability))
        scores.append(None if not rec.scope or "score" not in rec.scope else float(rec.scope["score"]))
        outliers.append(None if not rec.scope or "outlier_logit" not in rec.scope else float(rec.scope["outlier_logit"]))
    return (probs, (scores if all(s is not None for s in scores) else None),
            (outliers if all(o is not None for o in outliers) else None))


def scope_difference(got: List[float], want: List[float]) -> float:
    """The largest difference between two lists of gate scores (or logits), relative to the value
    where it is above 1: the drawn images may lie far outside, where a distance of 20 moves with
    its features."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(g - w) / np.maximum(1.0, np.abs(w))))


def record(bundle, artifacts: Dict[str, Any]) -> Dict[str, Any]:
    """What export writes into the manifest: per artifact, its answers on the self-test images (and
    its gate's scores, for files and, where it has film groups, for films). `artifacts` maps
    artifact key -> an open Predictor."""
    out: Dict[str, Any] = {"generator": GENERATOR, "n": N_IMAGES, "tolerance": dict(TOLERANCE), "probabilities": {}}
    for key, pred in artifacts.items():
        probs, scores, outliers = answers(pred)
        out["probabilities"][key] = [round(p, 7) for p in probs]
        if scores is not None:
            out.setdefault("scope_scores", {})[key] = scores
            out["scope_tolerance"] = dict(SCOPE_TOLERANCE)
            if outliers is not None:
                out.setdefault("scope_outlier_logits", {})[key] = outliers
            if pred.gate.covers_film:
                out.setdefault("scope_scores_film", {})[key] = answers(pred, film=True)[1]
    return out


def run(bundle, backend: str = "auto", artifact: Optional[str] = None) -> Dict[str, Any]:
    """Answer the self-test images with the artifact this device would use and compare with export's
    probabilities (and the gate's scores, where recorded: bundles made before they were are
    checked on probabilities alone). {"passed", "artifact", "backend", "max_abs_diff",
    "tolerance", ...}; passed is None if the bundle has none."""
    from .predictor import Predictor

    recorded = bundle.manifest.get("self_test")
    pred = Predictor(bundle, backend, artifact, threads=1, gradcam=False)
    if not recorded or pred.artifact not in recorded.get("probabilities", {}):
        return {"passed": None, "artifact": pred.artifact, "backend": pred.backend,
                "reason": "the bundle records no self-test answers for this artifact"}
    if recorded.get("generator") != GENERATOR:
        return {"passed": False, "artifact": pred.artifact, "backend": pred.backend,
                "reason": f"self-test made by {recorded.get('generator')!r}, this runtime has {GENERATOR!r}"}
    expected = np.asarray(recorded["probabilities"][pred.artifact], dtype=np.float64)
    probs, scores, outliers = answers(pred)
    got = np.asarray(probs, dtype=np.float64)
    precision = bundle.artifact(pred.artifact).precision
    tol = float(TOLERANCE.get(precision, 1e-3))
    worst = float(np.max(np.abs(got - expected))) if expected.size == got.size else float("inf")
    out = {"passed": bool(worst <= tol), "artifact": pred.artifact, "backend": pred.backend,
           "max_abs_diff": worst, "tolerance": tol, "expected": expected.tolist(), "got": got.tolist()}
    s_tol = float(SCOPE_TOLERANCE.get(precision, 2e-3))
    for section, film in (("scope_scores", False), ("scope_scores_film", True)):
        want = (recorded.get(section) or {}).get(pred.artifact)  # the manifest checked its shape
        if want is None:
            continue
        mine = scores if not film else answers(pred, film=True)[1]
        diff = scope_difference(mine, want) if mine is not None and len(mine) == len(want) else float("inf")
        key = "scope_max_diff" if not film else "scope_film_max_diff"
        out.update({key: diff, "scope_tolerance": s_tol})
        if not diff <= s_tol and out["passed"]:
            out.update(passed=False, reason="the out-of-scope gate's scores "
                       f"{'on films ' if film else ''}differ from those export recorded")
    want = (recorded.get("scope_outlier_logits") or {}).get(pred.artifact)
    if want is not None:  # the direction's logits, compared as the scores are (relative where above 1)
        diff = scope_difference(outliers, want) if outliers is not None and len(outliers) == len(want) else float("inf")
        out.update({"scope_outlier_max_diff": diff, "scope_tolerance": s_tol})
        if not diff <= s_tol and out["passed"]:
            out.update(passed=False, reason="the out-of-scope gate's outlier direction differs from what export recorded")
    return out
