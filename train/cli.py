"""`python -m train`: train the paper's models on FracAtlas (or phantom data) and evaluate them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from edge_runtime.preprocess import NORMALIZATIONS, RESIZE_MODES, VIEW_MODES
from fracdata.readers import DEFAULT_UNBOXED, FORMATS, UNBOXED

from .distribute import STRATEGIES
from .fit import TrainOptions, ignored_by_classifiers, run_training
from .models.registry import DEFAULT_NORMALIZE, DEFAULT_RESIZE, DEFAULT_VIEWS, PAPER_MODELS

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

preprocessing: each model's registry entry holds its PreprocessSpec (input size, resize,
resampling, normalisation, views; see --list-models); --resize, --normalize and --views override
it for every model trained. The result is recorded in run.json and copied by export into the
bundle's manifest, which the device follows.

outputs: one model -> OUT holds model.keras, split.csv, history.csv, curves.png, roc.png,
confusion.png, metrics.json, predictions.csv, run.json, gradcam/. Several -> OUT/<model>/ each.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="custom_cnn",
                    help="a registry name, a comma list, or 'all' (the paper's four: %s) (default: %%(default)s)"
                         % ", ".join(PAPER_MODELS))
    ap.add_argument("--list-models", action="store_true",
                    help="list the registry's models with their input size and preprocessing, and exit")
    ap.add_argument("--data", help="data folder (FracAtlas, a folder per class, or a YOLO export), or 'phantom' "
                                   "(default: $FRACATLAS_DIR, else ../shared/data/fracatlas, else phantom)")
    ap.add_argument("--data-format", default="auto", choices=FORMATS,
                    help="the data folder's layout (default: %(default)s, detected)")
    ap.add_argument("--unboxed", default=DEFAULT_UNBOXED, choices=UNBOXED,
                    help="YOLO exports: what an image without boxes is; unknown leaves it out (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="run directory, new or empty (default: runs/<model>-<UTC time>)")
    ap.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out (default: refuse)")
    ap.add_argument("--split", type=Path, help="reuse this split file (default: the data's own train/val/test "
                                                "folders where it has them, else make one, seeded; saved in OUT)")
    ap.add_argument("--epochs", type=int, help="max epochs (default: the model's: 30 for the CNNs, 5 for the baselines, "
                                                "56 for fracture_map)")
    ap.add_argument("--batch-size", type=int,
                    help="images per batch (default: the model's: 32; 16 for fracture_map, half real, half phantom)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    ap.add_argument("--patience", type=int, default=8,
                    help="EarlyStopping patience on validation loss; ReduceLROnPlateau waits patience // 2 - 1; "
                         "fracture-map models use neither (cosine decay to the end) (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=42,
                    help="seeds the split, weights, shuffling and augmentation (default: %(default)s)")
    ap.add_argument("--weights", default="imagenet",
                    help="baselines only: imagenet (needs internet), none, or a local file/folder of Keras weights "
                         "(default: %(default)s)")
    ap.add_argument("--mixed-precision", action="store_true",
                    help="train in mixed_float16, worth it on a GPU only; the saved model is float32 (default: off)")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                    help="TensorFlow op determinism, so one --seed gives one model; --no-deterministic is faster "
                         "on a GPU (default: on)")
    ap.add_argument("--size", type=int,
                    help="input size in px (default: the model's registry entry: 128 for the CNNs, 224 for the "
                         "baselines, 256 for fracture_map)")
    ap.add_argument("--resize", choices=RESIZE_MODES,
                    help="how an image becomes the model's square input: stretch it, or letterbox it (keep the "
                         f"aspect ratio, pad) (default: the model's registry entry, {DEFAULT_RESIZE} for every model)")
    ap.add_argument("--normalize", choices=NORMALIZATIONS,
                    help="intensity normalisation inside THE preprocessing, here and on the device (default: the "
                         f"model's registry entry, {DEFAULT_NORMALIZE} for every model)")
    ap.add_argument("--views", choices=VIEW_MODES,
                    help="dihedral: train on every orientation and answer with the mean over the eight; single: as "
                         f"the paper (default: the model's registry entry, {DEFAULT_VIEWS} for every model)")
    ap.add_argument("--photo-augment", action=argparse.BooleanOptionalAction, default=True,
                    help="augment training images with what photos of film do: gamma, contrast, fog, uneven light, "
                         "noise, blur, JPEG, perspective (train/augment.py) (default: on)")
    ap.add_argument("--threshold-rule",
                    help="how the decision threshold is chosen on the validation split: youden or sensitivity=0.9 "
                         "(default: youden; sensitivity=0.9 for a fracture-map model, on each source with fractures)")
    ap.add_argument("--bootstrap", type=int, default=2000,
                    help="bootstrap resamples for the test AUC CI (default: %(default)s)")
    ap.add_argument("--phantom-images", type=int, default=1200,
                    help="size of the phantom set when it is used (default: %(default)s)")
    ap.add_argument("--phantom-mix", type=int, default=0, metavar="N",
                    help="mix N phantom radiographs (seed 0) into real --data, as their own source: split, "
                         "batched and scored apart (default: %(default)s, none)")
    ap.add_argument("--phantom-share", type=float, default=0.5,
                    help="fracture-map models with --phantom-mix: share of each training batch drawn from "
                         "phantoms (default: %(default)s)")
    ap.add_argument("--negative-crop", type=float, default=0.5,
                    help="fracture-map models: share of real training images with boxes drawn as a close crop "
                         "anywhere on the image; a crop that shows no box is a real negative (default: %(default)s)")
    ap.add_argument("--acquisition-augment", action="store_true",
                    help="fracture-map models: also augment with another X-ray system's processing and marks "
                         "(CLAHE, tone curves, unsharp masking, collimation bands, lead markers; train/augment.py, "
                         "Acquisition) on 40%% of training images (default: off; measured in docs/results.md)")
    ap.add_argument("--photo-consistency", type=float, default=0.0, metavar="W",
                    help="fracture-map models: draw each training image twice, as a sample and as the same "
                         "sample photographed (the photo augmentation drawn anew), and add W x the squared "
                         "difference of their pooled logits to the loss; a batch then holds fewer distinct images "
                         "(default: %(default)s, off: measured to make the map call everything fractured, "
                         "docs/results.md)")
    ap.add_argument("--photo-pairs", type=float, default=1.0, metavar="SHARE",
                    help="with --photo-consistency: of half of each batch's samples, the share whose photo takes "
                         "a place in the other half (the rest of that half: other images, as usual) "
                         "(default: %(default)s)")
    ap.add_argument("--train-window", type=int, metavar="PIXELS",
                    help="fracture-map models: train on windows of PIXELS x PIXELS of each augmented input (a "
                         "multiple of the map's cell, half of them on a box) and validate on whole inputs: a "
                         "window costs (PIXELS / size)^2 of a whole input, so more samples fit the same time "
                         "(default: off, whole inputs: measured no better at localising, docs/results.md)")
    ap.add_argument("--close-on-box", type=float, default=0.0, metavar="SHARE",
                    help="fracture-map models: of the real boxed images not drawn as a crop anywhere "
                         "(--negative-crop), the share drawn as a close crop centred on one of their boxes, so a "
                         "fracture is seen enlarged, not only the bone around it (default: 0, off: measured no better against "
                         "the rest of each radiograph, docs/results.md)")
    ap.add_argument("--where-sharpness", type=float, default=1.0, metavar="R",
                    help="fracture-map models: the loss's \"where\" term is -log of the share of a softmax of R x "
                         "the map's logits inside the boxes; above 1 it asks for the peak itself in a box, and weighs "
                         "more (about R x the gap between the highest logit and the highest in a box); 0.25 to 16 "
                         "(default: %(default)s, the reference's)")
    ap.add_argument("--hard-negatives", type=float, default=0.0, metavar="SHARE",
                    help="fracture-map models: that share of the close crops drawn anywhere is centred instead on the "
                         "map's current highest cell away from every box (found again each epoch): the anatomy it "
                         "mistakes for a fracture, shown enlarged (default: 0, off: measured worse against the rest of each "
                         "radiograph, docs/results.md)")
    ap.add_argument("--ema", type=float, default=0.0, metavar="M",
                    help="fracture-map models: keep an exponential moving average of the weights (Polyak averaging, "
                         "momentum M per step, e.g. 0.99), validate and checkpoint it, and ship it "
                         "(default: 0, off: measured no better, docs/results.md)")
    ap.add_argument("--steps-per-epoch", type=int,
                    help="fracture-map models: batches per epoch (default: one pass over the real training "
                         "images at their share of each batch, or over the phantoms without real data)")
    ap.add_argument("--pooling",
                    help="fracture-map models: how the map becomes the image's logit: max, lse:R or topk:K "
                         "(default: the registry entry's, lse:4)")
    ap.add_argument("--strategy", default="default", choices=STRATEGIES,
                    help="where training runs: default (one device), mirrored (every GPU of this host), "
                         "multiworker (several hosts or processes; the cluster comes from $TF_CONFIG, "
                         "docs/training.md 'More than one machine') (default: %(default)s)")
    ap.add_argument("--resume", type=Path, metavar="RUN_DIR",
                    help="continue an interrupted run from its last backup, with the command it was started "
                         "with; refused if the code or the data changed since (checksums in its run.json)")
    ap.add_argument("--cache", type=Path, metavar="DIR",
                    help="keep decoded, resized images in DIR, keyed by the preprocessing and each file's sha256, "
                         "so a later run at the same size skips decoding (default: no cache)")
    ap.add_argument("--decode-workers", type=int, default=0,
                    help="threads decoding images; 0: one per CPU (default: %(default)s)")
    ap.add_argument("--dropout", type=float,
                    help="set every Dropout layer's rate, e.g. 0 to compare runs without dropout's noise "
                         "(default: the model's)")
    ap.add_argument("--max-skip-fraction", type=float, default=0.02,
                    help="stop if a larger share of the images is unreadable (default: %(default)s)")
    ap.add_argument("--json", action="store_true",
                    help="print all metrics as JSON on stdout, progress on stderr (default: a summary line per model)")
    ap.add_argument("--verbose", action="store_true",
                    help="let TensorFlow, absl and oneDNN print their start-up and log lines (default: held back)")
    return ap


def options_from(args: argparse.Namespace, argv: List[str]) -> TrainOptions:
    return TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed,
        weights=args.weights, mixed_precision=args.mixed_precision, deterministic=args.deterministic,
        photo_augment=args.photo_augment, threshold_rule=args.threshold_rule, bootstrap=args.bootstrap,
        size=args.size, resize=args.resize, normalize=args.normalize, views=args.views, split=args.split,
        phantom_share=args.phantom_share, steps_per_epoch=args.steps_per_epoch, pooling=args.pooling,
        negative_crop=args.negative_crop, acquisition_augment=args.acquisition_augment,
        photo_consistency=args.photo_consistency, photo_pairs=args.photo_pairs, train_window=args.train_window,
        close_on_box=args.close_on_box, where_sharpness=args.where_sharpness, ema=args.ema,
        hard_negatives=args.hard_negatives,
        strategy=args.strategy,
        dropout=args.dropout, cache=args.cache,
        decode_workers=args.decode_workers, argv=tuple(argv),
        max_skip_fraction=args.max_skip_fraction, command=" ".join(["python -m train", *argv]),
        quiet_stdout=args.json)


def _models(arg: str) -> List[str]:
    from .models import get_config

    names = list(PAPER_MODELS) if arg == "all" else [m.strip() for m in arg.split(",") if m.strip()]
    for n in names:
        get_config(n)  # raises with a suggestion on a typo
    return names


OUTPUT_ONLY = ("overwrite", "resume", "json", "verbose")  # flags that change how a run reports, not what it trains


def same_command(a: List[str], b: List[str]) -> bool:
    """Do two argument lists ask for the same training? Compared as parsed, with paths resolved and
    the flags that only change the output (--json, --verbose, --overwrite) left out, so
    `--out runs/x` and `--out /abs/runs/x`, or the same flags in another order, are one command."""
    def norm(argv):
        ns = vars(build_parser().parse_args(argv))
        out = {}
        for k, v in ns.items():
            if k in OUTPUT_ONLY:
                continue
            if isinstance(v, Path) or (k == "data" and isinstance(v, str) and os.path.exists(v)):
                v = str(Path(v).resolve())
            out[k] = v
        return out

    try:
        return norm(a) == norm(b)
    except SystemExit:  # a recorded command this version cannot parse is not this command
        return False


def _check_out(out: Path, overwrite: bool, argv: List[str]) -> Optional[dict]:
    """Read-only: may this command write OUT? Returns the run record when OUT holds an interrupted
    run of this same command (which is then resumed), None for a fresh start; FileExistsError
    otherwise. Every worker runs it, so none waits for a chief that has refused."""
    from .job import interrupted, read_record

    if not (out.exists() and any(p.name != LOCK for p in out.iterdir())):
        return None
    if interrupted(out) and not overwrite:
        record = read_record(out)
        if same_command(record["argv"], argv):
            return record
        raise FileExistsError(f"{out}: holds an interrupted run of another command "
                              f"(python -m train {' '.join(record['argv'])}); continue it with --resume {out}, "
                              "or pass --overwrite to start this one there")
    if not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; choose a new --out or pass --overwrite")
    return None


def _prepare_out(out: Path, overwrite: bool, argv: List[str]) -> Optional[dict]:
    """The chief's _check_out, then OUT made ready: a fresh start with --overwrite drops the old
    run's backups and records (so nothing of it is restored or kept as complete)."""
    from .backup import remove

    record = _check_out(out, overwrite, argv)
    if record is None and out.exists():
        for folder in [out / "backup", *out.glob("*/backup")]:
            remove(folder)  # a fresh start must not restore an older run's weights
        for stale in [out / "run.json", *out.glob("*/run.json"), *out.glob("*/metrics.json")]:
            stale.unlink(missing_ok=True)  # nor keep an older run's models as complete
    out.mkdir(parents=True, exist_ok=True)
    return record


