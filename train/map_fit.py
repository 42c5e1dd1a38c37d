"""Train a fracture-map model (train/models/fracture_map.py) from boxes and image labels together.

What each training image contributes (fracdata/targets.py makes the cell targets):
- a radiograph with fracture boxes: every cell (positive in a box, negative away from it, the
  margin ignored), and, where its source also has non-fractured images, its image label;
- a known non-fractured radiograph (phantoms, FracAtlas): every cell negative, and its label;
- a fractured radiograph without boxes: its image label only (the pooled map must find something);
- a crop of a real radiograph that holds no box (drawn by the augmentation, `negative_crop` of the
  time): its cells, and "not fractured" for the pooled map. These are the honest real negatives
  of a set with no non-fractured radiographs: real anatomy, markers and casts that are not a fracture;
- an unlabelled image: nothing (it is not loaded).

There is no image-level loss for sources in which every image is fractured (the forearm set): it
would teach the map that a real radiograph is fractured. Positives and negatives are weighed per
image, and the hardest cells of each (log-sum-exp pooled over the negative cells, and over the
positive ones) get their own term: the pointing game asks for the map's peak to be in a box, so
the highest negative cell matters more than the average one.

Batches mix sources at a stated share (`phantom_share` of each batch from phantoms, the rest
from real radiographs) so a few hundred real radiographs are not drowned by thousands of phantoms.
Keras does the fitting: EarlyStopping, ModelCheckpoint and ReduceLROnPlateau on the validation
loss, which is the same loss on the validation split without augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, normalize_intensity
from fracdata.data import PHANTOM_SOURCE as PHANTOM, Record, record_source
from fracdata.images import LoadedSplit
from fracdata.targets import MARGIN_CELLS, cell_targets, input_boxes

from .dataset import step_dataset
from .distribute import replica_slice

# What the loss weighs; recorded in run.json.
HARD_WEIGHT = 1.0  # the pooled hardest-negative and hardest-positive terms
IMAGE_WEIGHT = 0.5  # the image-level term, where the source has both classes
HARD_POOL_R = 4.0  # sharpness of the log-sum-exp over a class's cells
# Where is the fracture? A softmax over the image's cells (the ignored margin left out) and the
# share of it inside the boxes: -log of that share asks for the map's peak to be in a box, which is
# what the pointing game scores and what a clinician is shown; BCE alone leaves the peak anywhere
# on bone that looks roughly like a fracture.
WHERE_WEIGHT = 1.0
# The softmax's sharpness (its inverse temperature): at 1 the mass inside a box can grow by lifting
# every cell there a little; sharper, only the highest cells carry mass, so the term asks for the
# peak itself. It weighs more too: for large R it grows as R x (the highest logit - the highest in a
# box). --where-sharpness; measured in docs/results.md, "A sharper where term".
WHERE_R = 1.0
NEGATIVE_CROP = 0.5  # share of real boxed images drawn as a close crop (the box-free ones are negatives)
NEGATIVE_CROP_ZOOM = (1.8, 3.5)
NEGATIVE_CROP_SHIFT = 0.45  # a close crop may be centred anywhere on the image, mostly away from the box
UNKNOWN_ZOOM = (0.8, 1.1)  # a fracture of unknown place must stay in the frame
# --train-window: the share of windows placed on a box, where the input shows one; the rest fall
# anywhere (a box covers ~2% of a real radiograph: most windows would hold no fracture).
WINDOW_ON_BOX = 0.5


@dataclass
class MapSet:
    """One split's images as the map trainer needs them."""
    resized: np.ndarray  # (n, size, size): resized, not yet normalised
    boxes: List[Optional[List[Tuple[float, float, float, float]]]]  # pixel boxes; [] known negative; None unknown
    labels: np.ndarray  # (n,) 1 fractured, 0 not
    image_weight: np.ndarray  # (n,) 1 where the image label counts (its source has both classes)
    real: np.ndarray  # (n,) bool: not a phantom
    spec: PreprocessSpec
    records: List[Record] = field(default_factory=list)
    # --hard-negatives: per image, the input pixel (x, y) of the map's current highest cell away from
    # every box and its ring (NaN until the first epoch's callback fills it; hard_negative_callback)
    hard: Optional[np.ndarray] = None


