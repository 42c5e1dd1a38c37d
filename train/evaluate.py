"""Evaluate a trained model honestly on its test split; `python -m train.evaluate RUN_DIR` reruns it.

Writes metrics.json, predictions.csv, roc.png, confusion.png and Grad-CAM overlays into the run
directory. The threshold is chosen on the validation split, never on test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge_runtime.imageio import read_grayscale
from edge_runtime.overlay import save_overlay
from edge_runtime.preprocess import PreprocessSpec, views

from . import metrics as M
from .data import DataError, Dataset, load_data
from .dataset import LoadedSplit, load_images
from .split import file_sha256, load_split, records_by_split


def predict(model, images: np.ndarray, spec: Optional[PreprocessSpec] = None, batch_size: int = 32) -> np.ndarray:
    """P(fractured) per image: the mean over the spec's views, as the device computes it."""
    if len(images) == 0:
        return np.zeros((0,), np.float32)
    n_views = spec.n_views if spec is not None else 1
    if n_views == 1:
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64).reshape(-1)
    out = []
    for start in range(0, len(images), 64):  # eight views of a chunk at a time: bounded memory
        chunk = np.concatenate([views(x, spec) for x in images[start:start + 64]])
        p = np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float64)
        out.append(p.reshape(-1, n_views).mean(axis=1))
    return np.concatenate(out)


