"""Fit the out-of-scope gate (edge_runtime/scope.py) at export: per group, the mean and
covariance of the serving model's pooled features (as scope.features transforms them) on the
training split; and, per artifact, the distance to each group that keeps 99% of that group's
validation radiographs and of its training radiographs scored out of fold (cross_fits, held_out).

Groups are (source, label): real fractures, phantom fractures, intact phantoms, and on FracAtlas
its intact radiographs too. They are the clusters the features form, and they differ in spread:
real radiographs from many sources spread far more than phantoms, so one shared covariance (or
one threshold) either refused real radiographs or let through what lies near the phantoms
(measured: docs/results.md, "Out of scope"). Each covariance is shrunk by Ledoit and Wolf,
because two hundred dimensions from a few hundred radiographs do not make a well-conditioned one.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_runtime.bundle import pack_arrays
from edge_runtime.scope import COLOUR_LIMIT, SCOPE_FILE, features, photographed_group
from fracdata.data import Record, record_source

KEEP = 0.99  # of each group's validation radiographs and training radiographs scored out of fold
MIN_GROUP = 5  # a group with fewer training (or validation) images gets no mean of its own
# The outlier direction (edge_runtime/scope.py): a logistic regression, inside vs generated outside
# kinds, both classes weighted equally; C chosen on the tuning seed with cross-fitted thresholds
# (0.1, 0.3, 1 and 3 tried at the same out-of-fold cost: 1 refused the most there; docs/results.md).
OUTLIER_C = 1.0
OUTLIER_SEED = 21  # the generated set it is fitted on: apart from the tuning (11) and report (101, 202) seeds
ACQUISITION_COPIES = 3  # per real training radiograph: processed as other X-ray systems would (train/augment.py)
# Thresholds are chosen on validation and on the training images each scored by the gate refitted
# without its fold (cross_fits): 45 real validation radiographs put a 99% tail at their largest,
# which kept only 92% of real training radiographs scored out of fold (docs/results.md).
FOLDS = 5


def group_of(record: Record) -> str:
    return f"{record_source(record)}/{'fractured' if record.label == 1 else 'non-fractured'}"


def pooled_features(serving, spec, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The serving model's 'pooled' output for preprocessed images (n, size, size, 1), averaged over
    the spec's views as the runtime averages them (edge_runtime.predictor)."""
    from train.reference import mean_over_views

    if not len(images):
        return np.zeros((0, 0))
    return mean_over_views(lambda x: serving.predict(x, batch_size=batch_size, verbose=0)["pooled"], images, spec)


def pooled_layers(serving) -> List[str]:
    """The layers whose averages make up the serving model's 'pooled' output, in order."""
    return [layer.name[len("pooled_"):] for layer in serving.layers if layer.name.startswith("pooled_")]


def fit(pooled: np.ndarray, train_groups: Sequence[str], val_groups: Sequence[str] = ()) -> Dict:
    """{"groups", "means" (G, D), "precisions" (G, D, D), "n", "shrinkage"} from training features
    and each one's group; only groups with enough images in training and (when given) in
    validation, where each group's threshold is chosen."""
    from sklearn.covariance import LedoitWolf

    labels = np.asarray(list(train_groups))
    groups = [g for g in sorted(set(labels)) if np.sum(labels == g) >= MIN_GROUP
              and (not len(val_groups) or list(val_groups).count(g) >= MIN_GROUP)]
    # A film group photographs a file group: it stands only beside it, and a file needs one group.
    groups = [g for g in groups if photographed_group(g) is None or photographed_group(g) in groups]
    if all(photographed_group(g) is not None for g in groups):
        raise ValueError(f"no group of at least {MIN_GROUP} training and validation images to fit the gate on")
    X = np.stack([features(p) for p in pooled])
    fits = [LedoitWolf().fit(X[labels == g]) for g in groups]
    return {"groups": groups, "means": np.stack([f.location_ for f in fits]),
            "precisions": np.stack([f.precision_ for f in fits]),
            "n": {g: int(np.sum(labels == g)) for g in groups},
            "shrinkage": {g: round(float(f.shrinkage_), 4) for g, f in zip(groups, fits)}}