def sources_with_both_classes(records: Sequence[Record]) -> set:
    seen: Dict[str, set] = {}
    for r in records:
        seen.setdefault(record_source(r), set()).add(r.label)
    return {s for s, labels in seen.items() if {0, 1} <= labels}


def map_set(split: LoadedSplit, both: set) -> MapSet:
    """A loaded split -> its MapSet; `both`: the sources whose image labels train the pooled map."""
    boxes, weights = [], []
    for r, shape in zip(split.records, split.shapes):
        if r.label == 0:
            boxes.append([])
        elif r.boxes:
            boxes.append(input_boxes(r.boxes, shape, split.spec))
        else:
            boxes.append(None)
        weights.append(1.0 if record_source(r) in both else 0.0)
    real = np.array([record_source(r) != PHANTOM for r in split.records], bool)
    return MapSet(split.resized, boxes, split.labels.astype(np.float32), np.array(weights, np.float32), real,
                  split.spec, list(split.records))


def grid_of(spec: PreprocessSpec, stride: int) -> int:
    return spec.size // stride


def _enlargement(before, after) -> float:
    """How much the geometry enlarged the boxes (>= 1; a rotation's bounding box errs larger)."""
    ratios = [np.sqrt(max(a[2] - a[0], 1e-6) * max(a[3] - a[1], 1e-6) / max((b[2] - b[0]) * (b[3] - b[1]), 1e-6))
              for b, a in zip(before, after)]
    return max(1.0, max(ratios, default=1.0))


