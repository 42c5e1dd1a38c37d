"""`python -m train`: train the paper's models on FracAtlas (or phantom data) and evaluate them."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

from edge_runtime.preprocess import NORMALIZATIONS, VIEW_MODES

from .readers import DEFAULT_UNBOXED, FORMATS, UNBOXED

PAPER_MODELS = ["custom_cnn", "efficientnetb0", "mobilenetv2", "resnet50"]
DEFAULT_NORMALIZE = "window"  # chosen by measurement: docs/results.md, "Intensity normalisation"

EPILOG = """\
data: --data PATH, else $FRACATLAS_DIR, else ../shared/data/fracatlas, else PHANTOM data
(synthetic, loudly labelled: a demonstration, not a clinical model). PATH may hold FracAtlas
(dataset.csv + images/), a folder per class (fractured/ beside 'not fractured/', non_fractured/ or
normal/, at the top or under train/val/test: that split is used) or a YOLO export (images/ +
labels/, images with boxes are fractured; see --unboxed); the layout is detected, --data-format
overrides. A missing folder, CSV, column or bad CSV value stops the run. A listed image that is
missing, corrupt or not an image is skipped, named on stderr and counted in run.json; more than
--max-skip-fraction of them stops it. Images that sit in two splits as the same or nearly the
same picture are reported on stderr and in run.json (train/duplicates.py).

