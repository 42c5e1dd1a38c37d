"""Loaded splits (fracdata.images) -> tf.data pipelines.

Validation and test images are normalised once (together with the resize that is exactly
edge_runtime.preprocess.preprocess); training images are augmented (train/augment.py) and then
normalised, batch by batch, so the intensity normalisation the device runs comes after what
photos do, as it does on the device.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from edge_runtime.preprocess import normalize_intensity
from fracdata.images import LoadedSplit


def training_batches(split: LoadedSplit, batch_size: int, seed: int, photo: bool = True):
    """A callable returning one epoch's generator of augmented, normalised batches; epoch e's
    shuffle and augmentation depend only on (seed, e), so a run is reproducible."""
    from .augment import augment

    dihedral = split.spec.views == "dihedral"
    epoch = [0]

    def one_epoch():
        e = epoch[0]
        epoch[0] += 1
        order = np.random.default_rng([seed, e]).permutation(len(split.resized))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            xs = [normalize_intensity(augment(split.resized[i], np.random.default_rng([seed, e, int(i)]), dihedral, photo),
                                      split.spec) for i in idx]
            yield np.stack(xs)[..., None].astype(np.float32), split.labels[idx].astype(np.float32)
    return one_epoch


def make_tf_dataset(split: LoadedSplit, batch_size: int, training: bool, seed: int,
                    class_weight: Optional[Dict[int, float]] = None, photo: bool = True):
    """Shuffled and augmented only when `training`; otherwise cached and prefetched.

    `class_weight` adds per-image weights, used on validation so that its loss is the same
    class-weighted loss the model trains on; unweighted, it rises as the model learns to flag
    the rare class, and EarlyStopping would keep the epoch that flags nothing.
    """
    import tensorflow as tf

    size = split.spec.size
    if training:
        sig = (tf.TensorSpec((None, size, size, 1), tf.float32), tf.TensorSpec((None,), tf.float32))
        ds = tf.data.Dataset.from_generator(training_batches(split, batch_size, seed, photo), output_signature=sig)
        steps = -(-len(split.resized) // batch_size)
        return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)
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
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
