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
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge_runtime.backends import BACKEND_CHOICES
from edge_runtime.imageio import read_grayscale
from edge_runtime.overlay import save_overlay
from edge_runtime.preprocess import PreprocessSpec
from fracdata.data import DataError, load_data
from fracdata.images import LoadedSplit, load_images
from fracdata.readers import FORMATS, UNBOXED
from fracdata.runs import dataset_for_run, read_run, run_dirs
from fracdata.split import load_split, records_by_split

from . import metrics as M
from .localisation import boxed_positives, heat_on_image, localise
from .reference import gradcam_reference, predict


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


def localisation_of(model, layer: str, split: LoadedSplit) -> Optional[Dict]:
    """Pointing game and energy in boxes of the float model's Grad-CAM (GradientTape) on the
    split's fractured images that carry boxes; None when none does."""
    idx = boxed_positives(split.records)
    if not idx:
        return None
    raws = gradcam_reference(model, layer, split.images[idx], split.spec)
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
        if m.get("kind") == "fracture_map":
            from .map_evaluate import summary_lines

            print("\n".join(summary_lines(m["model"], m)) + ("   [PHANTOM: demonstration only]" if m["phantom"] else ""))
            continue
        print(summary_line(m["model"], m) + ("   [PHANTOM: demonstration only]" if m["phantom"] else ""))
        loc = m["test"].get("localisation")
        if loc:
            print("  " + localisation_line(loc["reference_float_gradcam"]))


def localisation_line(s: Dict) -> str:
    lo, hi = s["pointing_game_ci95"]
    la = s.get("location_auc")
    auc = "" if la is None else (f", location AUC {la:.3f} [{s['location_auc_ci95'][0]:.3f}, "
                                 f"{s['location_auc_ci95'][1]:.3f}]")
    return (f"localisation on {s['n']} fractured image(s) with boxes: peak in a box {s['pointing_game']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] (outside every box {s['peak_outside_boxes']:.3f}){auc}, energy in boxes "
            f"{s['energy_in_boxes']:.3f} (chance: boxes cover "
            f"{s['chance']['box_share_of_image']:.3f} of the image; centre in a box {s['chance']['centre_in_box']:.3f})")


def evaluate_run(run_dir: Path, data_arg: Optional[str] = None, rule: Optional[str] = None,
                 n_boot: Optional[int] = None, progress: bool = True, data_format: Optional[str] = None,
                 unboxed: Optional[str] = None, views: Optional[str] = None) -> Dict:
    """Evaluate a run on its test split; writes metrics.json. `views` other than the run's own
    answers "what if the device averaged these views?" into RUN_DIR/views-<views>/ (metrics.json and
    its plots), leaving the run's own metrics alone."""
    from .models import get_config, load_model

    found = read_run(run_dir)
    run_dir, run = found.dir, found.record
    dataset = dataset_for_run(run, data_arg, data_format, unboxed)
    parts = records_by_split(dataset, load_split(found.split_path, dataset))
    spec = PreprocessSpec.from_dict(run["preprocess"])
    what_if = views is not None and views != spec.views
    if what_if:
        from dataclasses import replace

        spec = replace(spec, views=views)
        run_dir = run_dir / f"views-{views}"
        run_dir.mkdir(exist_ok=True)
    val = load_images(parts["val"], spec, "val images", progress)
    test = load_images(parts["test"], spec, "test images", progress)
    model = load_model(found.model_path)
    cfg = get_config(run["model"]["name"])
    settings = run["evaluation"]
    evaluate = evaluate_model
    if cfg.is_map:
        from .map_evaluate import evaluate_map_model as evaluate
    result = evaluate(model, cfg.name, cfg.gradcam_layer, val, test, run_dir,
                      rule or settings["threshold_rule"], n_boot or settings["bootstrap"],
                      settings["seed"], title=run["title"])
    result = {**_header(run), **result, **({"views_what_if": views} if what_if else {})}
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _header(run: Dict) -> Dict:
    return {"model": run["model"]["name"], "data": run["data"]["name"], "phantom": run["data"]["phantom"],
            "demonstration_only": run["data"]["phantom"], "split_sha256": run["split"]["sha256"],
            "complexity": run["model"]["complexity"]}


