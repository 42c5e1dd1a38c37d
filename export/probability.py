"""Calibrated probabilities: Platt scaling of the model's logit, fitted on validation at export.

A screening model's P(fractured) is read as a probability by people ("0.8: likely"); trained with
box losses and pooled by log-sum-exp, the map's number is a score, not a frequency. Two numbers
(P = sigmoid(a * logit + b)) fitted by logistic regression on the validation split make it one,
without changing which images are above the threshold (a > 0). The fit is measured by the
expected calibration error (ECE, 10 equal-width bins) before and after on the validation and
test splits, with bootstrap CIs by image, and drawn as a reliability diagram.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

BINS = 10
PLOT = "reliability.png"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0 - 1e-12)
    return np.log(p / (1.0 - p))


def fit_platt(p: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """{"a", "b"} from validation probabilities and labels (both classes needed)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, int)
    if len(set(y.tolist())) < 2:
        raise ValueError("calibration needs fractured and non-fractured validation images")
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit(p)[:, None], y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:
        raise ValueError(f"calibration slope {a:.3g} is not positive: the model ranks validation images backwards")
    return {"a": a, "b": b}


def apply(p: np.ndarray, cal: Dict[str, float]) -> np.ndarray:
    z = cal["a"] * logit(p) + cal["b"]
    return 1.0 / (1.0 + np.exp(-z))


def ece(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the image-weighted mean |observed rate - mean P| over equal-width bins."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    if not len(p):
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / len(p))


def ece_ci(p: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Dict[str, object]:
    """ECE with a percentile bootstrap 95% CI, resampling images."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    boots = [ece(p[i], y[i]) for i in (rng.integers(0, len(p), len(p)) for _ in range(n_boot))] if len(p) else []
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan")))
    return {"ece": ece(p, y), "ci95": [float(lo), float(hi)], "n": int(len(p))}


def summary(p_raw: np.ndarray, y: np.ndarray, cal: Dict[str, float], sources: Optional[Sequence[str]] = None,
            n_boot: int = 1000) -> Dict[str, object]:
    """ECE before and after, overall and per source (a source with one class only says so)."""
    p_cal = apply(p_raw, cal)
    out: Dict[str, object] = {"before": ece_ci(p_raw, y, n_boot), "after": ece_ci(p_cal, y, n_boot)}
    if sources is not None:
        sources = np.asarray(sources)
        out["by_source"] = {s: {"before": ece_ci(p_raw[sources == s], y[sources == s], n_boot),
                                "after": ece_ci(p_cal[sources == s], y[sources == s], n_boot),
                                "classes": sorted(int(c) for c in set(np.asarray(y)[sources == s].tolist()))}
                            for s in sorted(set(sources.tolist()))}
    return out


def plot(path: Path, p_raw: np.ndarray, y: np.ndarray, cal: Dict[str, float], title: str) -> Path:
    """The reliability diagram: observed fracture rate against mean P per bin, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    for p, name, style in ((np.asarray(p_raw, np.float64), "model's own", "o--"), (apply(p_raw, cal), "calibrated", "s-")):
        idx = np.minimum((p * BINS).astype(int), BINS - 1)
        xs, ys, ns = [], [], []
        for b in range(BINS):
            m = idx == b
            if m.any():
                xs.append(p[m].mean()), ys.append(np.asarray(y)[m].mean()), ns.append(int(m.sum()))
        ax.plot(xs, ys, style, label=f"{name} (ECE {ece(p, y):.3f})")
    ax.set_xlabel("mean P(fractured) in the bin")
    ax.set_ylabel("fraction fractured in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