LOCK = ".train.lock"


def _lock_out(out: Path):
    """An exclusive lock on OUT for the chief's whole run: two trainings never write one folder."""
    import fcntl

    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FileExistsError(f"{out}: another python -m train is writing it (pid {holder or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _list_models() -> None:
    from .models import get_config, list_models

    for n in list_models():
        c = get_config(n)
        p = c.preprocess
        print(f"{n:<16} {p.size}px {p.resize}/{p.resample}, {p.normalize}, {p.views}  {c.description}")


def _resumed_argv(run_dir: Path) -> List[str]:
    """The command a run folder was started with, to run again into that folder."""
    from .job import read_record

    record = read_record(run_dir)
    if record.get("status") == "complete":
        from .job import ResumeError

        raise ResumeError(f"{run_dir}: the run is complete; there is nothing to resume")
    return list(record["argv"])


def main(argv: Optional[List[str]] = None) -> int:
    lock: List[int] = []
    try:
        return _main(argv, lock)
    finally:
        for fd in lock:  # the run folder's lock ends with the run (in-process callers train again)
            os.close(fd)


def _main(argv: Optional[List[str]], lock: List[int]) -> int:
    from .distribute import ClusterError, task_for
    from .job import ResumeError, check_resumable, checksums

    args = build_parser().parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    if args.list_models:
        _list_models()
        return 0
    try:
        if args.resume:
            run_dir = args.resume
            extra = [a for a in raw_argv if a not in ("--resume", str(args.resume), "--json", "--verbose")
                     and not a.startswith("--resume=")]
            if extra:
                raise ResumeError(f"--resume re-runs the command the run was started with; it takes no other "
                                  f"flags (got {' '.join(extra)}). Start a new run to change them")
            run_dir = args.resume
            output = [a for a in raw_argv if a in ("--json", "--verbose")]
            raw_argv = _resumed_argv(run_dir)
            args = build_parser().parse_args(raw_argv + output)
            args.out = run_dir
        task = task_for(args.strategy)
        if task.strategy == "multiworker" and not args.out:
            raise ClusterError("--strategy multiworker needs --out: a folder every worker sees (the chief writes "
                               "it, and every worker restores from its backup)")
    except (ResumeError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fracdata.console import quiet_start
    from fracdata.data import PHANTOM_BANNER, DataError, load_data

    from .models import UnknownModelError, get_config

    try:
        names = _models(args.model)
        options = options_from(args, raw_argv)
        out = args.out or Path("runs") / f"{args.model.replace(',', '+')}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        if task.chief:
            out.mkdir(parents=True, exist_ok=True)
            lock.append(_lock_out(out))  # held until the run ends
            record = _prepare_out(out, args.overwrite, raw_argv)
        else:
            record = _check_out(out, args.overwrite, raw_argv)
        dataset = load_data(args.data, phantom_images=args.phantom_images, quiet=False,
                            data_format=args.data_format, unboxed=args.unboxed, phantom_mix=args.phantom_mix)
        if all(get_config(n).is_map for n in names):
            dataset.require_boxes_or_both_classes()
        else:
            dataset.require_both_classes()
        if dataset.unlabelled:
            print(f"data: {len(dataset.unlabelled)} unlabelled image(s) left out of training (--unboxed)", file=sys.stderr)
        ignored = ignored_by_classifiers(options, names)
        if ignored:
            print(ignored, file=sys.stderr)
        if args.unboxed == "negative" and any(get_config(n).is_map for n in names):
            print("warning: --unboxed negative trains every image without boxes as intact everywhere, and makes "
                  "its source one with both classes, so the image-level loss applies to it: only right when those "
                  "images are known to be normal (an export's empty label file usually means 'not annotated')",
                  file=sys.stderr)
        if record is not None:
            check_resumable(out, record, raw_argv, checksums(dataset.records, dataset.root))
            if task.chief:
                print(f"resuming the interrupted run in {out}", file=sys.stderr)
        quiet_start(args.verbose, ["tensorflow"])
        results = run_training(names, dataset, out, options)
    except (DataError, UnknownModelError, FileExistsError, ValueError, ResumeError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .evaluate import print_results

    if not task.chief:
        print(f"{task.describe()}: done; the chief writes {out}", file=sys.stderr)
        return 0
    print_results(results, args.json)
    if not args.json:
        print(f"run directory: {out}")
    if dataset.phantom:
        print(PHANTOM_BANNER, file=sys.stderr)
    return 0