def sample(ms: MapSet, i: int, rng: np.random.Generator, grid: int, photo: bool, augment: bool,
           negative_crop: float = NEGATIVE_CROP, acquisition: bool = False, pair: bool = False,
           window: Optional[int] = None, close_on_box: float = 0.0, hard: float = 0.0):
    """(model input (size, size, 1), cell targets (grid, grid, 2), image target (2,)) for image i;
    `pair` (augmented only): a fourth item, the same sample photographed (augment_pair_with_boxes);
    `window` (augmented only): the sample is a (window, window) part of the augmented input, its
    cells those of the whole input's grid (window_of); `close_on_box` (augmented only): the share
    of a real boxed image's other draws (not a crop anywhere) made a close crop centred on one of
    its boxes (map_geometry's `centre`); `hard` (augmented only): the share of the close crops
    anywhere centred instead on the map's current highest cell away from every box (`ms.hard`), so
    the anatomy the map mistakes for a fracture is shown to it, enlarged and labelled by what it holds."""
    from .augment import MAP_SHIFT, MAP_ZOOM, augment_pair_with_boxes, augment_with_boxes

    x, boxes = ms.resized[i], ms.boxes[i]
    label, weight = float(ms.labels[i]), float(ms.image_weight[i])
    size = x.shape[0]
    margin = MARGIN_CELLS  # in cells of the model input; a zoom enlarges it with the pixels
    photo_of, cut, cells = None, (slice(None), slice(None)), (slice(None), slice(None))
    if augment:
        real_boxed = bool(ms.real[i]) and bool(boxes)
        crop = real_boxed and rng.random() < negative_crop
        centre = None
        # each drawn only when asked, so runs without it draw what they always did
        if hard > 0 and crop and ms.hard is not None and np.isfinite(ms.hard[i]).all() and rng.random() < hard:
            centre = (float(ms.hard[i][0]), float(ms.hard[i][1]))
        if close_on_box > 0 and not crop and real_boxed and rng.random() < close_on_box:
            b = boxes[int(rng.integers(len(boxes)))]
            crop, centre = True, ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        zoom = NEGATIVE_CROP_ZOOM if crop else (UNKNOWN_ZOOM if boxes is None else MAP_ZOOM)
        shift = NEGATIVE_CROP_SHIFT if crop else MAP_SHIFT
        if pair:
            x, moved, photo_of = augment_pair_with_boxes(x, boxes or [], rng, photo, zoom, shift, acquisition, centre)
        else:
            x, moved = augment_with_boxes(x, boxes or [], rng, photo, zoom, shift, acquisition, centre)
        if boxes:
            # one cell of the original input: a close crop enlarges the ring with the pixels
            margin = MARGIN_CELLS * _enlargement(boxes, moved)
        if window:
            stride = size // grid
            left, top = window_of(moved if boxes else [], size, window, stride, rng)
            # pixels and cells are cut from the whole input's (normalising reads the whole input,
            # as on the device; a cell's target does not depend on where the window falls)
            cut = (slice(top, top + window), slice(left, left + window))
            cells = (slice(top // stride, (top + window) // stride), slice(left // stride, (left + window) // stride))
            if boxes is None:  # where the fracture lies is unknown: the window may have left it out
                weight = 0.0
        if boxes and not window:
            m = margin * size / grid
            in_frame = [b for b in moved if b[2] > 0 and b[3] > 0 and b[0] < size and b[1] < size]
            near = [b for b in moved if b[2] > -m and b[3] > -m and b[0] < size + m and b[1] < size + m]
            if not near:  # the crop holds no part of any fracture, nor the margin around one: a real negative
                label, weight = 0.0, 1.0 if (crop or weight) else 0.0
            elif not in_frame:  # only a box's margin is in view: neither fractured nor known intact
                label, weight = 0.0, 0.0
        if boxes:
            boxes = moved
    elif pair or window:
        raise ValueError("a photographed pair, or a window, is drawn only with augmentation")
    target, cell_w = cell_targets(boxes, size, grid, margin)
    target, cell_w = target[cells], cell_w[cells]
    if window and boxes and not target.any():
        # a window's label follows its cells: no positive cell but an ignored one (a box's ring, or a
        # sliver of a box at its edge) is neither fractured nor known intact; nothing of either, a
        # negative, the real ones too (the real negatives at their own scale)
        label, weight = (0.0, 0.0) if (cell_w == 0).any() else (0.0, 1.0)
    xn = normalize_intensity(x, ms.spec)[cut][:, :, None].astype(np.float32)
    out = (xn, np.stack([target, cell_w], axis=-1), np.array([label, weight], np.float32))
    if pair:
        return out + (normalize_intensity(photo_of, ms.spec)[cut][:, :, None].astype(np.float32),)
    return out


def window_of(boxes, size: int, window: int, stride: int, rng: np.random.Generator,
              on_box: float = WINDOW_ON_BOX) -> Tuple[int, int]:
    """(left, top) of a training window, on the map's cell grid (so its cells are the whole
    input's): `on_box` of the time, where a box shows in the input, one that holds the centre of
    the box's part in view, else anywhere; drawn uniformly, so a fracture is seen at every place
    in a window."""
    last = (size - window) // stride
    seen = [(max(b[0], 0.0), max(b[1], 0.0), min(b[2], size), min(b[3], size)) for b in boxes]  # the part in view
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in seen if b[2] > b[0] and b[3] > b[1]]
    if centres and rng.random() < on_box:
        cx, cy = centres[int(rng.integers(len(centres)))]
        # cells k whose window [k * stride, k * stride + window) holds the centre
        lo = lambda c: max(0, int(np.floor((c - window) / stride)) + 1)  # noqa: E731
        hi = lambda c: min(last, int(np.floor(c / stride)))  # noqa: E731
        kx = int(rng.integers(lo(cx), hi(cx) + 1)) if lo(cx) <= hi(cx) else int(rng.integers(0, last + 1))
        ky = int(rng.integers(lo(cy), hi(cy) + 1)) if lo(cy) <= hi(cy) else int(rng.integers(0, last + 1))
    else:
        kx, ky = (int(v) for v in rng.integers(0, last + 1, 2))
    return kx * stride, ky * stride


def batches(sets: Dict[str, MapSet], batch_size: int, phantom_share: float, seed: int, grid: int,
            steps: int, photo: bool = True, negative_crop: float = NEGATIVE_CROP, acquisition: bool = False,
            consistency: float = 0.0, pair_share: float = 1.0, window: Optional[int] = None,
            close_on_box: float = 0.0, hard: float = 0.0):
    """batch_of(step, replica, replicas): that replica's part of the global batch at `step`
    (counted from the first epoch). Epoch e's draw of images depends only on (seed, e) and each
    image's augmentation on (seed, e, step, place in the batch), so a resumed run, or R replicas
    together, draw what one uninterrupted run does.

    `consistency` > 0: a replica's part is two halves, place k of the second half the partner of
    place k of the first. The first half is every second place of the draw (so the phantom share
    holds); a `pair_share` of its samples, spread evenly over it (so over the sources), are drawn
    unphotographed and photographed as their partners, and the other partners are the draw's
    other places, as usual. The image targets' third column carries
    the weight image_loss gives a photographed partner's difference (0 for the others, and in
    validation).

    `window`: every sample is a window of that many pixels of its augmented input (window_of).
    `close_on_box`, `hard`: sample()'s."""
    import functools

    pools = {"phantom": [], "real": []}
    for i in range(len(sets["train"].labels)):
        pools["real" if sets["train"].real[i] else "phantom"].append(i)
    if not pools["real"]:
        phantom_share = 1.0
    if not pools["phantom"]:
        phantom_share = 0.0
    n_phantom = int(round(batch_size * phantom_share))
    ms = sets["train"]

    @functools.lru_cache(maxsize=4)
    def plan(e: int):
        """Epoch e's images, batch by batch: each pool in a shuffled order, reshuffled when used up."""
        rng = np.random.default_rng([seed, e])
        orders = {k: rng.permutation(v).tolist() if v else [] for k, v in pools.items()}
        cursor = {k: 0 for k in pools}

        def take(kind):
            if cursor[kind] >= len(orders[kind]):
                orders[kind] = rng.permutation(pools[kind]).tolist()
                cursor[kind] = 0
            cursor[kind] += 1
            return orders[kind][cursor[kind] - 1]

        return [[take("phantom") for _ in range(n_phantom)] + [take("real") for _ in range(batch_size - n_phantom)]
                for _ in range(steps)]

    def batch_of(step: int, replica: int = 0, replicas: int = 1):
        e, j = divmod(step, steps)
        idx = plan(e)[j]
        places = replica_slice(list(range(len(idx))), replica, replicas)
        draw = lambda k, pair=False: sample(ms, idx[k], np.random.default_rng([seed, e, j, k]), grid,  # noqa: E731
                                            photo, True, negative_crop, acquisition, pair, window,
                                            close_on_box, hard)
        if consistency <= 0:
            xs, ts, ys = zip(*(draw(k) for k in places))
            return np.stack(xs), {"map": np.stack(ts), "logit": np.stack([np.append(y, 0.0) for y in ys])}
        first, rest = places[::2], places[1::2]
        # twins spread evenly over the half (phantoms come first in a draw: every source gets its share);
        # at least one, and an odd part's last place has no other partner
        twin = [int((i + 1) * pair_share) > int(i * pair_share) or i >= len(rest) for i in range(len(first))]
        if not any(twin):
            twin[-1] = True
        firsts = [draw(k, pair=twin[i]) for i, k in enumerate(first)]
        partners = [(f[3], f[1], f[2]) if twin[i] else draw(rest[i]) for i, f in enumerate(firsts)]
        weights = [consistency if t else 0.0 for t in twin]
        xs = [f[0] for f in firsts] + [q[0] for q in partners]
        ts = [f[1] for f in firsts] + [q[1] for q in partners]
        ys = [np.append(q[2], w) for q, w in zip(firsts + partners, weights + weights)]
        return np.stack(xs), {"map": np.stack(ts), "logit": np.stack(ys)}
    return batch_of


def batch_signature(size: int, grid: int):
    """What batches() yields, as tf.TensorSpecs: inputs, and the map's and the image's targets."""
    import tensorflow as tf

    return (tf.TensorSpec((None, size, size, 1), tf.float32),
            {"map": tf.TensorSpec((None, grid, grid, 2), tf.float32), "logit": tf.TensorSpec((None, 3), tf.float32)})


def fixed_set(ms: MapSet, grid: int) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Validation inputs and targets, not augmented."""
    out = [sample(ms, i, np.random.default_rng(0), grid, False, False) for i in range(len(ms.labels))]
    xs, ts, ys = zip(*out) if out else ((), (), ())
    return np.stack(xs), {"map": np.stack(ts), "logit": np.stack([np.append(y, 0.0) for y in ys])}


# ----------------------------------------------------------------------------------------- losses

def map_loss_with(where_r: float):
    """map_loss with the "where" softmax at sharpness `where_r`, as Keras calls a loss."""
    def loss(y_true, y_pred):
        return map_loss(y_true, y_pred, where_r)
    return loss


def map_loss(y_true, y_pred, where_r: float = WHERE_R):
    """Per image: mean BCE over positive cells + over negative cells, + the hardest of each pooled,
    + the "where" term at sharpness `where_r`.
    y_true (batch, h, w, 2): target, weight; y_pred (batch, h, w, 1): cell logits."""
    from keras import ops

    from .models.layers import masked_pool

    t, w = y_true[..., 0], y_true[..., 1]
    m = y_pred[..., 0]
    bce = ops.binary_crossentropy(t, m, from_logits=True)
    pos, neg = w * t, w * (1.0 - t)
    lp = ops.sum(bce * pos, axis=(1, 2)) / ops.maximum(ops.sum(pos, axis=(1, 2)), 1.0)
    ln = ops.sum(bce * neg, axis=(1, 2)) / ops.maximum(ops.sum(neg, axis=(1, 2)), 1.0)
    hn, has_n = masked_pool(m, neg, HARD_POOL_R)
    hp, has_p = masked_pool(m, pos, HARD_POOL_R)
    hard = (ops.binary_crossentropy(ops.zeros_like(hn), hn, from_logits=True) * has_n
            + ops.binary_crossentropy(ops.ones_like(hp), hp, from_logits=True) * has_p)
    # -log(softmax mass in the boxes) over the scored cells, the softmax of where_r x the logits:
    # log-sum-exp over all minus over positives (masked_pool's are mean-normalised and divided by r).
    where = (where_r * (masked_pool(m, w, where_r)[0] - masked_pool(m, pos, where_r)[0])
             + ops.log(ops.maximum(ops.sum(w, axis=(1, 2)), 1.0)) - ops.log(ops.maximum(ops.sum(pos, axis=(1, 2)), 1.0)))
    return lp + ln + HARD_WEIGHT * hard + WHERE_WEIGHT * where * has_p


def image_loss(y_true, y_pred):
    """BCE of the pooled logit where the image label counts, + for a batch with photographed
    partners (batches()), weight x the squared difference of each photo's pooled logit from its
    sample's, the sample's held fixed (the photo should read as the file does, not the file as a
    photo), counted on both places. y_true (batch, 3): label, weight, the pair term's weight."""
    import tensorflow as tf
    from keras import ops

    bce = IMAGE_WEIGHT * ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0], from_logits=True) * y_true[:, 1]
    n = tf.shape(y_pred)[0]
    h = n // 2
    diff = tf.square(tf.stop_gradient(y_pred[:h, 0]) - y_pred[h:2 * h, 0]) * y_true[:h, 2]
    return bce + tf.concat([diff, diff, tf.zeros([n - 2 * h], diff.dtype)], axis=0)


