"""Images -> arrays through edge_runtime's own decoder and preprocess -> tf.data pipelines.

Unreadable or missing images are skipped and counted, each named on stderr; more than
`max_skip_fraction` of them stops the run (a broken copy of the data is not worth training on).
Each split keeps its images resized but not yet normalised; validation and test are normalised
once (together that is exactly edge_runtime.preprocess.preprocess), training images are
augmented (train/augment.py) and then normalised, batch by batch, so the intensity normalisation
the device runs comes after what photos do, as it does on the device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import PreprocessSpec, normalize_intensity, resize_input

from .data import DataError, Record


@dataclass
class LoadedSplit:
    records: List[Record]
    resized: np.ndarray  # (n, size, size) float32: resized, not yet normalised
    labels: np.ndarray  # (n,) int
    spec: PreprocessSpec
    skipped: List[str] = field(default_factory=list)  # "path: reason"
    shapes: List[Tuple[int, int]] = field(default_factory=list)  # decoded (h, w) of each image, for boxes
    _images: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def images(self) -> np.ndarray:
        """(n, size, size, 1) float32: the model inputs, as edge_runtime.preprocess makes them."""
        if self._images is None:
            self._images = np.stack([normalize_intensity(x, self.spec) for x in self.resized])[..., None] \
                if len(self.resized) else np.zeros((0, self.spec.size, self.spec.size, 1), np.float32)
        return self._images

    @property
    def regions(self) -> List[str]:
        return [r.region for r in self.records]


def load_images(records: Sequence[Record], spec: PreprocessSpec, desc: str = "images",
                progress: bool = True, max_skip_fraction: float = 0.02) -> LoadedSplit:
    from tqdm import tqdm

    kept, arrays, skipped, shapes = [], [], [], []
    for r in tqdm(records, desc=desc, unit="img", disable=None if progress else True, leave=False):
        try:
            pixels = read_image(r.path, spec).pixels
            x = resize_input(pixels, spec)
        except ImageReadError as exc:
            skipped.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        arrays.append(x)
        kept.append(r)
        shapes.append(tuple(pixels.shape[:2]))
    if records and len(skipped) / len(records) > max_skip_fraction:
        raise DataError(f"{len(skipped)} of {len(records)} {desc} unreadable (limit "
                        f"{max_skip_fraction:.0%}); first: {skipped[0]}")
    resized = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, spec.size, spec.size), np.float32)
    return LoadedSplit(kept, resized, np.array([r.label for r in kept], dtype=np.int32), spec, skipped, shapes)


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
