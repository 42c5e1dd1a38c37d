"""How the out-of-scope gate's features and distance were chosen: `python -m train.scope_compare RUN_DIR`.

The float model's pooled features (global averages of its layers) on the run's train, validation
and test radiographs and on a generated out-of-scope set (fracdata.ood, the tuning seed by
default), scored by several variants, each thresholded to keep 99% of validation; printed per
out-of-scope kind (the fraction refused) beside the in-scope test images it refuses and the real
radiographs processed as other X-ray systems would (train.acquisition_shift's kinds) that it
refuses. The shipped gate is the variant marked so (edge_runtime/scope.py; fitted by export's own
code, export/scope_fit.py and export/scope_sets.py, imported here so the comparison is of what
ships); the last row fits the outlier direction once per kind without that kind, which is how it
does on a kind it never saw. docs/results.md holds the table this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

LAYERS = ("conv2_relu", "conv3_relu", "conv5_relu", "conv8_relu")
TUNING_SEED = 11


def _features(model, images: np.ndarray, layers: Sequence[str]) -> Dict[str, np.ndarray]:
    import keras

    outs = [keras.layers.GlobalAveragePooling2D()(model.get_layer(n).output) for n in layers]
    return dict(zip(layers, keras.Model(model.inputs, outs).predict(images, batch_size=32, verbose=0)))


def _lw(X: np.ndarray):
    from sklearn.covariance import LedoitWolf

    return LedoitWolf().fit(X)


def _mahalanobis(X: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = X - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def shared(train, groups, sets) -> Dict[str, np.ndarray]:
    """Group means, one shared covariance; score = the smallest distance."""
    names = sorted(set(groups))
    means = np.stack([train[groups == g].mean(0) for g in names])
    prec = _lw(train - means[[names.index(g) for g in groups]]).precision_
    return {k: np.min([_mahalanobis(X, m, prec) for m in means], axis=0) for k, X in sets.items()}


def per_group(train, groups, sets, val_groups, held=None, held_groups=(), own_groups=()) -> Dict[str, np.ndarray]:
    """A mean, a covariance and a threshold per group, export's (export.scope_fit.thresholds: 99% of
    validation, and of `held`, training radiographs' distances to their own group (`held_groups`)
    each scored out of fold); score = min distance / threshold. With a "held" set (every training
    radiograph, in `own_groups`), also "held_own": each one's distance to its own group."""
    from export.scope_fit import thresholds

    names = sorted(set(groups) & set(val_groups))  # a group needs validation images for its threshold
    fits = [_lw(train[groups == g]) for g in names]
    dist = {k: np.stack([_mahalanobis(X, f.location_, f.precision_) for f in fits], 1) for k, X in sets.items()}
    t = np.array(thresholds(dist["val"], val_groups, names, held=held, held_groups=held_groups))
    out = {k: (d / t).min(1) for k, d in dist.items()}
    if "held" in dist:
        own = [names.index(g) if g in names else -1 for g in own_groups]
        out["held_own"] = np.array([dist["held"][i, j] if j >= 0 else np.nan for i, j in enumerate(own)])
    return out


def knn(train, sets, k: int = 10) -> Dict[str, np.ndarray]:
    """Distance to the k-th nearest training image, features L2-normalised (Sun et al. 2022)."""
    T = train / np.linalg.norm(train, axis=1, keepdims=True)
    out = {}
    for name, X in sets.items():
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        d = np.sqrt(np.maximum(((X[:, None, :] - T[None]) ** 2).sum(-1), 0.0))
        out[name] = np.sort(d, 1)[:, k - 1]
    return out


def folds_of(records) -> np.ndarray:
    """Each radiograph's fold, as export draws it (a processed copy falls in its radiograph's)."""
    from export.scope_fit import fold_of

    return np.array([fold_of(r) for r in records])


def out_of_fold(rule, folds: np.ndarray, copy_folds: np.ndarray, within: Optional[tuple] = None,
                key: str = "held") -> np.ndarray:
    """Each training radiograph's score by `rule` refitted without its fold (and without its processed
    copies): `rule(train_mask, copies_mask)` returns scores with a "held" entry scoring every training
    radiograph. The whole procedure is refitted, thresholds chosen on validation included, so this is
    what it does to radiographs like its own that it never saw: how often it refuses in-scope
    radiographs, measured on the training split's hundreds rather than the test split's tens (the
    fit has a fifth fewer images, so the rate is a little pessimistic). `within`: (train mask,
    copies mask) to cross-fit inside (NaN outside it); `key`: the scores read ("held_own": each one's
    distance to its own group)."""
    tm, cm = within if within is not None else (np.ones(len(folds), bool), np.ones(len(copy_folds), bool))
    out = np.full(len(folds), np.nan)
    for k in sorted(set(folds[tm].tolist())):
        held = tm & (folds == k)
        out[held] = rule(tm & (folds != k), cm & (copy_folds != k))[key][held]
    return out