def training_view(model):
    """The saved model's layers with two outputs for the losses: the map and the pooled logit."""
    import keras

    return keras.Model(model.inputs, {"map": model.get_layer("map").output, "logit": model.get_layer("logit").output},
                       name=f"{model.name}_training")


def describe_loss(consistency: float = 0.0, pair_share: float = 1.0, where_r: float = WHERE_R) -> Dict:
    sharp = "" if where_r == 1.0 else f" at sharpness {where_r:g} (softmax of {where_r:g} x the logits, not divided by it)"
    return {"map": "per image: mean BCE over positive cells + mean BCE over negative cells (margin ignored) + "
                   f"{HARD_WEIGHT} x BCE of the log-sum-exp (r={HARD_POOL_R}) over each class's cells + "
                   f"{WHERE_WEIGHT} x -log(softmax mass of the map inside the boxes){sharp}",
            "image": f"{IMAGE_WEIGHT} x BCE of the pooled logit, only for sources with both classes and for "
                     "box-free crops of real radiographs",
            "photo_consistency": (f"{consistency} x (pooled logit of a sample, held fixed - that of the same "
                                  f"sample photographed)^2, on both; {pair_share:g} of half the batch's samples "
                                  "photographed in place of other images" if consistency else None),
            "negative_crop": {"zoom": list(NEGATIVE_CROP_ZOOM), "centre_anywhere_within": NEGATIVE_CROP_SHIFT},
            "cell_targets": f"fracdata/targets.py (positive cover 0.3, margin {MARGIN_CELLS} cell ignored)"}


