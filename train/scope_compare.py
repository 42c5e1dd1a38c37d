"""How the out-of-scope gate's features and distance were chosen: `python -m train.scope_compare RUN_DIR`.

The float model's pooled features (global averages of its layers) on the run's train, validation
and test radiographs and on a generated out-of-scope set (fracdata.ood, the tuning seed by
default), scored by several variants, each thresholded to keep 99% of validation; printed per
out-of-scope kind (the fraction refused) beside the in-scope test images it refuses. The shipped
gate is the last variant (edge_runtime/scope.py, export/scope_fit.py); docs/results.md holds the
table this prints.
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


def _ood_images(folder: Path, spec) -> tuple:
    from edge_runtime.errors import ImageReadError
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import checked_input

    meta = json.loads((folder / "ood_set.json").read_text())
    xs, kinds = [], []
    for kind, files in meta["files"].items():
        for f in files:
            try:
                x, problem, _ = checked_input(read_image(folder / f, spec).pixels, spec)
            except ImageReadError:
                continue
            if not problem:  # blank/flat/noise are refused before the model by every variant alike
                xs.append(x)
                kinds.append(kind)
    return np.stack(xs), np.array(kinds)


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


def compare(run_dir: Path, ood: Path) -> Dict:
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
    x_ood, kinds = _ood_images(ood, spec)
    feats["ood"] = _features(model, x_ood, LAYERS)
    group = {s: np.array([f"{record_source(r)}/{r.label}" for r in loaded[s].records]) for s in loaded}
    source = {s: np.array([record_source(r) for r in loaded[s].records]) for s in loaded}

    def stack(layers, transform=None):
        out = {s: np.concatenate([feats[s][n] for n in layers], 1).astype(np.float64) for s in feats}
        return {s: np.sqrt(np.maximum(v, 0)) for s, v in out.items()} if transform == "sqrt" else out

    variants = {
        "last layer (96), one shared covariance": lambda: shared(*_split(stack(LAYERS[-1:]), group["train"])),
        "four layers (224), shared covariance": lambda: shared(*_split(stack(LAYERS), group["train"])),
        "four layers, k-nearest-neighbour (k = 10)": lambda: knn(stack(LAYERS)["train"],
                                                                 {k: v for k, v in stack(LAYERS).items() if k != "train"}),
        "four layers, square roots, a covariance and a threshold per group (shipped)":
            lambda: per_group(*_split(stack(LAYERS, "sqrt"), group["train"]), group["val"]),
    }
    rows = {}
    for name, make in variants.items():
        scores = make()
        t = max(np.quantile(scores["val"][source["val"] == s], KEEP, method="higher") for s in set(source["val"]))
        rows[name] = {"refused": {k: float(np.mean(scores["ood"][kinds == k] > t)) for k in sorted(set(kinds))},
                      "test_refused": {s: [int(np.sum(scores["test"][source["test"] == s] > t)),
                                           int(np.sum(source["test"] == s))] for s in sorted(set(source["test"]))}}
    return {"run": str(run_dir), "ood": str(ood), "layers": list(LAYERS), "variants": rows}


def _split(stacked: Dict[str, np.ndarray], train_groups: np.ndarray):
    return stacked["train"], train_groups, {k: v for k, v in stacked.items() if k != "train"}


def render(result: Dict) -> str:
    kinds = sorted(next(iter(result["variants"].values()))["refused"])
    lines = ["| features, distance | " + " | ".join(kinds) + " | in-scope test refused |",
             "|---|" + "---:|" * (len(kinds) + 1)]
    for name, r in result["variants"].items():
        test = ", ".join(f"{s} {a} of {n}" for s, (a, n) in r["test_refused"].items())
        lines.append(f"| {name} | " + " | ".join(f"{r['refused'][k]:.2f}" for k in kinds) + f" | {test} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.scope_compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a fracture-map training run")
    ap.add_argument("--ood", type=Path, help="a folder made by python -m fracdata.ood (default: the tuning seed's, "
                                             "generated under runs/)")
    ap.add_argument("--seed", type=int, default=TUNING_SEED, help="seed of the generated set (default: %(default)s)")
    ap.add_argument("--n", type=int, default=30, help="generated images per kind (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    from fracdata.console import quiet_start
    from fracdata.ood import write_ood_set

    quiet_start(False, ("tensorflow",))
    ood = args.ood or write_ood_set(Path(f"runs/ood-seed{args.seed}"), n_per_kind=args.n, seed=args.seed, progress=True)
    result = compare(args.run_dir, ood)
    print(json.dumps(result, indent=2) if args.json else render(result), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