def _gradcam_examples(y, p, threshold: float, n: int) -> List[int]:
    """A few telling cases: confident true positives, missed fractures, false alarms."""
    idx = np.arange(len(y))
    tp = idx[(y == 1) & (p >= threshold)][np.argsort(-p[(y == 1) & (p >= threshold)])]
    fn = idx[(y == 1) & (p < threshold)][np.argsort(p[(y == 1) & (p < threshold)])]
    fp = idx[(y == 0) & (p >= threshold)][np.argsort(-p[(y == 0) & (p >= threshold)])]
    chosen: List[int] = []
    for group in (tp, fn, fp, tp[2:]):
        chosen.extend(int(i) for i in group[:max(1, n // 3)] if int(i) not in chosen)
    return chosen[:n]


def write_gradcams(model, layer: str, split: LoadedSplit, p: np.ndarray, threshold: float,
                   out_dir: Path, n: int = 6) -> List[str]:
    from .gradcam import gradcam_views

    picks = _gradcam_examples(split.labels, p, threshold, n)
    if not picks:
        return []
    _, heat = gradcam_views(model, split.images[picks], layer, split.spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, i in enumerate(picks):
        r = split.records[i]
        truth = "fractured" if r.label else "non-fractured"
        name = f"{Path(r.image_id).stem}_true-{truth}_p{p[i]:.2f}.png"
        save_overlay(out_dir / name, read_grayscale(r.path).pixels, heat[k])
        written.append(str(Path("gradcam") / name))
    return written


def evaluate_model(model, model_name: str, gradcam_layer: str, val: LoadedSplit, test: LoadedSplit,
                   out_dir: Path, rule: str = "youden", n_boot: int = 2000, seed: int = 0,
                   title: str = "", n_gradcam: int = 6) -> Dict:
    from .plots import plot_confusion, plot_roc

    p_val, p_test = predict(model, val.images, val.spec), predict(model, test.images, test.spec)
    result = M.evaluate_predictions(val.labels, p_val, test.labels, p_test, test.regions, rule, n_boot, seed)
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image_id", "split", "label", "region", "probability"])
        for split_name, part, p in (("val", val, p_val), ("test", test, p_test)):
            for r, prob in zip(part.records, p):
                w.writerow([r.image_id, split_name, r.label, r.region, f"{prob:.6f}"])
    title = title or model_name
    plot_roc(val.labels, p_val, test.labels, p_test, result, out_dir / "roc.png", title)
    plot_confusion(result["test"]["at_chosen_threshold"]["confusion"], out_dir / "confusion.png",
                   f"{title}\ntest, threshold {result['threshold']['value']:.3f}")
    result["gradcam_overlays"] = write_gradcams(model, gradcam_layer, test, p_test, result["threshold"]["value"],
                                                out_dir / "gradcam", n_gradcam)
    result["skipped_images"] = {"val": val.skipped, "test": test.skipped}
    return result


def summary_line(name: str, m: Dict) -> str:
    a = m["test"]["roc_auc"]
    t = m["test"]["at_chosen_threshold"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return (f"{name:<16} AUC {fmt(a['auc'])} [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}]  "
            f"acc {t['table']['accuracy']:.3f}  sens {fmt(t['sensitivity'])}  spec {fmt(t['specificity'])}  "
            f"threshold {m['threshold']['value']:.3f}")


def print_results(results: Dict[str, Dict], as_json: bool) -> None:
    """JSON for machines, or one summary line a model for people."""
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for m in results.values():
        print(summary_line(m["model"], m) + ("   [PHANTOM: demonstration only]" if m["phantom"] else ""))


def dataset_for_run(run: Dict, data_arg: Optional[str]) -> Dataset:
    prov = run["data"]["provenance"]
    if data_arg:
        return load_data(data_arg)
    if run["data"]["phantom"] and "phantom_images" in prov:
        return load_data("phantom", phantom_images=prov["phantom_images"], phantom_seed=prov["phantom_seed"])
    if Path(prov.get("path", "")).is_dir():
        return load_data(prov["path"])
    return load_data(None)


def evaluate_run(run_dir: Path, data_arg: Optional[str] = None, rule: Optional[str] = None,
                 n_boot: Optional[int] = None, progress: bool = True) -> Dict:
    import keras

    from .models import get_config

    run_dir = Path(run_dir)
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise DataError(f"{run_file}: not a run directory (run.json missing)")
    run = json.loads(run_file.read_text())
    dataset = dataset_for_run(run, data_arg)
    split_path = run_dir / "split.csv"
    sha = file_sha256(split_path)
    if sha != run["split"]["sha256"]:
        raise DataError(f"{split_path}: checksum {sha[:12]} differs from the one recorded in run.json "
                        f"({run['split']['sha256'][:12]}); the split was changed after training")
    parts = records_by_split(dataset, load_split(split_path, dataset))
    spec = PreprocessSpec.from_dict(run["preprocess"])
    val = load_images(parts["val"], spec, "val images", progress)
    test = load_images(parts["test"], spec, "test images", progress)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    cfg = get_config(run["model"]["name"])
    settings = run["evaluation"]
    result = evaluate_model(model, cfg.name, cfg.gradcam_layer, val, test, run_dir,
                            rule or settings["threshold_rule"], n_boot or settings["bootstrap"],
                            settings["seed"], title=run["title"])
    result = {**_header(run), **result}
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _header(run: Dict) -> Dict:
    return {"model": run["model"]["name"], "data": run["data"]["name"], "phantom": run["data"]["phantom"],
            "demonstration_only": run["data"]["phantom"], "split_sha256": run["split"]["sha256"],
            "complexity": run["model"]["complexity"]}


def run_dirs_under(path: Path) -> List[Path]:
    if (path / "run.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.glob("*/run.json"))
    if not found:
        raise DataError(f"{path}: no run.json here or in its subfolders")
    return found


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a run directory, or a folder of them (from --model all)")
    ap.add_argument("--data", help="data folder or 'phantom' (default: what the run was trained on)")
    ap.add_argument("--threshold-rule", help="override: 'youden' or 'sensitivity=0.9' (default: the run's)")
    ap.add_argument("--bootstrap", type=int, help="bootstrap resamples for the AUC CI (default: the run's)")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    args = ap.parse_args(argv)
    try:
        results = {d.name: evaluate_run(d, args.data, args.threshold_rule, args.bootstrap, progress=sys.stderr.isatty())
                   for d in run_dirs_under(args.run_dir)}
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