def steps_for(n_real: int, n_phantom: int, batch_size: int, phantom_share: float) -> int:
    """Steps per epoch: one pass over the real training images at their share of each batch (the
    phantoms cycle as they come), or over the phantoms when there is no real data."""
    if n_real:
        per_batch = batch_size - int(round(batch_size * phantom_share)) if n_phantom else batch_size
        if per_batch < 1:
            raise ValueError(f"a phantom share of {phantom_share} leaves no real image in a batch of {batch_size}: "
                             "lower --phantom-share or raise --batch-size")
        return int(math.ceil(n_real / per_batch))
    return max(1, int(math.ceil(n_phantom / batch_size)))


def localisation_callback(model, ms: MapSet, grid: int):
    """A Keras callback adding, each epoch, the map's pointing game and location AUC on the
    validation split's real fractures with boxes (val_pointing, val_location_auc) to the logs,
    where CSVLogger and the curves pick them up."""
    import keras

    from .localisation import location_auc

    idx = [i for i in range(len(ms.labels)) if ms.labels[i] == 1 and ms.boxes[i] and ms.real[i]]
    if not idx:
        idx = [i for i in range(len(ms.labels)) if ms.labels[i] == 1 and ms.boxes[i]]
    xs = np.stack([normalize_intensity(ms.resized[i], ms.spec)[:, :, None] for i in idx]) if idx else None
    targets = [cell_targets(ms.boxes[i], ms.spec.size, grid)[0] > 0 for i in idx]
    head = keras.Model(model.inputs, model.get_layer("map").output)

    class Localisation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None or xs is None:
                return
            maps = np.asarray(head.predict(xs, batch_size=16, verbose=0))[..., 0]
            hits = [t.reshape(-1)[int(np.argmax(m))] for m, t in zip(maps, targets)]
            aucs = [a for a in (location_auc(m, t) for m, t in zip(maps, targets)) if a is not None]
            logs["val_pointing"] = float(np.mean(hits))
            logs["val_location_auc"] = float(np.mean(aucs)) if aucs else float("nan")

    return Localisation()