def compare(run_dir: Path, ood: Path, fit_ood: Optional[Path] = None, c: Optional[float] = None) -> Dict:
    """Each variant's refusals per generated kind (the tuning set `ood`), of the in-scope test split,
    and of the real validation and test radiographs processed as other X-ray systems would
    (train.acquisition_shift's kinds). With `fit_ood` (a generated set of another seed), also the
    variants with an outlier direction fitted on it, once on every kind and once per kind with that
    kind left out of the fit (how it does on a kind it never saw)."""
    from edge_runtime.scope import RATIO_LOG_BOUND
    from export.scope_fit import ACQUISITION_COPIES, OUTLIER_C, direction_threshold, fit_direction
    from export.scope_sets import acquisition_copies, read_ood
    from fracdata.data import PHANTOM_SOURCE, record_source
    from fracdata.images import load_images
    from fracdata.runs import dataset_for_run, read_run
    from fracdata.split import load_split, records_by_split
    from train.models import load_model

    from edge_runtime.preprocess import PreprocessSpec

    c = OUTLIER_C if c is None else c
    run = read_run(run_dir)
    spec = PreprocessSpec.from_dict(run.record["preprocess"])
    model = load_model(run.model_path)
    ds = dataset_for_run(run.record, None, quiet=True)
    parts = records_by_split(ds, load_split(run.split_path, ds))
    loaded = {s: load_images(parts[s], spec, f"{s} radiographs") for s in ("train", "val", "test")}
    feats = {s: _features(model, loaded[s].images, LAYERS) for s in loaded}
    generated = read_ood(ood, spec)  # blank/flat/noise are refused before the model by every variant alike
    kinds = np.array(generated.kinds)
    feats["ood"] = _features(model, generated.images, LAYERS)
    copies = acquisition_copies(loaded["train"], ACQUISITION_COPIES, 0)
    feats["copies"] = _features(model, copies.images, LAYERS)
    x_shift, shift_kinds = _processed(parts["val"] + parts["test"], spec)
    if x_shift is not None:  # a run with real radiographs
        feats["processed"] = _features(model, x_shift, LAYERS)
    if fit_ood is not None:
        fit_set = read_ood(fit_ood, spec)
        fit_kinds = np.array(fit_set.kinds)
        feats["fit_ood"] = _features(model, fit_set.images, LAYERS)
    group = {s: np.array([f"{record_source(r)}/{r.label}" for r in loaded[s].records]) for s in loaded}
    group["copies"] = np.array([f"{record_source(r)}/{r.label}" for r in copies.records])
    source = {s: np.array([record_source(r) for r in loaded[s].records]) for s in loaded}

    def stack(layers, transform=None):
        out = {s: np.concatenate([feats[s][n] for n in layers], 1).astype(np.float64) for s in feats}
        return {s: np.sqrt(np.maximum(v, 0)) for s, v in out.items()} if transform == "sqrt" else out

    def evaluated(X, tm=None):
        """The sets scored; with a training mask `tm`, also every training radiograph ("held": the
        ones it leaves out are the ones out_of_fold reads)."""
        out = {k: v for k, v in X.items() if k not in ("train", "copies", "fit_ood")}
        return out if tm is None else {**out, "held": X["train"]}

    everything = (np.ones(len(group["train"]), bool), np.ones(len(group["copies"]), bool))

    def with_copies(X, tm, cm):
        return (np.concatenate([X["train"][tm], X["copies"][cm]]),
                np.concatenate([group["train"][tm], group["copies"][cm]]))

    def distance(X, tm, cm, held=None):
        """Per group (training radiographs `tm`, copies `cm`); thresholds at 99% of validation, and with
        `held` (the radiographs of `tm`, each one's distance to its own group under a fit without its
        fold), of those too, per group, as export chooses them."""
        return per_group(*with_copies(X, tm, cm), evaluated(X, tm), group["val"], held, group["train"][tm],
                         group["train"])

    def direction_or(distance_scores, X, tm, cm, drop=None, xfit=None):
        """The runtime's rule: refused beyond every group or past the direction's threshold (export's:
        99% of each source's training and validation images; with `xfit`, the training radiographs'
        logits are those of a direction fitted without them)."""
        inside, _ = with_copies(X, tm, cm)
        keep = fit_kinds != drop
        # pooled outputs squared back: fit_direction takes them as the runtime does (it square-roots)
        w = fit_direction(inside ** 2, X["fit_ood"][keep] ** 2, c)
        z = {k: v @ w[:-1] + w[-1] for k, v in evaluated(X, tm).items()}
        zz = np.concatenate([z["val"], X["train"][tm] @ w[:-1] + w[-1] if xfit is None else xfit])
        t = direction_threshold(zz, np.concatenate([source["val"], source["train"][tm]]))
        return {k: np.maximum(distance_scores[k], np.exp(np.clip(z[k] - t, -RATIO_LOG_BOUND, RATIO_LOG_BOUND)))
                for k in z}

    def logits_out_of_fold(X, tm, cm, drop=None):
        """Each training radiograph of `tm` scored by a direction fitted without its fold."""
        out = np.full(len(ftr), np.nan)
        for k in sorted(set(ftr[tm].tolist())):
            held = tm & (ftr == k)
            w = fit_direction(with_copies(X, tm & (ftr != k), cm & (fco != k))[0] ** 2,
                              X["fit_ood"][fit_kinds != drop] ** 2, c)
            out[held] = X["train"][held] @ w[:-1] + w[-1]
        return out

    def cross_fitted(tm, cm, drop=None):
        """The shipped rule: both thresholds keep 99% of validation and of the training radiographs
        (of `tm`) scored out of fold."""
        d = out_of_fold(copies_too, ftr, fco, (tm, cm), key="held_own")[tm]
        return direction_or(distance(sq, tm, cm, held=d), sq, tm, cm, drop=drop,
                            xfit=logits_out_of_fold(sq, tm, cm, drop)[tm])

    sq = stack(LAYERS, "sqrt")
    ftr, fco = folds_of(loaded["train"].records), folds_of(copies.records)
    no_copies = lambda tm, cm: distance(sq, tm, np.zeros_like(cm))  # noqa: E731
    copies_too = lambda tm, cm: distance(sq, tm, cm)  # noqa: E731
    with_copies_distance = copies_too(*everything)
    variants = {
        "last layer (96), one shared covariance": (lambda: shared(*_split(stack(LAYERS[-1:]), group["train"])), None),
        "four layers (224), shared covariance": (lambda: shared(*_split(stack(LAYERS), group["train"])), None),
        "four layers, k-nearest-neighbour (k = 10)":
            (lambda: knn(stack(LAYERS)["train"], evaluated(stack(LAYERS))), None),
        "four layers, square roots, a covariance and a threshold per group": (lambda: no_copies(*everything), no_copies),
        "the same, with processed copies of the real training radiographs": (lambda: with_copies_distance, copies_too),
    }
    ruled = set()  # scored by the runtime's rule (above 1), not thresholded again
    if fit_ood is not None:
        before = (f"the same, or past an outlier direction (seed of its fit: {_seed(fit_ood)}; files only: export "
                  f"also fits it on photos; C = {c}); thresholds: 99% of validation (the distance), of validation "
                  "and training (the direction): the rule shipped until 2026-12-06, then with C = 0.1")
        before_rule = lambda tm, cm: direction_or(copies_too(tm, cm), sq, tm, cm)  # noqa: E731
        shipped = ("the same; both thresholds at 99% of validation and of the training radiographs scored out of "
                   "fold: shipped")
        variants[before] = (lambda: before_rule(*everything), before_rule)
        variants[shipped] = (lambda: cross_fitted(*everything), cross_fitted)
        ruled = {before, shipped}
    real = source["train"] != PHANTOM_SOURCE
    rows = {}
    for name, (make, rule) in variants.items():
        scores = make()
        # the other variants: the value keeping 99% of each source's validation images, as for the direction
        t = 1.0 if name in ruled else direction_threshold(scores["val"], source["val"])
        rows[name] = {**_row(scores, t, kinds, source["test"], shift_kinds),
                      "validation_kept": float(np.mean(scores["val"] <= t))}
        if rule is not None and real.any():  # a threshold at 1 on each fold's own rescaled scores
            held = out_of_fold(rule if name in ruled else _rethresholded(rule, source["val"]), ftr, fco)
            rows[name]["out_of_fold_refused"] = [int(np.sum(held[real] > 1.0)), int(np.sum(real))]
    if fit_ood is not None:  # each kind scored by a direction fitted without it
        held = {}
        for k in sorted(set(kinds)):
            scores = cross_fitted(*everything, drop=k)
            held[k] = float(np.mean(scores["ood"][kinds == k] > 1.0))
        rows["the shipped rule, each kind left out of the direction's fit"] = {"refused": held}
    return {"run": str(run_dir), "ood": str(ood), "fit_ood": None if fit_ood is None else str(fit_ood), "outlier_c": c,
            "layers": list(LAYERS), "variants": rows}


