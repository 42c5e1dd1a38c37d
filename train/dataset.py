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

from .distribute import replica_slice


def training_batch(split: LoadedSplit, batch_size: int, seed: int, photo: bool = True, n_replicas: int = 1,
                   class_weight: Optional[Dict[int, float]] = None):
    """(batch_of, steps per epoch): batch_of(step, replica, replicas) is that replica's part of
    the global batch at `step` (counted from the first epoch), augmented and normalised.

    A batch depends only on (seed, epoch, step): epoch e's order is drawn from (seed, e) and each
    image's augmentation from (seed, e, image), so a run is reproducible, a resumed run draws what
    the interrupted one would have, and R replicas together draw what one device does. Under
    several replicas the epoch's last, partial batch is left out, so every replica's share is equal
    (and an epoch needs at least one whole batch). With `class_weight`, each batch carries per-image weights (Keras cannot add them to a dataset
    already spread over replicas).
    """
    from .augment import augment

    dihedral = split.spec.views == "dihedral"
    n = len(split.resized)
    if n_replicas > 1 and n < batch_size:
        raise ValueError(f"{n} training images are fewer than one global batch of {batch_size}: lower --batch-size")
    steps = -(-n // batch_size) if n_replicas == 1 else n // batch_size

    def batch_of(step: int, replica: int = 0, replicas: int = 1):
        e, j = divmod(step, steps)
        order = np.random.default_rng([seed, e]).permutation(n)
        idx = replica_slice(order[j * batch_size:(j + 1) * batch_size], replica, replicas)
        xs = [normalize_intensity(augment(split.resized[i], np.random.default_rng([seed, e, int(i)]), dihedral, photo),
                                  split.spec) for i in idx]
        x, y = np.stack(xs)[..., None].astype(np.float32), split.labels[idx].astype(np.float32)
        if class_weight is None:
            return x, y
        return x, y, np.where(y == 1, class_weight[1], class_weight[0]).astype(np.float32)

    return batch_of, steps


def step_dataset(batch_of, signature, start: int, end: int, pipeline: int = 0, pipelines: int = 1, local: int = 1):
    """Steps start..end-1 of `batch_of` as a tf.data pipeline: made in parallel (the augmentation
    is numpy and Pillow, which let go of the GIL), delivered in order, prefetched. For each step it
    yields one batch per local replica in turn: replica pipeline * local + j of pipelines * local."""
    import tensorflow as tf

    flat = tf.nest.flatten(signature)
    n_replicas = pipelines * local

    def made(element):
        step, j = divmod(int(element), local)
        out = tf.nest.flatten(batch_of(step, pipeline * local + j, n_replicas))
        return [np.asarray(a, dtype=s.dtype.as_numpy_dtype) for a, s in zip(out, flat)]

    ds = tf.data.Dataset.range(start * local, end * local).map(
        lambda e: tf.numpy_function(made, [e], [s.dtype for s in flat], stateful=False),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda *xs: tf.nest.pack_sequence_as(signature, [tf.ensure_shape(x, s.shape) for x, s in zip(xs, flat)]))
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluation_batches(n: int, batch_size: int, n_replicas: int = 1):
    """Index arrays of the evaluation batches of n images, in order. A last, partial batch joins the
    one before it, on one device as on several: so no replica is handed an empty batch, and the
    batches are the same whatever the replicas (Keras weighs each output's validation loss per batch)."""
    if n < n_replicas:
        raise ValueError(f"{n} validation images cannot be shared by {n_replicas} replicas")
    out = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < batch_size:
        out[-2:] = [np.concatenate(out[-2:])]
    return out


def evaluation_dataset(arrays, batch_size: int, strategy=None):
    """Fixed arrays (a tuple or dict of numpy arrays, one row per image) as validation batches,
    each spread over the strategy's replicas like the training batches (replica r takes rows
    r, r+R, ... of every batch), so no replica is ever handed an empty batch."""
    import tensorflow as tf

    from .distribute import distributed, replicas

    n_replicas = replicas(strategy) if strategy is not None else 1
    flat = tf.nest.flatten(arrays)
    batches = evaluation_batches(len(flat[0]), batch_size, n_replicas)
    sig = tf.nest.pack_sequence_as(arrays, [tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype)) for a in flat])

    def batch_of(step: int, replica: int = 0, n: int = 1):
        idx = replica_slice(batches[step], replica, n)
        return tf.nest.pack_sequence_as(arrays, [a[idx] for a in flat])

    if strategy is None:
        return step_dataset(batch_of, sig, 0, len(batches))
    return distributed(strategy, lambda k, n, local: step_dataset(batch_of, sig, 0, len(batches), k, n, local))


def make_tf_dataset(split: LoadedSplit, batch_size: int, training: bool, seed: int,
                    class_weight: Optional[Dict[int, float]] = None, photo: bool = True, strategy=None):
    """Augmented batches (one device) when `training`; otherwise the split's model inputs as
    evaluation batches (evaluation_dataset), spread over `strategy`'s replicas.

    `class_weight` adds per-image weights, used on validation so that its loss is the same
    class-weighted loss the model trains on; unweighted, it rises as the model learns to flag
    the rare class, and EarlyStopping would keep the epoch that flags nothing.
    """
    import tensorflow as tf

    if training:
        size = split.spec.size
        sig = (tf.TensorSpec((None, size, size, 1), tf.float32), tf.TensorSpec((None,), tf.float32))
        batch_of, steps = training_batch(split, batch_size, seed, photo)
        return step_dataset(batch_of, sig, 0, steps)
    labels = split.labels.astype(np.float32)
    arrays = (split.images, labels)
    if class_weight is not None:
        arrays += (np.where(split.labels == 1, class_weight[1], class_weight[0]).astype(np.float32),)
    return evaluation_dataset(arrays, batch_size, strategy)
