"""Evaluate a trained model honestly on its test split; `python -m train.evaluate RUN_DIR` reruns it.

Writes metrics.json, predictions.csv, roc.png, confusion.png and Grad-CAM overlays into the run
directory. The threshold is chosen on the validation split, never on test. Where the test images
carry fracture boxes, the Grad-CAM's localisation is scored too (train/localisation.py).

`python -m train.evaluate --bundle BUNDLE --data DIR` runs a bundle through the edge runtime on any
data the readers read instead (train/bundle_eval.py): no TensorFlow, every artifact side by side.
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
from .localisation import boxed_positives, heat_on_image, localise
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
        gray = read_grayscale(r.path).pixels
        save_overlay(out_dir / name, gray, heat_on_image(heat[k], split.spec, gray.shape), boxes=r.boxes or None,
                     probability=float(p[i]), threshold=threshold)
        written.append(str(Path("gradcam") / name))
    return written


def localisation_of(model, layer: str, split: LoadedSplit, batch: int = 32) -> Optional[Dict]:
    """Pointing game and energy in boxes of the float model's Grad-CAM (GradientTape) on the
    split's fractured images that carry boxes; None when none does."""
    from .gradcam import gradcam_views

    idx = boxed_positives(split.records)
    if not idx:
        return None
    raws = np.concatenate([gradcam_views(model, split.images[idx[k:k + batch]], layer, split.spec)[0]
                           for k in range(0, len(idx), batch)])
    shapes = [split.shapes[i] for i in idx] if split.shapes else None
    _, summary = localise(raws, [split.records[i] for i in idx], split.spec, shapes)
    return {"reference_float_gradcam": summary,
            "of": f"{len(idx)} fractured test image(s) with boxes (of {int(split.labels.sum())} fractured)"}


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
    loc = localisation_of(model, gradcam_layer, test)
    if loc is not None:
        result["test"]["localisation"] = loc
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
        loc = m["test"].get("localisation")
        if loc:
            print("  " + localisation_line(loc["reference_float_gradcam"]))


def localisation_line(s: Dict) -> str:
    lo, hi = s["pointing_game_ci95"]
    return (f"localisation on {s['n']} fractured image(s) with boxes: peak in a box {s['pointing_game']:.3f} "
            f"[{lo:.3f}, {hi:.3f}], energy in boxes {s['energy_in_boxes']:.3f} (chance: boxes cover "
            f"{s['chance']['box_share_of_image']:.3f} of the image; centre in a box {s['chance']['centre_in_box']:.3f})")


def dataset_for_run(run: Dict, data_arg: Optional[str], data_format: Optional[str] = None,
                    unboxed: Optional[str] = None) -> Dataset:
    """The run's data, read the way the run read it (layout and --unboxed from its provenance)
    unless the arguments say otherwise."""
    prov = run["data"]["provenance"]
    kw = {"data_format": data_format or prov.get("format"), "unboxed": unboxed or prov.get("unboxed")}
    if data_arg:
        return load_data(data_arg, data_format=data_format, unboxed=unboxed)
    if run["data"]["phantom"] and "phantom_images" in prov:
        return load_data("phantom", phantom_images=prov["phantom_images"], phantom_seed=prov["phantom_seed"])
    if Path(prov.get("path", "")).is_dir():
        return load_data(prov["path"], **kw)
    return load_data(None)


def evaluate_run(run_dir: Path, data_arg: Optional[str] = None, rule: Optional[str] = None,
                 n_boot: Optional[int] = None, progress: bool = True, data_format: Optional[str] = None,
                 unboxed: Optional[str] = None) -> Dict:
    import keras

    from .models import get_config

    run_dir = Path(run_dir)
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise DataError(f"{run_file}: not a run directory (run.json missing)")
    run = json.loads(run_file.read_text())
    dataset = dataset_for_run(run, data_arg, data_format, unboxed)
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


