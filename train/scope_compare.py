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
KEEP = 0.99


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


def per_group(train, groups, sets, val_groups) -> Dict[str, np.ndarray]:
    """A mean, a covariance and a 99%-of-validation distance per group; score = min distance / threshold."""
    names = sorted(set(groups) & set(val_groups))  # a group needs validation images for its threshold
    fits = [_lw(train[groups == g]) for g in names]
    dist = {k: np.stack([_mahalanobis(X, f.location_, f.precision_) for f in fits], 1) for k, X in sets.items()}
    t = np.array([np.quantile(dist["val"][val_groups == g, i], KEEP, method="higher") for i, g in enumerate(names)])
    return {k: (d / t).min(1) for k, d in dist.items()}


def knn(train, sets, k: int = 10) -> Dict[str, np.ndarray]:
    """Distance to the k-th nearest training image, features L2-normalised (Sun et al. 2022)."""
    T = train / np.linalg.norm(train, axis=1, keepdims=True)
    out = {}
    for name, X in sets.items():
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        d = np.sqrt(np.maximum(((X[:, None, :] - T[None]) ** 2).sum(-1), 0.0))
        out[name] = np.sort(d, 1)[:, k - 1]
    return out


def compare(run_dir: Path, ood: Path, fit_ood: Optional[Path] = None) -> Dict:
    """Each variant's refusals per generated kind (the tuning set `ood`), of the in-scope test split,
    and of the real validation and test radiographs processed as other X-ray systems would
    (train.acquisition_shift's kinds). With `fit_ood` (a generated set of another seed), also the
    variants with an outlier direction fitted on it, once on every kind and once per kind with that
    kind left out of the fit (how it does on a kind it never saw)."""
    from edge_runtime.scope import RATIO_LOG_BOUND
    from export.scope_fit import ACQUISITION_COPIES, OUTLIER_C, fit_direction
    from export.scope_sets import acquisition_copies, read_ood
    from fracdata.data import record_source
    from fracdata.images import load_images
    from fracdata.runs import dataset_for_run, read_run
    from fracdata.split import load_split, records_by_split
    from train.models import load_model

    from edge_runtime.preprocess import PreprocessSpec

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

    def evaluated(X):
        return {k: v for k, v in X.items() if k not in ("train", "copies", "fit_ood")}

    def with_copies(X):
        return np.concatenate([X["train"], X["copies"]]), np.concatenate([group["train"], group["copies"]])

    def direction_or(distance_scores, X, drop=None):
        """The runtime's rule: refused beyond every group or past the direction's threshold."""
        inside, _ = with_copies(X)
        keep = fit_kinds != drop
        # pooled outputs squared back: fit_direction takes them as the runtime does (it square-roots)
        w = fit_direction(inside ** 2, X["fit_ood"][keep] ** 2, OUTLIER_C)
        z = {k: v @ w[:-1] + w[-1] for k, v in evaluated(X).items()}
        # export's rule: 99% of each source's training and validation images
        zz = np.concatenate([z["val"], X["train"] @ w[:-1] + w[-1]])
        src = np.concatenate([source["val"], source["train"]])
        t = max(np.quantile(zz[src == s], KEEP, method="higher") for s in set(src))
        return {k: np.maximum(distance_scores[k], np.exp(np.clip(z[k] - t, -RATIO_LOG_BOUND, RATIO_LOG_BOUND)))
                for k in z}

    sq = stack(LAYERS, "sqrt")
    with_copies_distance = per_group(*with_copies(sq), evaluated(sq), group["val"])
    variants = {
        "last layer (96), one shared covariance": lambda: shared(*_split(stack(LAYERS[-1:]), group["train"])),
        "four layers (224), shared covariance": lambda: shared(*_split(stack(LAYERS), group["train"])),
        "four layers, k-nearest-neighbour (k = 10)": lambda: knn(stack(LAYERS)["train"], evaluated(stack(LAYERS))),
        "four layers, square roots, a covariance and a threshold per group":
            lambda: per_group(sq["train"], group["train"], evaluated(sq), group["val"]),
        "the same, with processed copies of the real training radiographs": lambda: with_copies_distance,
    }
    shipped = None
    if fit_ood is not None:  # scored by the runtime's rule (above 1), not thresholded again
        shipped = (f"the same, or past an outlier direction (seed of its fit: {_seed(fit_ood)}; files only: export "
                   "also fits it on photos; shipped)")
        variants[shipped] = lambda: direction_or(with_copies_distance, sq)
    rows = {}
    for name, make in variants.items():
        scores = make()
        t = 1.0 if name == shipped else max(np.quantile(scores["val"][source["val"] == s], KEEP, method="higher")
                                            for s in set(source["val"]))
        rows[name] = {**_row(scores, t, kinds, source["test"], shift_kinds),
                      "validation_kept": float(np.mean(scores["val"] <= t))}
    if fit_ood is not None:  # each kind scored by a direction fitted without it
        held = {}
        for k in sorted(set(kinds)):
            scores = direction_or(with_copies_distance, sq, drop=k)
            held[k] = float(np.mean(scores["ood"][kinds == k] > 1.0))
        rows["the shipped rule, each kind left out of the direction's fit"] = {"refused": held}
    return {"run": str(run_dir), "ood": str(ood), "fit_ood": None if fit_ood is None else str(fit_ood),
            "layers": list(LAYERS), "variants": rows}


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
    lines = ["| features, distance | " + " | ".join(kinds) + " | in-scope test refused | processed real refused |",
             "|---|" + "---:|" * (len(kinds) + 2)]
    for name, r in result["variants"].items():
        test = ", ".join(f"{s} {a} of {n}" for s, (a, n) in r["test_refused"].items()) if "test_refused" in r else ""
        processed = (f"{np.mean(list(r['processed_refused'].values())):.2f} (up to "
                     f"{max(r['processed_refused'].values()):.2f})" if "processed_refused" in r else "")
        lines.append(f"| {name} | " + " | ".join(f"{r['refused'][k]:.2f}" for k in kinds) + f" | {test} | {processed} |")
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
    result = compare(args.run_dir, ood, fit_ood)
    print(json.dumps(result, indent=2) if args.json else render(result), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
