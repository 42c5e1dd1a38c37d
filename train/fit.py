"""Train one registry model into a run directory with the paper's recipe and honest bookkeeping."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_runtime.preprocess import PreprocessSpec

from .data import Dataset
from .augment import describe as describe_augmentation
from .dataset import LoadedSplit, make_tf_dataset
from .evaluate import _header, evaluate_model
from .split import split_summary

TRAIN_PACKAGES = ("tensorflow", "keras", "numpy", "pillow", "scikit-learn", "matplotlib")


def versions(packages: Sequence[str] = TRAIN_PACKAGES) -> Dict[str, Optional[str]]:
    """Python, platform and each package's installed version (None where it is absent)."""
    import importlib.metadata as md

    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "platform": platform.platform(),
                                     "machine": platform.machine()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def devices() -> Dict[str, object]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {"gpus": [g.name for g in gpus], "strategy": "MirroredStrategy" if len(gpus) > 1 else "default"}


def _strategy():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy() if len(tf.config.list_physical_devices("GPU")) > 1 \
        else tf.distribute.get_strategy()


def _deterministic_ops() -> None:
    """Same seed, same model: TensorFlow otherwise picks non-deterministic kernels (oneDNN, cuDNN)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def class_weights(labels: np.ndarray) -> Dict[int, float]:
    """'balanced' weights, so 717 fractured count as much as 3,366 non-fractured."""
    from sklearn.utils.class_weight import compute_class_weight

    w = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    return {0: float(w[0]), 1: float(w[1])}


def train_one(name: str, dataset: Dataset, parts: Dict[str, LoadedSplit], split_info: Dict, out_dir: Path, *,
              epochs: Optional[int] = None, batch_size: int = 32, lr: float = 1e-3, seed: int = 42,
              weights: str = "imagenet", mixed_precision: bool = False, threshold_rule: str = "youden",
              n_boot: int = 2000, patience: int = 8, argv: Optional[List[str]] = None,
              quiet_stdout: bool = False, deterministic: bool = True, photo_augment: bool = True) -> Dict:
    import keras

    from .models import build_model, get_config
    from .models.complexity import complexity
    from .plots import plot_history

    cfg = get_config(name)
    epochs = epochs or cfg.default_epochs
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    if deterministic:
        _deterministic_ops()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    with _strategy().scope():
        model = build_model(name, weights=weights)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")])
    train, val, test = parts["train"], parts["val"], parts["test"]
    cw = class_weights(train.labels)
    ckpt = out_dir / "best.weights.h5"
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, patience // 2 - 1), min_lr=1e-6),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
    ]
    title = f"{name} on {'PHANTOM data (demonstration)' if dataset.phantom else dataset.name}"
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr) if quiet_stdout else contextlib.nullcontext():
        model.fit(make_tf_dataset(train, batch_size, True, seed, photo=photo_augment), validation_data=make_tf_dataset(val, batch_size, False, seed, class_weight=cw),
                  epochs=epochs, class_weight=cw, shuffle=False, callbacks=callbacks, verbose=1 if sys.stderr.isatty() else 2)
    train_seconds = time.time() - t0
    model.load_weights(ckpt)
    ckpt.unlink()
    # Save a float32, optimizer-free copy: what export and the runtime need, a third of the size.
    keras.mixed_precision.set_global_policy("float32")
    clean = build_model(name, weights="none")
    clean.set_weights(model.get_weights())
    clean.save(out_dir / "model.keras")
    plot_history(out_dir / "history.csv", out_dir / "curves.png", title)

    spec = train.spec
    run = {
        "title": title,
        "command": " ".join(["python -m train", *(argv or [])]),
        "started_unix": t0, "train_seconds": round(train_seconds, 1),
        "model": {"name": name, "description": cfg.description, "input_size": cfg.input_size,
                  "gradcam_layer": cfg.gradcam_layer, "weights": weights if cfg.pretrained else "from scratch",
                  "complexity": complexity(clean)},
        "training": {"epochs_max": epochs, "epochs_run": len(model.history.history.get("loss", [])),
                     "batch_size": batch_size, "learning_rate": lr, "optimizer": "Adam",
                     "loss": "binary_crossentropy", "class_weight": cw, "seed": seed,
                     "validation_loss": "class-weighted like training (EarlyStopping, checkpoint)",
                     "mixed_precision": mixed_precision, "early_stopping_patience": patience,
                     "deterministic_ops": deterministic,
                     "augmentation": describe_augmentation(spec.views == "dihedral", photo_augment)},
        "preprocess": spec.to_dict(),
        "data": {"name": dataset.name, "phantom": dataset.phantom, "provenance": dataset.provenance,
                 "counts": dataset.counts(), "skipped_train": train.skipped},
        "split": {**split_info, "counts": split_summary({k: v.records for k, v in parts.items()})},
        "evaluation": {"threshold_rule": threshold_rule, "bootstrap": n_boot, "seed": seed},
        "versions": versions(), "devices": devices(),
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=2))
    result = evaluate_model(clean, name, cfg.gradcam_layer, val, test, out_dir, threshold_rule, n_boot, seed, title)
    result = {**_header(run), **result}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