outputs: one model -> OUT holds model.keras, split.csv, history.csv, curves.png, roc.png,
confusion.png, metrics.json, predictions.csv, run.json, gradcam/. Several -> OUT/<model>/ each.
"""


def parse_args(argv: Optional[List[str]]):
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="custom_cnn",
                    help="a registry name, a comma list, or 'all' (the paper's four: %s)" % ", ".join(PAPER_MODELS))
    ap.add_argument("--list-models", action="store_true", help="list registry models and exit")
    ap.add_argument("--data", help="data folder (FracAtlas, a folder per class, or a YOLO export), or 'phantom'")
    ap.add_argument("--data-format", default="auto", choices=FORMATS,
                    help="the data folder's layout (default: %(default)s, detected)")
    ap.add_argument("--unboxed", default=DEFAULT_UNBOXED, choices=UNBOXED,
                    help="YOLO exports: what an image without boxes is; unknown leaves it out (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="run directory (default runs/<model>-<UTC time>); must be new or empty")
    ap.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    ap.add_argument("--split", type=Path, help="reuse this split file (default: the data's own train/val/test "
                                                "folders where it has them, else make one, seeded; saved in OUT)")
    ap.add_argument("--epochs", type=int, help="max epochs (default: the paper's, 30 for the CNN, 5 for baselines)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--patience", type=int, default=8,
                    help="EarlyStopping patience on validation loss (ReduceLROnPlateau waits patience // 2 - 1)")
    ap.add_argument("--seed", type=int, default=42, help="seeds the split, weights, shuffling and augmentation")
    ap.add_argument("--weights", default="imagenet",
                    help="baselines only: imagenet (needs internet), none, or a local file/folder of Keras weights")
    ap.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (worth it on a GPU only)")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                    help="TensorFlow op determinism, so one --seed gives one model (--no-deterministic: faster on GPU)")
    ap.add_argument("--normalize", default=DEFAULT_NORMALIZE, choices=NORMALIZATIONS,
                    help="intensity normalisation inside THE preprocessing, here and on the device (default: %(default)s)")
    ap.add_argument("--views", default="dihedral", choices=VIEW_MODES,
                    help="dihedral: train on every orientation and answer with the mean over the eight; "
                         "single: as the paper (default: %(default)s)")
    ap.add_argument("--photo-augment", action=argparse.BooleanOptionalAction, default=True,
                    help="augment training images with what photos of film do: gamma, contrast, fog, uneven light, "
                         "noise, blur, JPEG, perspective (train/augment.py)")
    ap.add_argument("--threshold-rule", default="youden",
                    help="how the decision threshold is chosen on the validation split: youden or sensitivity=0.9")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the test AUC CI")
    ap.add_argument("--phantom-images", type=int, default=1200, help="size of the phantom set when it is used")
    ap.add_argument("--max-skip-fraction", type=float, default=0.02, help="stop if more images than this are unreadable")
    ap.add_argument("--json", action="store_true", help="print all metrics as JSON on stdout (progress on stderr)")
    return ap.parse_args(argv)


def _models(arg: str) -> List[str]:
    from .models import get_config

    names = PAPER_MODELS if arg == "all" else [m.strip() for m in arg.split(",") if m.strip()]
    for n in names:
        get_config(n)  # raises with a suggestion on a typo
    return names


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; choose a new --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter off the console
    args = parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    from .data import DataError, load_data
    from .models import UnknownModelError, list_models

    if args.list_models:
        from .models import get_config
        for n in list_models():
            c = get_config(n)
            print(f"{n:<16} {c.input_size}px  {c.description}")
        return 0
    try:
        names = _models(args.model)
        from .metrics import parse_rule
        parse_rule(args.threshold_rule)  # a typo here should not cost a training run
        out = args.out or Path("runs") / f"{args.model.replace(',', '+')}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        _prepare_out(out, args.overwrite)
        dataset = load_data(args.data, phantom_images=args.phantom_images, quiet=False,
                            data_format=args.data_format, unboxed=args.unboxed)
        dataset.require_both_classes()
        if dataset.unlabelled:
            print(f"data: {len(dataset.unlabelled)} unlabelled image(s) left out of training (--unboxed)", file=sys.stderr)
        results = run_training(names, dataset, out, args, raw_argv)
    except (DataError, UnknownModelError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .data import PHANTOM_BANNER
    from .evaluate import print_results

    print_results(results, args.json)
    if not args.json:
        print(f"run directory: {out}")
    if dataset.phantom:
        print(PHANTOM_BANNER, file=sys.stderr)
    return 0


def run_training(names: List[str], dataset, out: Path, args, raw_argv: List[str]):
    from edge_runtime.preprocess import PreprocessSpec

    from .dataset import load_images
    from .fit import train_one
    from .models import build_model, get_config
    from .duplicates import across_splits, warning_lines
    from .readers import layout_split
    from .split import file_sha256, load_split, make_split, records_by_split, save_split

    for name in names:  # fail before hours of training, not after: fetch or find every model's weights now
        if get_config(name).pretrained:
            build_model(name, weights=args.weights)
    split_path = out / "split.csv"
    if args.split:
        assignment = load_split(args.split, dataset)
        if args.split.resolve() != split_path.resolve():
            shutil.copyfile(args.split, split_path)
        made = f"reused {args.split}"
    elif layout_split(dataset, args.seed) is not None:
        assignment = layout_split(dataset, args.seed)
        save_split(assignment, dataset, split_path)
        carved = sorted({s for s in ("val", "test") if not any(r.split == s for r in dataset.records)})
        made = ("the data's own split folders (honoured)"
                + (f"; {' and '.join(carved)} carved from train (seed {args.seed}, stratified by label)" if carved else ""))
    else:
        assignment = make_split(dataset, seed=args.seed)
        save_split(assignment, dataset, split_path)
        made = f"made by train.split (seed {args.seed}, 70/15/15, stratified label x region)"
    split_info = {"file": "split.csv", "sha256": file_sha256(split_path), "made": made}
    records = records_by_split(dataset, assignment)
    cache = {}
    results = {}
    for name in names:
        size = get_config(name).input_size
        if size not in cache:
            spec = PreprocessSpec(size=size, normalize=args.normalize, views=args.views)
            cache[size] = {s: load_images(rs, spec, f"{s} images {size}px", sys.stderr.isatty(), args.max_skip_fraction)
                           for s, rs in records.items()}
            if "duplicates" not in split_info:  # once: the same images whatever the input size
                report = across_splits(cache[size], phantom=dataset.phantom)
                split_info["duplicates"] = {k: v for k, v in report.items() if k != "listed"}
                for line in warning_lines(report, dataset.phantom):
                    print(line, file=sys.stderr)
        model_dir = out if len(names) == 1 else out / name
        if model_dir != out:
            model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(split_path, model_dir / "split.csv")
        print(f"== training {name} -> {model_dir}", file=sys.stderr)
        results[name] = train_one(
            name, dataset, cache[size], split_info, model_dir, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, seed=args.seed, weights=args.weights, mixed_precision=args.mixed_precision,
            threshold_rule=args.threshold_rule, n_boot=args.bootstrap, patience=args.patience,
            argv=raw_argv, quiet_stdout=args.json, deterministic=args.deterministic, photo_augment=args.photo_augment)
    if len(names) > 1:
        from .evaluate import summary_line
        head = ["PHANTOM DATA: demonstration only, not clinical results"] if dataset.phantom else []
        (out / "summary.txt").write_text("\n".join(head + [summary_line(n, m) for n, m in results.items()]) + "\n")
    return results