def fit_direction(inside: np.ndarray, outside: np.ndarray, c: float = OUTLIER_C) -> np.ndarray:
    """(D + 1,) the outlier direction on the gate's features (scope.features of `inside` and
    `outside` pooled outputs): a logistic regression on standardised features, each class weighted
    equally, folded back onto the raw features (weights, then the bias) so a runtime needs one dot
    product."""
    from sklearn.linear_model import LogisticRegression

    xin = np.stack([features(p) for p in inside])
    xout = np.stack([features(p) for p in outside])
    mu, sd = xin.mean(0), xin.std(0) + 1e-6
    x = (np.concatenate([xin, xout]) - mu) / sd
    y = np.r_[np.zeros(len(xin)), np.ones(len(xout))]
    weight = np.r_[np.full(len(xin), len(y) / (2 * len(xin))), np.full(len(xout), len(y) / (2 * len(xout)))]
    m = LogisticRegression(C=c, max_iter=5000).fit(x, y, sample_weight=weight)
    w = m.coef_[0] / sd
    return np.r_[w, m.intercept_[0] - float(np.dot(w, mu))]


def direction_threshold(logits: np.ndarray, sources: Sequence[str], keep: float = KEEP) -> float:
    """The outlier logit keeping `keep` of each source's images (the largest of them). Export passes
    validation images and training images scored out of fold together: 45 real validation
    radiographs alone put a 99% tail at their largest value."""
    logits, sources = np.asarray(logits, np.float64), np.asarray(sources)
    ok = np.isfinite(logits)
    return float(max(np.quantile(logits[ok & (sources == s)], keep, method="higher")
                     for s in sorted(set(sources[ok]))))


def fold_of(record: Record, folds: int = FOLDS) -> int:
    """A radiograph's fold, from its source and id (not its path, which differs between machines):
    its processed copies and photos fall in the same one."""
    key = f"{record_source(record)}\0{record.image_id}".encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % folds


def cross_fits(pooled: np.ndarray, groups: Sequence[str], folds: Sequence[int], names: Sequence[str],
               outside: Optional[np.ndarray] = None, c: float = OUTLIER_C) -> List[Dict]:
    """Per fold k, the gate refitted on the rows (pooled outputs and their groups) of every other
    fold: {"means", "precisions"} for the groups `names` (a group with fewer than 2 rows left gets
    NaN, so nothing is measured against it), and with `outside`, the outlier direction."""
    from sklearn.covariance import LedoitWolf

    X = np.stack([features(p) for p in pooled])
    groups, folds = np.asarray(groups), np.asarray(folds)
    fits = []
    for k in range(FOLDS):
        keep = folds != k
        means, precisions = np.full((len(names), X.shape[1]), np.nan), np.full((len(names),) + (X.shape[1],) * 2, np.nan)
        for i, g in enumerate(names):
            rows = X[keep & (groups == g)]
            if len(rows) >= 2:
                f = LedoitWolf().fit(rows)
                means[i], precisions[i] = f.location_, f.precision_
        fit = {"means": means, "precisions": precisions}
        if outside is not None and keep.any():  # (a set of one or two radiographs may leave none)
            fit["direction"] = fit_direction(pooled[keep], outside, c)
        fits.append(fit)
    return fits


def held_out(fits: List[Dict], pooled: Sequence[np.ndarray], groups: Sequence[str], folds: Sequence[int],
             names: Sequence[str]) -> tuple:
    """(distance of each image to its own group, its outlier logit or NaN) under the fit of `fits`
    that left its fold out; `pooled`: the artifact's outputs for training images (or photos)."""
    dist, logit = [], []
    for p, g, k in zip(pooled, groups, folds):
        fit, x = fits[k], features(p)
        if g in names:  # a group too small for the gate has no distance of its own
            i = list(names).index(g)
            d = x - fit["means"][i]
            dist.append(float(np.sqrt(max(d @ fit["precisions"][i] @ d, 0.0))))
        else:
            dist.append(np.nan)
        w = fit.get("direction")
        logit.append(float(x @ w[:-1] + w[-1]) if w is not None else np.nan)
    return np.array(dist), np.array(logit)


