"""Honest evaluation numbers: paper table, confusion matrix, AUC with bootstrap CI, threshold rule.

scikit-learn does the arithmetic; this module decides what is reported and how the threshold is
chosen (on the validation split only, never on test).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from fracdata.data import CLASS_NAMES


def confusion(y_true, y_pred) -> Dict[str, int]:
    from sklearn.metrics import confusion_matrix

    tn, fp, fn, tp = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def sens_spec(y_true, y_pred) -> Dict[str, Optional[float]]:
    c = confusion(y_true, y_pred)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {"sensitivity": c["tp"] / pos if pos else None, "specificity": c["tn"] / neg if neg else None}


def parse_rule(rule: str):
    """'youden' or 'sensitivity=0.90' (highest threshold reaching that sensitivity on validation)."""
    if rule == "youden":
        return ("youden", None)
    if rule.startswith("sensitivity="):
        target = float(rule.split("=", 1)[1])
        if not 0 < target <= 1:
            raise ValueError(f"sensitivity target must be in (0, 1], got {target}")
        return ("sensitivity", target)
    raise ValueError(f"unknown threshold rule {rule!r}; use 'youden' or 'sensitivity=0.9'")


def choose_threshold(y_true, p, rule: str = "youden") -> float:
    """Threshold on predicted probability, from the validation split.

    youden: maximise sensitivity + specificity - 1 (ties: the higher threshold).
    sensitivity=X: the highest threshold whose sensitivity is at least X.
    """
    from sklearn.metrics import roc_curve

    kind, target = parse_rule(rule)
    y_true, p = np.asarray(y_true), np.asarray(p, dtype=np.float64)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, p)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is +inf
    if kind == "youden":
        j = tpr - fpr
        # thresholds decrease: first = highest. Ties within rounding (2/3 vs 1 - 1/3) are ties.
        best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    else:
        best = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    return float(thr[best])


def auc(y_true, p) -> Optional[float]:
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, p))


def bootstrap_auc_ci(y_true, p, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Dict[str, object]:
    """Percentile bootstrap over images; resamples that lose a class are redrawn."""
    from sklearn.metrics import roc_auc_score

    y_true, p = np.asarray(y_true), np.asarray(p)
    point = auc(y_true, p)
    if point is None:
        return {"auc": None, "ci_low": None, "ci_high": None, "n_boot": 0}
    rng = np.random.default_rng(seed)
    n, stats = len(y_true), []
    while len(stats) < n_boot:
        idx = rng.integers(0, n, n)
        if y_true[idx].min() == y_true[idx].max():
            continue
        stats.append(roc_auc_score(y_true[idx], p[idx]))
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {"auc": point, "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot, "level": level,
            "method": "percentile bootstrap over images"}


def clustered_auc_ci(p_pos, owner_pos, p_neg, owner_neg, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Dict[str, object]:
    """AUC of positives above negatives, with a percentile bootstrap over their owners (e.g. the
    radiograph that gave a fracture and the crops or the rest of it): an owner's values are drawn
    together, as they are not independent."""
    from sklearn.metrics import roc_auc_score

    p_pos, p_neg = np.asarray(p_pos, np.float64), np.asarray(p_neg, np.float64)
    owner_pos, owner_neg = np.asarray(owner_pos), np.asarray(owner_neg)
    point = auc(np.r_[np.ones(len(p_pos)), np.zeros(len(p_neg))], np.r_[p_pos, p_neg])
    if point is None:
        return {"auc": None, "ci_low": None, "ci_high": None, "n_boot": 0}
    owners = np.unique(np.r_[owner_pos, owner_neg])
    by_pos = {o: p_pos[owner_pos == o] for o in owners}
    by_neg = {o: p_neg[owner_neg == o] for o in owners}
    rng = np.random.default_rng(seed)
    stats = []
    while len(stats) < n_boot:
        drawn = owners[rng.integers(0, len(owners), len(owners))]
        pos = np.concatenate([by_pos[o] for o in drawn])
        neg = np.concatenate([by_neg[o] for o in drawn])
        if not len(pos) or not len(neg):
            continue
        stats.append(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {"auc": point, "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot, "level": level,
            "method": "percentile bootstrap over owners (radiographs), each with all its values"}


def paper_table(y_true, y_pred) -> Dict[str, object]:
    """Per-class precision, recall, F1 and support, plus accuracy: the paper's table."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    prec, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    rows = {CLASS_NAMES[k]: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]),
                             "support": int(sup[k])} for k in (0, 1)}
    return {"classes": rows, "accuracy": float(accuracy_score(y_true, y_pred)), "n": int(len(y_true))}


def at_threshold(y_true, p, threshold: float) -> Dict[str, object]:
    y_pred = (np.asarray(p) >= threshold).astype(int)
    return {"threshold": float(threshold), "table": paper_table(y_true, y_pred),
            "confusion": confusion(y_true, y_pred), **sens_spec(y_true, y_pred)}


def per_group(y_true, p, groups: Sequence[str], threshold: float) -> Dict[str, Dict[str, object]]:
    y_true, p, groups = np.asarray(y_true), np.asarray(p), np.asarray(groups)
    out = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        yp = (p[m] >= threshold).astype(int)
        out[g] = {"n": int(m.sum()), "fractured": int(y_true[m].sum()), "auc": auc(y_true[m], p[m]),
                  "accuracy": float((yp == y_true[m]).mean()), **sens_spec(y_true[m], yp)}
    return out


def evaluate_predictions(y_val, p_val, y_test, p_test, regions_test: List[str], rule: str = "youden",
                         n_boot: int = 2000, seed: int = 0) -> Dict[str, object]:
    threshold = choose_threshold(y_val, p_val, rule)
    return {
        "threshold": {"value": threshold, "rule": rule, "chosen_on": "validation split",
                      "validation": at_threshold(y_val, p_val, threshold)},
        "test": {
            "roc_auc": bootstrap_auc_ci(y_test, p_test, n_boot=n_boot, seed=seed),
            "at_chosen_threshold": at_threshold(y_test, p_test, threshold),
            "at_0.5_as_in_paper": at_threshold(y_test, p_test, 0.5),
            "per_region": per_group(y_test, p_test, regions_test, threshold),
        },
        "validation_auc": auc(y_val, p_val),
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> List[Optional[float]]:
    """95% Wilson score interval of a proportion (sensible at 0 or n successes, unlike the normal
    approximation); [None, None] when n is 0."""
    if n == 0:
        return [None, None]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]