def _rethresholded(rule, val_sources: np.ndarray):
    """`rule` with its scores divided by the threshold this tool gives the variants it does not score by
    the runtime's rule (99% of each source's validation images), so "above 1" is its refusal too."""
    from export.scope_fit import direction_threshold

    def rescaled(tm, cm):
        scores = rule(tm, cm)
        t = direction_threshold(scores["val"], val_sources)
        return {k: v / t for k, v in scores.items()}
    return rescaled


def _row(scores, t, kinds, test_sources, shift_kinds) -> Dict:
    return {"refused": {k: float(np.mean(scores["ood"][kinds == k] > t)) for k in sorted(set(kinds))},
            "test_refused": {s: [int(np.sum(scores["test"][test_sources == s] > t)), int(np.sum(test_sources == s))]
                             for s in sorted(set(test_sources))},
            **({"processed_refused": {k: float(np.mean(scores["processed"][shift_kinds == k] > t))
                                      for k in sorted(set(shift_kinds))}} if "processed" in scores else {})}


def _seed(folder: Path) -> int:
    return int(json.loads((folder / "ood_set.json").read_text())["seed"])


def _processed(records, spec) -> tuple:
    """The real radiographs among `records`, each processed once per train.acquisition_shift kind."""
    from edge_runtime.errors import ImageReadError
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import checked_input
    from fracdata.data import PHANTOM_SOURCE, record_source
    from train.acquisition_shift import KINDS, process

    xs, kinds = [], []
    for i, r in enumerate(records):
        if record_source(r) == PHANTOM_SOURCE:
            continue
        try:
            pixels = read_image(r.path, spec).pixels
        except ImageReadError:
            continue
        for kind in KINDS:
            x, problem, _ = checked_input(process(pixels, kind, i, 0, spec.size), spec)
            if not problem:
                xs.append(x)
                kinds.append(kind)
    return (np.stack(xs) if xs else None), np.array(kinds)