def thresholds(distances: np.ndarray, val_groups: Sequence[str], groups: Sequence[str], keep: float = KEEP,
               held: Optional[np.ndarray] = None, held_groups: Sequence[str] = ()) -> List[float]:
    """Per group, the distance keeping `keep` of its validation images (`distances`: (n, G)) and of
    the training images scored out of fold (`held`: each one's distance to its own group)."""
    val_groups, held_groups = np.asarray(val_groups), np.asarray(held_groups)
    held = np.zeros(0) if held is None else np.asarray(held)
    out = []
    for i, g in enumerate(groups):
        both = np.concatenate([distances[val_groups == g, i], held[held_groups == g] if len(held) else []])
        out.append(float(np.quantile(both[np.isfinite(both)], keep, method="higher")))
    return out


def refused_by_source(scores: np.ndarray, sources: Sequence[str]) -> Dict[str, Dict]:
    """What the gate (score above 1) refuses of in-scope images, per source."""
    sources = np.asarray(sources)
    return {s: {"n": int(np.sum(sources == s)), "refused": int(np.sum(scores[sources == s] > 1.0)),
                "rate": float(np.mean(scores[sources == s] > 1.0))} for s in sorted(set(sources))}


def manifest_section(fitted: Dict, layers: Sequence[str], film: Optional[Dict] = None,
                     outlier: Optional[Dict] = None) -> tuple:
    """(the manifest's `scope` section without thresholds, the float32 file's bytes); `film`: how
    the film groups' photos were made (export/scope_film.py), when there are film groups;
    `outlier`: {"direction": (D + 1,), "fitted_on": {...}}, when the gate has one."""
    arrays = {"means": fitted["means"], "precisions": fitted["precisions"]}
    if outlier is not None:
        arrays["outlier"] = outlier["direction"]
    blob, index = pack_arrays(arrays)
    section = {"method": "mahalanobis", "features": {"output": "pooled", "layers": list(layers),
                                                     "pooling": "global average, side by side", "transform": "sqrt",
                                                     "dim": int(fitted["means"].shape[1])},
               "file": SCOPE_FILE, "dtype": "float32 little-endian", "arrays": index, "groups": list(fitted["groups"]),
               "fitted_on": {"split": "train", "n": fitted["n"], "covariance": "per group, Ledoit-Wolf shrinkage",
                             "shrinkage": fitted["shrinkage"]},
               "rule": f"per artifact and group, the distance keeping >= {KEEP:.0%} of that group's validation "
                       "images and of its training images, each of those measured by the gate refitted without its "
                       f"fold ({FOLDS} folds by radiograph); refused when beyond it for every group "
                       "(score = min distance / threshold > 1)",
               "cross_fitted": {"folds": FOLDS, "by": "radiograph (drawn from its source and id): its processed "
                                                      "copies and photos in its fold"},
               "colour_limit": COLOUR_LIMIT, "thresholds": {}}
    film_groups = [g for g in fitted["groups"] if photographed_group(g) is not None]
    if film is not None:  # how the photos were made, and whether any film group came of them
        section["film_photos"] = film
    if film_groups:
        section["film_groups"] = film_groups
        section["rule"] += ("; a file is measured against the file groups, a flattened film photo against every "
                            "group (the film groups: training radiographs photographed and flattened)")
    if outlier is not None:
        section["outlier"] = {
            "method": "logistic regression on the same features (outlier exposure): training radiographs and their "
                      "processed copies (and photos) inside, generated out-of-scope kinds outside, classes weighted "
                      f"equally, C = {OUTLIER_C}; stored as weights then bias on the square-rooted features",
            "fitted_on": outlier["fitted_on"],
            "rule": f"per artifact, one logit for files and one for flattened films, each keeping >= {KEEP:.0%} of "
                    "every source's validation images and training images (files; photos), each training image "
                    "scored by the direction refitted without its fold; refused past it, whatever the "
                    "distance (score = the larger of "
                    "the distance ratio and e^(logit - threshold), bounded at e^50)",
            "thresholds": {}}
    return section, blob


def sources_of(records: List[Record]) -> List[str]:
    return [record_source(r) for r in records]