def false_peaks(maps: np.ndarray, allowed: np.ndarray, stride: int) -> np.ndarray:
    """(n, 2) input pixels (x, y) of each map's highest allowed cell, NaN where none is allowed."""
    out = np.full((len(maps), 2), np.nan)
    for k, (m, ok) in enumerate(zip(maps, allowed)):
        if ok.any():
            r, c = divmod(int(np.argmax(np.where(ok, m, -np.inf))), m.shape[1])
            out[k] = ((c + 0.5) * stride, (r + 0.5) * stride)
    return out


def hard_negative_callback(model, ms: MapSet, grid: int):
    """A Keras callback that, at each epoch's start, finds on each real boxed training radiograph (as
    loaded, not augmented) the map's highest cell outside its boxes, their ignored ring and the
    letterbox padding (`ms.hard`, which sample() reads for --hard-negatives). Batches that tf.data
    built ahead of the epoch's start use the epoch before's places, how many depending on timing:
    a run with this option is not repeated, nor resumed, exactly."""
    import keras

    idx = [i for i in range(len(ms.labels)) if ms.real[i] and ms.boxes[i]]
    ms.hard = np.full((len(ms.labels), 2), np.nan)
    if not idx:
        return keras.callbacks.Callback()
    size = ms.spec.size
    stride = size // grid
    xs = np.stack([normalize_intensity(ms.resized[i], ms.spec)[:, :, None] for i in idx]).astype(np.float32)
    allowed = []
    for i in idx:
        target, weight = cell_targets(ms.boxes[i], size, grid)
        cells = ms.resized[i][:grid * stride, :grid * stride].reshape(grid, stride, grid, stride)
        shown = cells.max(axis=(1, 3)) > cells.min(axis=(1, 3))  # the letterbox padding is one flat value
        allowed.append((weight > 0) & (target == 0) & shown)
    allowed = np.stack(allowed)
    head = keras.Model(model.inputs, model.get_layer("map").output)

    class HardNegatives(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            maps = np.asarray(head.predict(xs, batch_size=32, verbose=0))[..., 0]
            ms.hard[idx] = false_peaks(maps, allowed, stride)

    return HardNegatives()


def fit_map(model, parts: Dict[str, LoadedSplit], spec: PreprocessSpec, stride: int, options, epochs: int,
            callbacks: list, strategy=None, start_epoch: int = 0, train: bool = True):
    """Fit `model` (built under `strategy`; it shares its layers with the training view that is
    fitted) on the loaded splits, from `start_epoch` (a restored backup's); `train` False: build and
    compile only (the run had finished training). Returns (the fitted training view, what run.json
    records about the training). With `options.train_window`, `model` must take any input size
    (train.fit builds it so): it trains on windows and is validated on whole inputs."""
    import sys

    import keras
    import tensorflow as tf

    from .augment import CENTRE_JITTER, describe_map

    o = options
    both = sources_with_both_classes(parts["train"].records + parts["val"].records)
    sets = {k: map_set(parts[k], both) for k in ("train", "val")}
    grid = grid_of(spec, stride)
    tr = sets["train"]
    n_real, n_phantom = int(tr.real.sum()), int((~tr.real).sum())
    share = o.phantom_share if (n_real and n_phantom) else (1.0 if n_phantom else 0.0)
    steps = o.steps_per_epoch or steps_for(n_real, n_phantom, o.batch_size, share)
    from .dataset import evaluation_dataset
    from .distribute import distributed

    strategy = strategy or tf.distribute.get_strategy()
    # Cosine decay over the whole run (to 5% of the rate): the map's peak kept sharpening until the
    # last epochs (docs/results.md), and a falling rate lets it settle; so neither ReduceLROnPlateau
    # nor EarlyStopping here: the run goes to its end and the checkpoint keeps the epoch with the
    # best validation loss.
    with strategy.scope():
        view = training_view(model)
        schedule = keras.optimizers.schedules.CosineDecay(o.lr, decay_steps=epochs * steps, alpha=0.05)
        adam = keras.optimizers.Adam(schedule, use_ema=bool(o.ema), ema_momentum=o.ema or 0.99)
        view.compile(optimizer=adam, loss={"map": map_loss_with(o.where_sharpness), "logit": image_loss})
    callbacks = [c for c in callbacks
                 if not isinstance(c, (keras.callbacks.ReduceLROnPlateau, keras.callbacks.EarlyStopping))]
    window = o.train_window
    if window is not None and (window % stride or window >= spec.size):
        raise ValueError(f"train_window {window}: must be a multiple of the map's cell ({stride} px) and smaller "
                         f"than the input ({spec.size} px)")
    pool = model.get_layer("logit")
    if window is not None and pool.kind == "topk" and pool.k > (window // stride) ** 2:
        raise ValueError(f"train_window {window}: a window of {(window // stride) ** 2} cells cannot pool the top "
                         f"{pool.k} of them: widen the window or lower k")
    sig = batch_signature(window or spec.size, (window or spec.size) // stride)
    batch_of = batches(sets, o.batch_size, share, o.seed, grid, steps, o.photo_augment, o.negative_crop,
                       o.acquisition_augment, o.photo_consistency, o.photo_pairs, window, o.close_on_box,
                       o.hard_negatives)
    train_ds = distributed(strategy, lambda k, n, local: step_dataset(batch_of, sig, start_epoch * steps,
                                                                      epochs * steps, k, n, local))
    xv, yv = fixed_set(sets["val"], grid)
    val_ds = evaluation_dataset((xv, yv), o.batch_size, strategy)
    # The localisation callback goes first, so CSVLogger and the stopping rules see its numbers.
    callbacks = [localisation_callback(model, sets["val"], grid), *callbacks]
    if o.hard_negatives:
        callbacks = [hard_negative_callback(model, tr, grid), *callbacks]
    if o.ema:  # first of all: validation, the localisation numbers and the checkpoint then read the average
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        # The backup is written at an epoch's end, after the swap: it holds the average as the weights and
        # the weights as the average. Resumed from it, the first epoch's swap puts them back (Keras's own
        # flag, private: a Keras that renames it must fail here, not resume from the wrong weights).
        if not hasattr(swap, "_ema_weights_in_model"):
            raise RuntimeError("this Keras's SwapEMAWeights has no _ema_weights_in_model: --ema cannot resume safely")
        swap._ema_weights_in_model = start_epoch > 0
        callbacks = [swap, *callbacks]
    if train:  # else the interrupted run had trained to its end: only its evaluation is left
        view.fit(train_ds, steps_per_epoch=steps, validation_data=val_ds, epochs=epochs, initial_epoch=start_epoch,
                 callbacks=callbacks, verbose=1 if sys.stderr.isatty() else 2)
    return view, {
        "loss": describe_loss(o.photo_consistency, o.photo_pairs, o.where_sharpness), "validation_loss": "the same loss on the validation split, not augmented",
        "train_window": (f"{window} x {window} px windows of each augmented {spec.size} px input, on its cell grid; "
                         f"{WINDOW_ON_BOX:g} of them on a box where the input shows one" if window else None),
        "learning_rate_schedule": f"cosine decay from {o.lr} to {0.05 * o.lr:g} over {epochs * steps} steps",
        "weight_average": (f"exponential moving average of the weights, momentum {o.ema:g} per step: validated, "
                           "checkpointed and shipped" if o.ema else None),
        "augmentation": describe_map(o.photo_augment, o.acquisition_augment),
        "negative_crop_share": o.negative_crop,
        "hard_negative_share": (f"{o.hard_negatives:g} of the close crops anywhere centred on the map's highest cell "
                                f"away from every box and its ring (found again at each epoch's start), within "
                                f"{CENTRE_JITTER:g} of the crop's side" if o.hard_negatives else None),
        "close_crop_on_box_share": (f"{o.close_on_box:g} of the real boxed draws that are not a crop anywhere: a close "
                                    f"crop (zoom {list(NEGATIVE_CROP_ZOOM)}) centred on a box, within "
                                    f"{CENTRE_JITTER:g} of its side" if o.close_on_box else None),
        "mix": {"real_train_images": n_real, "phantom_train_images": n_phantom, "phantom_share_of_each_batch": share,
                "steps_per_epoch": steps,
                "image_labels_from": sorted(both) or "none (every source is fractures only: boxes alone)"},
    }
