"""Train registry models into a run directory with the paper's recipe and honest bookkeeping.

`run_training` (several models, one split, images loaded once per preprocessing) and `train_one`
(one model) take their settings as one typed `TrainOptions`; `python -m train` (train/cli.py)
only turns flags into it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.preprocess import NORMALIZATIONS, RESIZE_MODES, VIEW_MODES, PreprocessSpec
from fracdata.data import Dataset
from fracdata.images import LoadedSplit, load_images
from fracdata.provenance import sha256_file, versions
from fracdata.split import load_split, records_by_split, save_split, split_summary

from .augment import describe as describe_augmentation
from .dataset import make_tf_dataset, step_dataset, training_batch
from .distribute import STRATEGIES
from .evaluate import _header, evaluate_model

MAP_RULE = "sensitivity=0.9"
TRAIN_PACKAGES = ("tensorflow", "keras", "numpy", "pillow", "scikit-learn", "matplotlib")


@dataclass(frozen=True)
class TrainOptions:
    """How to train (every field has the CLI's default). The preprocessing fields override the
    model's registry entry where set; None keeps the entry's."""
    epochs: Optional[int] = None  # None: the model's default_epochs
    batch_size: Optional[int] = None  # None: the model's default (32; 16 for fracture_map)
    lr: float = 1e-3
    patience: int = 8  # EarlyStopping on validation loss; ReduceLROnPlateau waits patience // 2 - 1
    seed: int = 42  # the split, weights, shuffling and augmentation
    weights: str = "imagenet"  # baselines only: imagenet, none, or a local file or folder
    mixed_precision: bool = False
    deterministic: bool = True  # TensorFlow op determinism
    photo_augment: bool = True
    threshold_rule: Optional[str] = None  # youden | sensitivity=X; None: youden, or sensitivity=0.9 for a map model
    bootstrap: int = 2000  # resamples for the test AUC CI
    size: Optional[int] = None  # input size (px); None: the registry entry's
    resize: Optional[str] = None  # stretch | letterbox
    normalize: Optional[str] = None  # window | clahe | none
    views: Optional[str] = None  # dihedral | single
    split: Optional[Path] = None  # reuse this split file
    max_skip_fraction: float = 0.02  # stop if more images than this are unreadable
    command: str = "python -m train"  # recorded in run.json
    quiet_stdout: bool = False  # Keras's output to stderr (stdout carries JSON)
    progress: bool = True  # progress of image loading on stderr
    # Fracture-map models only (train/map_fit.py):
    phantom_share: float = 0.5  # share of each training batch drawn from phantoms, when real data is mixed in
    steps_per_epoch: Optional[int] = None  # None: one pass over the real training images at their share
    pooling: Optional[str] = None  # map pooling: max | lse:R | topk:K; None: the registry entry's
    negative_crop: float = 0.5  # share of real boxed training images drawn as a close crop (box-free: a negative)
    acquisition_augment: bool = False  # fracture maps: another X-ray system's processing and marks (train/augment.py)
    photo_consistency: float = 0.0  # fracture maps: weight of a sample's and its photo's pooled-logit difference
    photo_pairs: float = 1.0  # of half of each batch's samples, the share photographed as the other half
    train_window: Optional[int] = None  # fracture maps: train on windows of this many pixels (None: the whole input)
    close_on_box: float = 0.0  # fracture maps: share of real boxed draws (not a crop anywhere) made a close crop on a box
    where_sharpness: float = 1.0  # fracture maps: the "where" term's softmax sharpness (1: the reference's)
    ema: float = 0.0  # fracture maps: momentum of the weights' moving average kept and shipped (0: off)
    hard_negatives: float = 0.0  # fracture maps: share of close crops centred on the map's current false peak
    # (MAP_ONLY below names these; a classifier's run warns when one is set)
    # Where and how training runs (train/distribute.py, train/backup.py):
    strategy: str = "default"  # default | mirrored | multiworker (TF_CONFIG)
    dropout: Optional[float] = None  # every Dropout layer's rate; None keeps the model's
    cache: Optional[Path] = None  # on-disk cache of decoded, resized images
    decode_workers: int = 0  # threads decoding images; 0: one per CPU
    argv: Tuple[str, ...] = ()  # the command's arguments, recorded in run.json for --resume

    def __post_init__(self) -> None:
        from .metrics import parse_rule

        if self.threshold_rule is not None:
            parse_rule(self.threshold_rule)  # a typo here should not cost a training run
        for name in ("batch_size", "patience", "bootstrap"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.size is not None and not 32 <= self.size <= 1024:
            raise ValueError(f"size must be within 32..1024, got {self.size}")
        if not 0.0 <= self.negative_crop <= 1.0:
            raise ValueError(f"negative_crop must be within [0, 1], got {self.negative_crop}")
        if not 0.0 <= self.close_on_box <= 1.0:
            raise ValueError(f"close_on_box must be within [0, 1], got {self.close_on_box}")
        if not 0.25 <= self.where_sharpness <= 16.0:
            raise ValueError(f"where_sharpness must be within [0.25, 16], got {self.where_sharpness}")
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be within [0, 1], got {self.hard_negatives}")
        if not (self.ema == 0.0 or 0.5 <= self.ema < 1.0):
            raise ValueError(f"ema must be 0 (off) or within [0.5, 1), got {self.ema}")
        if self.photo_consistency < 0.0:
            raise ValueError(f"photo_consistency must be 0 (off) or more, got {self.photo_consistency}")
        if not 0.0 < self.photo_pairs <= 1.0:
            raise ValueError(f"photo_pairs must be within (0, 1], got {self.photo_pairs}")
        if self.photo_consistency and not self.photo_augment:
            raise ValueError("photo_consistency pairs a sample with its photo: it needs the photo augmentation on")
        if self.photo_consistency and self.batch_size is not None and self.batch_size % 2:
            raise ValueError(f"photo_consistency draws each image twice: the batch size must be even, "
                             f"got {self.batch_size}")
        if self.train_window is not None and (self.train_window < 32 or self.train_window % 8):
            raise ValueError(f"train_window must be a multiple of 8 (the map's cell) and at least 32, "
                             f"got {self.train_window}")
        if not 0.0 <= self.phantom_share < 1.0:
            raise ValueError(f"phantom_share must be within [0, 1): a share of 1 would never show the real "
                             f"images, got {self.phantom_share}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.pooling is not None:
            parse_pooling(self.pooling)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be within [0, 1), got {self.dropout}")
        if self.decode_workers < 0:
            raise ValueError(f"decode_workers must be 0 (one per CPU) or more, got {self.decode_workers}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be within [0, 1], got {self.max_skip_fraction}")
        for name, allowed in (("resize", RESIZE_MODES), ("normalize", NORMALIZATIONS), ("views", VIEW_MODES),
                              ("strategy", STRATEGIES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    def preprocess_for(self, base: PreprocessSpec) -> PreprocessSpec:
        """The model's registry PreprocessSpec with these options' overrides."""
        overrides = {k: getattr(self, k) for k in ("size", "resize", "normalize", "views") if getattr(self, k) is not None}
        return replace(base, **overrides)


MAP_ONLY = ("phantom_share", "steps_per_epoch", "pooling", "negative_crop", "acquisition_augment",
            "photo_consistency", "photo_pairs", "train_window", "close_on_box", "where_sharpness", "ema", "hard_negatives")


def ignored_by_classifiers(options: TrainOptions, names) -> Optional[str]:
    """A warning naming the fracture-map options set away from their defaults, when some model to
    train is a classifier, which ignores them (a silent no-op would pass for a measured choice)."""
    from .models import get_config

    defaults = TrainOptions()
    changed = [f"--{n.replace('_', '-')}" for n in MAP_ONLY if getattr(options, n) != getattr(defaults, n)]
    classifiers = [n for n in names if not get_config(n).is_map]
    if not (changed and classifiers):
        return None
    return (f"warning: {', '.join(changed)} apply to fracture-map models only: ignored for "
            f"{', '.join(classifiers)}")


def parse_pooling(text: str):
    """'max', 'lse:4' or 'topk:8' -> MapPooling (ValueError naming the problem)."""
    from edge_runtime.fracture_map import MapPooling

    return MapPooling.parse(text)


def devices(task=None) -> Dict[str, object]:
    from .distribute import gpus

    return {"gpus": gpus(), "strategy": task.describe() if task else "default",
            **({"workers": task.workers, "replicas_in_sync": task_replicas(task)} if task else {})}


def task_replicas(task) -> int:
    from .distribute import make_strategy, replicas

    return replicas(make_strategy(task))


def set_dropout(model, rate: Optional[float]) -> None:
    """Every Dropout layer's rate, where a run sets one (0 compares runs without dropout's noise)."""
    if rate is None:
        return
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = float(rate)


def _deterministic_ops() -> None:
    """Same seed, same model: TensorFlow otherwise picks non-deterministic kernels (oneDNN, cuDNN)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def class_weights(labels: np.ndarray) -> Dict[int, float]:
    """'balanced' weights, so 717 fractured count as much as 3,366 non-fractured."""
    from sklearn.utils.class_weight import compute_class_weight

    w = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    return {0: float(w[0]), 1: float(w[1])}