def _split(stacked: Dict[str, np.ndarray], train_groups: np.ndarray):
    return stacked["train"], train_groups, {k: v for k, v in stacked.items() if k != "train"}


def render(result: Dict) -> str:
    kinds = sorted(next(iter(result["variants"].values()))["refused"])
    lines = ["| features, distance | " + " | ".join(kinds) + " | in-scope test refused | processed real refused "
             "| real training radiographs refused, out of fold |",
             "|---|" + "---:|" * (len(kinds) + 3)]
    for name, r in result["variants"].items():
        test = ", ".join(f"{s} {a} of {n}" for s, (a, n) in r["test_refused"].items()) if "test_refused" in r else ""
        processed = (f"{np.mean(list(r['processed_refused'].values())):.2f} (up to "
                     f"{max(r['processed_refused'].values()):.2f})" if "processed_refused" in r else "")
        oof = r.get("out_of_fold_refused")
        oof = f"{oof[0]} of {oof[1]} ({oof[0] / oof[1]:.3f})" if oof else ""
        lines.append(f"| {name} | " + " | ".join(f"{r['refused'][k]:.2f}" for k in kinds)
                     + f" | {test} | {processed} | {oof} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.scope_compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a fracture-map training run")
    ap.add_argument("--ood", type=Path, help="a folder made by python -m fracdata.ood (default: the tuning seed's, "
                                             "generated under runs/)")
    ap.add_argument("--seed", type=int, default=TUNING_SEED, help="seed of the generated set (default: %(default)s)")
    ap.add_argument("--n", type=int, default=30, help="generated images per kind (default: %(default)s)")
    ap.add_argument("--fit-seed", type=int, default=None,
                    help="also the outlier direction, fitted on a generated set of this seed (export's: "
                         "export.scope_fit.OUTLIER_SEED, 40 per kind); --fit-seed -1 leaves it out "
                         "(default: export's seed)")
    ap.add_argument("--outlier-c", type=float, default=None,
                    help="the outlier direction's regularisation (default: export's, export.scope_fit.OUTLIER_C)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    from fracdata.console import quiet_start
    from fracdata.ood import write_ood_set

    quiet_start(False, ("tensorflow",))
    ood = args.ood or write_ood_set(Path(f"runs/ood-seed{args.seed}"), n_per_kind=args.n, seed=args.seed, progress=True)
    from export.scope_fit import OUTLIER_SEED

    fit_seed = OUTLIER_SEED if args.fit_seed is None else args.fit_seed
    fit_ood = (write_ood_set(Path(f"runs/ood-seed{fit_seed}-n40"), n_per_kind=40, seed=fit_seed, progress=True)
               if fit_seed >= 0 else None)
    result = compare(args.run_dir, ood, fit_ood, args.outlier_c)
    print(json.dumps(result, indent=2) if args.json else render(result), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
