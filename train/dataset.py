"""Images -> arrays through edge_runtime's own decoder and preprocess -> cached tf.data pipelines.

Unreadable or missing images are skipped and counted, each named on stderr; more than
`max_skip_fraction` of them stops the run (a broken copy of the data is not worth training on).
Augmentation (rotation, zoom, flip, as in the paper) is mapped onto the training split only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import load_input
from edge_runtime.preprocess import PreprocessSpec

from .data import DataError, Record

AUGMENT = {"rotation_degrees": 20.0, "zoom": 0.2, "horizontal_flip": True}


@dataclass
class LoadedSplit:
    records: List[Record]
    images: np.ndarray  # (n, size, size, 1) float32
    labels: np.ndarray  # (n,) int
    skipped: List[str] = field(default_factory=list)  # "path: reason"

    @property
    def regions(self) -> List[str]:
        return [r.region for r in self.records]


def load_images(records: Sequence[Record], spec: PreprocessSpec, desc: str = "images",
                progress: bool = True, max_skip_fraction: float = 0.02) -> LoadedSplit:
    from tqdm import tqdm

    kept, arrays, skipped = [], [], []
    for r in tqdm(records, desc=desc, unit="img", disable=None if progress else True, leave=False):
        try:
            x, _ = load_input(r.path, spec)
        except ImageReadError as exc:
            skipped.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        arrays.append(x)
        kept.append(r)
    if records and len(skipped) / len(records) > max_skip_fraction:
        raise DataError(f"{len(skipped)} of {len(records)} {desc} unreadable (limit "
                        f"{max_skip_fraction:.0%}); first: {skipped[0]}")
    images = np.stack(arrays) if arrays else np.zeros((0, spec.size, spec.size, 1), np.float32)
    return LoadedSplit(kept, images.astype(np.float32), np.array([r.label for r in kept], dtype=np.int32), skipped)


def augmenter(seed: int):
    import keras
    from keras import layers

    return keras.Sequential([
        layers.RandomRotation(AUGMENT["rotation_degrees"] / 360.0, fill_mode="constant", seed=seed),
        layers.RandomZoom(AUGMENT["zoom"], fill_mode="constant", seed=seed + 1),
        layers.RandomFlip("horizontal", seed=seed + 2),
    ], name="augment")


def make_tf_dataset(split: LoadedSplit, batch_size: int, training: bool, seed: int,
                    class_weight: Optional[Dict[int, float]] = None):
    """Cached and prefetched; shuffled and augmented only when `training`.

    `class_weight` adds per-image weights, used on validation so that its loss is the same
    class-weighted loss the model trains on; unweighted, it rises as the model learns to flag
    the rare class, and EarlyStopping would keep the epoch that flags nothing.
    """
    import tensorflow as tf

    images, labels = split.images, split.labels.astype(np.float32)
    spec = (tf.TensorSpec(images.shape[1:], tf.float32), tf.TensorSpec((), tf.float32))
    weights = None
    if class_weight is not None:
        weights = np.where(split.labels == 1, class_weight[1], class_weight[0]).astype(np.float32)
        spec = spec + (tf.TensorSpec((), tf.float32),)

    def gen():  # a generator keeps the arrays out of the graph (no 2 GB constant limit)
        for i in range(len(images)):
            yield (images[i], labels[i]) if weights is None else (images[i], labels[i], weights[i])

    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(images))).cache()
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training:
        aug = augmenter(seed)
        # Sequential on purpose: the layers draw from one seed state, and parallel calls would
        # take it in a different order each run, so the same --seed would give another model.
        ds = ds.map(lambda x, y: (aug(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)