@dataclass
class Placement:
    """Where a model trains: the cluster task, its strategy, and the folders it writes and restores."""
    task: object  # train.distribute.Task
    strategy: object  # tf.distribute.Strategy
    backup_dir: Path  # the chief's backup folder, which every worker restores from

    @property
    def chief(self) -> bool:
        return self.task.chief


def train_one(name: str, dataset: Dataset, parts: Dict[str, LoadedSplit], split_info: Dict, out_dir: Path,
              spec: PreprocessSpec, options: TrainOptions = TrainOptions(), placement: Optional[Placement] = None,
              checksums: Optional[Dict[str, str]] = None) -> Dict:
    """Fit one model on `parts` (loaded with `spec`), save it and run.json, evaluate it on test.
    A worker that is not the chief trains its share and returns {} (it writes only to `out_dir`,
    its own temporary folder)."""
    import keras

    from . import backup
    from .distribute import check_batch, make_strategy, replicas, task_for
    from .models import build_model, get_config
    from .models.complexity import complexity
    from .plots import plot_history

    if any(part.spec != spec for part in parts.values()):
        raise ValueError(f"{name}: the images were loaded with another PreprocessSpec than the one given")
    cfg = get_config(name)
    # A screening operating point for the map: sensitivity first (docs/training.md).
    o = replace(options, threshold_rule=options.threshold_rule or (MAP_RULE if cfg.is_map else "youden"),
                batch_size=options.batch_size or cfg.default_batch)
    epochs = o.epochs or cfg.default_epochs
    out_dir.mkdir(parents=True, exist_ok=True)
    if placement is None:
        task = task_for(o.strategy)
        placement = Placement(task, make_strategy(task), out_dir / "backup")
    strategy = placement.strategy
    n_replicas = replicas(strategy)
    check_batch(o.batch_size, n_replicas)
    restored = backup.restored_state(placement.backup_dir)
    start = restored["epoch"]
    finished = start >= epochs or restored["stopped"]  # trained to its end (or early-stopped) before the kill
    if finished:  # what is left is the evaluation
        kept = backup.latest(placement.backup_dir)
        if placement.chief and not (kept / ckpt_path(out_dir).name).is_file():
            raise ValueError(f"{name}: the backup says training finished, but holds no best checkpoint; "
                             "start a new run (--overwrite)")
        print(f"{name}: training finished before the interruption; evaluating", file=sys.stderr)
    elif start:
        print(f"resuming {name} from the backup after epoch {start} ({placement.backup_dir})", file=sys.stderr)
    keras.utils.set_random_seed(o.seed)
    if o.deterministic:
        _deterministic_ops()
    keras.mixed_precision.set_global_policy("mixed_float16" if o.mixed_precision else "float32")
    pooling = parse_pooling(o.pooling) if (cfg.is_map and o.pooling) else cfg.map_pooling
    train, val, test = parts["train"], parts["val"], parts["test"]
    ckpt = ckpt_path(out_dir)
    history = out_dir / "history.csv"
    backup.trim_history(history, start)
    callbacks = [
        epoch_timer(),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=o.patience),
        keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, o.patience // 2 - 1),
                                          min_lr=1e-6),
        keras.callbacks.CSVLogger(str(history), append=start > 0),
    ]
    # Last, so its restore comes after the others reset themselves at the start of training.
    callbacks.append(backup.backup_callback(placement.backup_dir, placement.chief, callbacks, ckpt))
    title = f"{name} on {'PHANTOM data (demonstration)' if dataset.phantom else dataset.name}"
    t0 = time.time()
    # verbose=2 off a terminal: one line per epoch, so a log shows training is alive without bars.
    with contextlib.redirect_stdout(sys.stderr) if o.quiet_stdout else contextlib.nullcontext():
        if cfg.is_map:
            from .map_fit import fit_map

            with strategy.scope():
                model = build_model(name, size=spec.size, pooling=pooling, any_size=o.train_window is not None)
            _for_training(model, o, n_replicas)
            fitted, training = fit_map(model, parts, spec, cfg.map_stride, o, epochs, callbacks, strategy, start,
                                       train=not finished)
        else:
            from .distribute import distributed

            with strategy.scope():
                model = build_model(name, weights=o.weights, size=spec.size)
                _for_training(model, o, n_replicas)
                model.compile(optimizer=keras.optimizers.Adam(o.lr), loss="binary_crossentropy",
                              metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")])
            cw = class_weights(train.labels)
            batch_of, steps = training_batch(train, o.batch_size, o.seed, o.photo_augment, n_replicas, cw)
            size = spec.size
            import tensorflow as tf

            sig = (tf.TensorSpec((None, size, size, 1), tf.float32), tf.TensorSpec((None,), tf.float32),
                   tf.TensorSpec((None,), tf.float32))
            train_ds = distributed(strategy, lambda k, n, local: step_dataset(batch_of, sig, start * steps,
                                                                              epochs * steps, k, n, local))
            if not finished:
                model.fit(train_ds, steps_per_epoch=steps,
                          validation_data=make_tf_dataset(val, o.batch_size, False, o.seed, class_weight=cw,
                                                          strategy=strategy),
                          epochs=epochs, initial_epoch=start, callbacks=callbacks,
                          verbose=1 if sys.stderr.isatty() else 2)
            fitted = model
            training = {"loss": "binary_crossentropy", "class_weight": cw,
                        "validation_loss": "class-weighted like training (EarlyStopping, checkpoint)",
                        "augmentation": describe_augmentation(spec.views == "dihedral", o.photo_augment)}
    train_seconds = time.time() - t0
    if finished:  # no fit ran to restore the backup: restore the last epoch's weights (and checkpoint) here
        callbacks[-1].set_model(fitted)
        callbacks[-1]._load_model()
    digest = weights_digest(model)
    print(f"{name}: trained ({placement.task.describe()}); weights sha256 {digest}", file=sys.stderr)
    if not placement.chief:
        return {}
    fitted.load_weights(ckpt)  # the best epoch's; the file stays until the run is complete
    # Save a float32, optimizer-free copy: what export and the runtime need, a third of the size.
    keras.mixed_precision.set_global_policy("float32")
    clean = build_model(name, weights="none", size=spec.size, pooling=pooling)
    clean.set_weights(model.get_weights())
    clean.save(out_dir / "model.keras")
    model_digest = weights_digest(clean)
    plot_history(history, out_dir / "curves.png", title)
    epochs_run = _epochs_in(history)

    run = {
        "title": title,
        "status": "complete",
        "command": o.command,
        "argv": list(o.argv),
        "checksums": checksums or {},
        "started_unix": t0, "train_seconds": round(train_seconds, 1),
        # the weights at the last epoch trained (what workers, and a resumed run, agree on), and
        # those of model.keras (the best epoch's, which export ships)
        "last_epoch_weights_sha256": digest, "model_weights_sha256": model_digest,
        **({"resumed_from_epoch": start} if start else {}),
        "model": {"name": name, "description": cfg.description, "input_size": spec.size,
                  "gradcam_layer": cfg.gradcam_layer, "weights": o.weights if cfg.pretrained else "from scratch",
                  "complexity": complexity(clean),
                  **({"kind": "fracture_map", "map_stride": cfg.map_stride, "pooling": pooling.to_dict()}
                     if cfg.is_map else {})},
        "training": {"epochs_max": epochs, "epochs_run": epochs_run,
                     "batch_size": o.batch_size, "batch_per_replica": o.batch_size // n_replicas,
                     "learning_rate": o.lr, "optimizer": "Adam", "seed": o.seed,
                     "mixed_precision": o.mixed_precision, "early_stopping_patience": o.patience,
                     "deterministic_ops": o.deterministic,
                     **({"dropout_override": o.dropout} if o.dropout is not None else {}), **training},
        "preprocess": spec.to_dict(),
        "data": {"name": dataset.name, "phantom": dataset.phantom, "provenance": dataset.provenance,
                 "counts": dataset.counts(), "skipped_train": train.skipped},
        "split": {**split_info, "counts": split_summary({k: v.records for k, v in parts.items()})},
        "evaluation": {"threshold_rule": o.threshold_rule, "bootstrap": o.bootstrap, "seed": o.seed},
        "versions": versions(TRAIN_PACKAGES), "devices": devices(placement.task),
    }
    if cfg.is_map:
        from .map_evaluate import evaluate_map_model

        result = evaluate_map_model(clean, name, cfg.gradcam_layer, val, test, out_dir, o.threshold_rule, o.bootstrap,
                                    o.seed, title)
    else:
        result = evaluate_model(clean, name, cfg.gradcam_layer, val, test, out_dir, o.threshold_rule, o.bootstrap,
                                o.seed, title)
    result = {**_header(run), **result}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    # run.json last: "complete" means every file of the run is there.
    (out_dir / "run.json").write_text(json.dumps(run, indent=2))
    backup.remove(placement.backup_dir)
    ckpt.unlink(missing_ok=True)
    return result


def ckpt_path(out_dir: Path) -> Path:
    return out_dir / "best.weights.h5"


def epoch_timer():
    """Adds each epoch's wall time (training and validation) to the logs, so history.csv shows it."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self.t0

    return EpochTimer()


def weights_digest(model) -> str:
    """sha256 of every weight's bytes: two workers, or a resumed and an uninterrupted run, agree
    on it exactly when they hold the same model."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()


def _for_training(model, o: TrainOptions, n_replicas: int) -> None:
    from .distribute import synchronise_batchnorm

    set_dropout(model, o.dropout)
    if n_replicas > 1:
        synchronise_batchnorm(model)


def _epochs_in(history_csv: Path) -> int:
    try:
        return max(0, len(history_csv.read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def _split(dataset: Dataset, out: Path, options: TrainOptions) -> Tuple[Dict[str, str], str]:
    """The split (reused, or made per source: the data's own folders, else drawn with copies kept
    together) saved as OUT/split.csv, and how it came."""
    from .split import split_by_source

    split_path = out / "split.csv"
    if options.split:
        assignment = load_split(options.split, dataset)
        if options.split.resolve() != split_path.resolve():
            shutil.copyfile(options.split, split_path)
        return assignment, f"reused {options.split}"
    assignment, how = split_by_source(dataset, options.seed, options.progress)
    save_split(assignment, dataset, split_path)
    return assignment, how


def run_training(names: Sequence[str], dataset: Dataset, out: Path,
                 options: TrainOptions = TrainOptions()) -> Dict[str, Dict]:
    """Train each model into OUT (one model) or OUT/<model> (several), all on one split; images are
    loaded once per PreprocessSpec (the model's registry entry with the options' overrides).

    Under several workers every worker runs this, with the same arguments; only the chief writes
    OUT, the others write to a temporary folder of their own and return {}."""
    import tempfile

    from .distribute import check_mixed_precision, make_strategy, task_for
    from .job import RUN_JSON, checksums, file_hashes, start_record
    from .models import build_model, get_config

    task = task_for(options.strategy)
    check_mixed_precision(options.mixed_precision)
    strategy = make_strategy(task)  # first: a multi-worker strategy must exist before other TensorFlow work
    for name in names:  # fail before hours of training, not after: fetch or find every model's weights now
        if get_config(name).pretrained:
            build_model(name, weights=options.weights)
    write = out if task.chief else Path(tempfile.mkdtemp(prefix=f"train-worker{task.index}-"))
    try:
        hashes = file_hashes(dataset.records)
        sums = checksums(dataset.records, dataset.root, hashes)
        if task.chief and (len(names) > 1 or not (out / RUN_JSON).is_file()):  # one model's run.json is its own
            (out / RUN_JSON).write_text(json.dumps(start_record(options.argv, sums, names), indent=2))
        results = _train_all(names, dataset, out, write, options, task, strategy, hashes, sums)
        if task.chief and len(names) > 1:
            (out / RUN_JSON).write_text(json.dumps({**start_record(options.argv, sums, names),
                                                    "status": "complete"}, indent=2))
        return results
    finally:
        if not task.chief:
            shutil.rmtree(write, ignore_errors=True)


def _train_all(names, dataset: Dataset, out: Path, write: Path, options: TrainOptions, task, strategy,
               hashes: Dict[str, str], sums: Dict[str, str]) -> Dict[str, Dict]:
    from .duplicates import across_splits, warning_lines
    from .models import get_config

    specs = {name: options.preprocess_for(get_config(name).preprocess) for name in names}
    assignment, made = _split(dataset, write, options)
    split_path = write / "split.csv"
    split_info = {"file": "split.csv", "sha256": sha256_file(split_path), "made": made}
    records = records_by_split(dataset, assignment)
    cache: Dict[PreprocessSpec, Dict[str, LoadedSplit]] = {}
    results = {}
    for name in names:
        model_dir = write if len(names) == 1 else write / name
        chief_dir = out if len(names) == 1 else out / name
        if len(names) > 1 and _complete(chief_dir):  # every worker reads the chief's folder: all skip it or none
            print(f"== {name}: complete in {chief_dir}, kept", file=sys.stderr)
            results[name] = json.loads((chief_dir / "metrics.json").read_text()) if task.chief else {}
            continue
        spec = specs[name]
        if spec not in cache:
            cache[spec] = {s: load_images(rs, spec, f"{s} images {spec.size}px", options.progress,
                                          options.max_skip_fraction, options.decode_workers,
                                          options.cache, hashes if options.cache else None)
                           for s, rs in records.items()}
            if "duplicates" not in split_info:  # once: the same images whatever the input size
                report = across_splits(cache[spec], phantom=dataset.phantom)
                split_info["duplicates"] = {k: v for k, v in report.items() if k != "listed"}
                for line in warning_lines(report, dataset.phantom):
                    print(line, file=sys.stderr)
        if model_dir != write:
            model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(split_path, model_dir / "split.csv")
        print(f"== training {name} -> {chief_dir} ({task.describe()})", file=sys.stderr)
        placement = Placement(task, strategy, chief_dir / "backup")
        results[name] = train_one(name, dataset, cache[spec], split_info, model_dir, spec, options, placement, sums)
    if task.chief and len(names) > 1:
        from .evaluate import summary_line
        head = ["PHANTOM DATA: demonstration only, not clinical results"] if dataset.phantom else []
        (out / "summary.txt").write_text("\n".join(head + [summary_line(n, m) for n, m in results.items()]) + "\n")
    return results


def _complete(model_dir: Path) -> bool:
    try:
        return json.loads((model_dir / "run.json").read_text()).get("status") == "complete" \
            and (model_dir / "metrics.json").is_file()
    except (OSError, ValueError):
        return False