EPILOG = """\
RUN_DIR: re-evaluates a training run on its own test split (TensorFlow).
--bundle: runs a bundle through the edge runtime on --data (any layout: FracAtlas, a folder per
class, a YOLO export), writes OUT/metrics.json, OUT/predictions.csv and OUT/overlays/ (boxes drawn).
With fractured images only there is no AUC: sensitivity at the bundle's threshold, the
distribution of probabilities and localisation are reported. Exit status: 0 done, 2 bad data,
bundle or arguments.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR",
                    help="a run directory, or a folder of them (from --model all); give this or --bundle")
    ap.add_argument("--bundle", type=Path, help="evaluate this bundle through the edge runtime instead (needs --data)")
    ap.add_argument("--data", help="data folder or 'phantom' (default for a run: what it was trained on; "
                                   "a bundle needs it)")
    ap.add_argument("--data-format", choices=FORMATS,
                    help="the data folder's layout (default: the run's for a run, else detected)")
    ap.add_argument("--unboxed", choices=UNBOXED,
                    help="YOLO exports: what an image without boxes is (default: the run's for a run, else unknown, "
                         "reported apart)")
    ap.add_argument("--threshold-rule", help="run only: 'youden' or 'sensitivity=0.9' (default: the run's)")
    ap.add_argument("--views", choices=["single", "dihedral"],
                    help="run only: evaluate as if the device averaged these views; written to RUN_DIR/views-<views>/ "
                         "(default: the run's own)")
    ap.add_argument("--bootstrap", type=int,
                    help="bootstrap resamples for the AUC CI (default: the run's for a run, 2000 for a bundle)")
    ap.add_argument("--artifacts", help="bundle only: comma list of the bundle's artifacts (default: all it holds)")
    ap.add_argument("--subset", default="all", choices=["all", "train", "val", "test"],
                    help="bundle only: which split of the data, from --split or the data's own split folders "
                         "(default: %(default)s)")
    ap.add_argument("--split", type=Path,
                    help="bundle only: a split file (image_id,split) for --subset (default: the data's own folders)")
    ap.add_argument("--limit", type=int,
                    help="bundle only: at most this many images, evenly spread, for a quick look (default: all)")
    ap.add_argument("--overlays", type=int, default=8, help="bundle only: how many cases to draw (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="bundle only: output folder (default: runs/eval/<bundle>_on_<data>)")
    ap.add_argument("--allow-rejected", action="store_true",
                    help="bundle only: also measure a bundle export's gate rejected (OUT.rejected: its int8 copies, say); "
                         "labelled as such, never for use (default: refuse it)")
    ap.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                    help="bundle only: the interpreter (default: %(default)s, the first installed that runs each artifact)")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout (default: a summary)")
    ap.add_argument("--verbose", action="store_true",
                    help="let TensorFlow, absl and oneDNN print their start-up and log lines (default: held back)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.bundle is None):
        ap.error("give a RUN_DIR or --bundle BUNDLE (one of them)")
    if args.bundle is not None:
        return _main_bundle(args, argv)
    from fracdata.console import quiet_start

    quiet_start(args.verbose, ["tensorflow"])
    try:
        results = {d.name: evaluate_run(d, args.data, args.threshold_rule, args.bootstrap,
                                        data_format=args.data_format, unboxed=args.unboxed, views=args.views)
                   for d in run_dirs(args.run_dir)}
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_results(results, args.json)
    return 0


def _main_bundle(args, argv) -> int:
    import shlex

    from edge_runtime.bundle import BundleError

    from .bundle_eval import evaluate_bundle, print_summary

    if not args.data:
        print("error: --bundle needs --data DIR (or --data phantom)", file=sys.stderr)
        return 2
    try:
        ds = load_data(args.data, quiet=args.json, data_format=args.data_format, unboxed=args.unboxed)
        assignment = load_split(args.split, ds, other_sources=True) if args.split else None
        out = args.out or Path("runs") / "eval" / f"{args.bundle.resolve().name}_on_{ds.name}"
        keys = [k.strip() for k in args.artifacts.split(",") if k.strip()] if args.artifacts else None
        command = "python -m train.evaluate " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        result = evaluate_bundle(args.bundle, ds, out, keys, args.subset, assignment, args.limit, args.overlays,
                                 args.bootstrap or 2000, progress=True, command=command,
                                 allow_rejected=args.allow_rejected, backend=args.backend)
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