EPILOG = """\
RUN_DIR: re-evaluates a training run on its own test split (TensorFlow).
--bundle: runs a bundle through the edge runtime on --data (any layout: FracAtlas, a folder per
class, a YOLO export), writes OUT/metrics.json, OUT/predictions.csv and OUT/overlays/ (boxes drawn).
With fractured images only there is no AUC: sensitivity at the bundle's threshold, the
distribution of probabilities and localisation are reported. Exit status: 0 done, 2 bad data,
bundle or arguments.
"""


def main(argv: Optional[List[str]] = None) -> int:
    from .readers import FORMATS, UNBOXED

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, nargs="?", help="a run directory, or a folder of them (from --model all)")
    ap.add_argument("--bundle", type=Path, help="evaluate this bundle through the edge runtime instead (needs --data)")
    ap.add_argument("--data", help="data folder or 'phantom' (default for a run: what it was trained on)")
    ap.add_argument("--data-format", choices=FORMATS, help="the data folder's layout (default: detected)")
    ap.add_argument("--unboxed", choices=UNBOXED,
                    help="YOLO exports: what an image without boxes is (default: unknown, reported apart)")
    ap.add_argument("--threshold-rule", help="run only: 'youden' or 'sensitivity=0.9' (default: the run's)")
    ap.add_argument("--bootstrap", type=int, help="bootstrap resamples for the AUC CI (default: the run's; 2000)")
    ap.add_argument("--artifacts", help="bundle only: comma list of the bundle's artifacts (default: all it holds)")
    ap.add_argument("--subset", default="all", choices=["all", "train", "val", "test"],
                    help="bundle only: which split of the data (from --split, or the data's own split folders)")
    ap.add_argument("--split", type=Path, help="bundle only: a split file (image_id,split) for --subset")
    ap.add_argument("--limit", type=int, help="bundle only: at most this many images, evenly spread (a quick look)")
    ap.add_argument("--overlays", type=int, default=8, help="bundle only: how many cases to draw (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="bundle only: output folder (default: runs/eval/<bundle>_on_<data>)")
    ap.add_argument("--allow-rejected", action="store_true",
                    help="bundle only: also measure a bundle export's gate rejected (OUT.rejected: its int8 copies, say); "
                         "labelled as such, never for use")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.bundle is None):
        ap.error("give a RUN_DIR or --bundle BUNDLE (one of them)")
    if args.bundle is not None:
        return _main_bundle(args, argv)
    try:
        results = {d.name: evaluate_run(d, args.data, args.threshold_rule, args.bootstrap, progress=sys.stderr.isatty(),
                                        data_format=args.data_format, unboxed=args.unboxed)
                   for d in run_dirs_under(args.run_dir)}
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_results(results, args.json)
    return 0


def _main_bundle(args, argv) -> int:
    import shlex

    from edge_runtime.bundle import BundleError

    from .bundle_eval import evaluate_bundle, print_summary
    from .split import load_split

    if not args.data:
        print("error: --bundle needs --data DIR (or --data phantom)", file=sys.stderr)
        return 2
    try:
        ds = load_data(args.data, quiet=args.json, data_format=args.data_format, unboxed=args.unboxed)
        assignment = load_split(args.split, ds) if args.split else None
        out = args.out or Path("runs") / "eval" / f"{args.bundle.resolve().name}_on_{ds.name}"
        keys = [k.strip() for k in args.artifacts.split(",") if k.strip()] if args.artifacts else None
        command = "python -m train.evaluate " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        result = evaluate_bundle(args.bundle, ds, out, keys, args.subset, assignment, args.limit, args.overlays,
                                 args.bootstrap or 2000, progress=sys.stderr.isatty(), command=command,
                                 allow_rejected=args.allow_rejected)
    except (DataError, BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_summary(result)
        print(f"written: {out}/metrics.json, predictions.csv, overlays/ ({len(result['overlays'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
