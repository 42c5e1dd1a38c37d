"""The fracture map: pooling (numpy = Keras), cell targets from boxes, boxes moved with the pixels,
what each training image contributes, the manifest section, and a tiny map model end to end
(train -> export int8 + float -> the edge runtime's answer, heatmap and self-test)."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime.fracture_map import MapPooling, sigmoid
from edge_runtime.manifest import Manifest, ManifestError, seal
from edge_runtime.preprocess import PreprocessSpec
from fracdata.targets import cell_targets, input_boxes

POOLINGS = [MapPooling("max"), MapPooling("lse", r=4.0), MapPooling("lse", r=0.5), MapPooling("topk", k=5)]


# ------------------------------------------------------------------------------------- pooling

def test_numpy_pooling_matches_hand_computed_values():
    m = np.array([[0.0, 1.0], [2.0, -3.0]])
    assert MapPooling("max").pool(m) == 2.0
    assert MapPooling("topk", k=2).pool(m) == pytest.approx(1.5)
    r = 2.0
    want = np.log(np.mean(np.exp(r * m))) / r
    assert MapPooling("lse", r=r).pool(m) == pytest.approx(want, abs=1e-12)
    # Huge logits do not overflow (the max is taken out first).
    assert MapPooling("lse", r=4.0).pool(np.array([1000.0, 1000.0])) == pytest.approx(1000.0)
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0 and sigmoid(0.0) == 0.5


@pytest.mark.parametrize("pooling", POOLINGS, ids=lambda p: str(p.to_dict()))
def test_keras_pooling_layer_computes_what_the_device_computes(pooling):
    from train.models.layers import MapPool

    rng = np.random.default_rng(0)
    maps = rng.normal(-3, 3, (5, 16, 16, 1)).astype(np.float32)
    got = np.asarray(MapPool(pooling.kind, pooling.r, pooling.k)(maps)).reshape(-1)
    want = [pooling.pool(m[..., 0]) for m in maps]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_pooling_parameters_are_checked():
    for bad in (dict(kind="mean"), dict(kind="lse", r=0.0), dict(kind="topk", k=0)):
        with pytest.raises(ValueError):
            MapPooling(**bad)


# ------------------------------------------------------------------------------------- targets

def test_a_box_marks_its_cells_ignores_the_margin_and_leaves_the_rest_negative():
    # 64 px input, 8 x 8 grid (8 px cells); a box covering cells (2..3, 4..5) exactly.
    t, w = cell_targets([(32.0, 16.0, 48.0, 32.0)], 64, 8)
    assert t.sum() == 4 and t[2:4, 4:6].all()
    assert (w[t > 0] == 1).all()
    ring = np.zeros((8, 8), bool)
    ring[1:5, 3:7] = True
    ring[2:4, 4:6] = False
    assert (w[ring] == 0).all(), "the cells around a box are ignored"
    box = np.zeros((8, 8), bool)
    box[2:4, 4:6] = True
    assert (w[~ring] == 1).all() and (t[~ring & ~box] == 0).all()


def test_a_box_smaller_than_a_cell_still_marks_the_cell_it_lies_in():
    # 3 x 3 px across the corner of four cells: the most-covered one is positive.
    t, w = cell_targets([(14.0, 14.0, 17.0, 17.0)], 64, 8)
    assert t.sum() >= 1 and t[1, 1] == 1


def test_unknown_boxes_add_nothing_and_a_known_negative_is_negative_everywhere():
    t, w = cell_targets(None, 64, 8)
    assert not w.any() and not t.any()
    t, w = cell_targets([], 64, 8)
    assert w.all() and not t.any()
    # A box moved wholly out of the frame marks nothing.
    t, w = cell_targets([(-50.0, -50.0, -10.0, -10.0)], 64, 8)
    assert w.all() and not t.any()
    # Just outside the left edge: no positive cell, but the fracture may run on into the frame, so
    # the margin ring it reaches into the input is ignored, not taught as intact.
    t, w = cell_targets([(-6.0, 20.0, -1.0, 40.0)], 64, 8)
    assert not t.any() and not w[1:6, 0].any() and w[:, 1:].all() and w[0, 0] and w[6:, 0].all()


def test_boxes_land_where_letterboxing_puts_the_image():
    spec = PreprocessSpec(size=100, resize="letterbox")
    # A 200 x 100 (h x w) image letterboxed into 100 px: 50 px wide, left edge at 25.
    (x0, y0, x1, y1), = input_boxes([(0.0, 0.5, 1.0, 1.0)], (200, 100), spec)
    assert (x0, y0, x1, y1) == (25.0, 50.0, 75.0, 100.0)


def test_boxes_move_with_the_pixels_under_every_augmentation():
    from train.augment import map_geometry

    rng = np.random.default_rng(11)
    n, checked = 96, 0
    for _ in range(120):
        x = np.zeros((n, n), np.float32)
        bx = [(20.0, 30.0, 44.0, 41.0), (60.0, 60.0, 70.0, 78.0)]
        for b in bx:
            x[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 1.0
        out, moved = map_geometry(x, bx, rng, perspective=0.05, zoom_range=(0.8, 1.6))
        ys, xs = np.nonzero(out > 0.5)
        if not len(ys):
            continue
        # every bright pixel lies in some moved box (a pixel of slack for resampling)
        inside = np.zeros(len(ys), bool)
        for x0, y0, x1, y1 in moved:
            inside |= (xs >= x0 - 1.5) & (xs <= x1 + 0.5) & (ys >= y0 - 1.5) & (ys <= y1 + 0.5)
        assert inside.all()
        checked += 1
    assert checked > 60


# ------------------------------------------------------------------------- what each image adds

def _loaded(records, size=64):
    from fracdata.images import LoadedSplit

    spec = PreprocessSpec(size=size, resize="letterbox", normalize="window")
    rng = np.random.default_rng(0)
    resized = rng.random((len(records), size, size)).astype(np.float32)
    return LoadedSplit(list(records), resized, np.array([r.label for r in records]), spec,
                       shapes=[(size, size)] * len(records))


def _rec(i, label, boxes, source):
    from fracdata.data import Record

    return Record(f"{source}/{i}.png", Path(f"{i}.png"), label, "unknown", "unknown", 0, 0, boxes=boxes, source=source)


def test_acquisition_effects_reach_training_samples_only_when_asked_and_keep_the_targets():
    """--acquisition-augment: the same image, draw and targets, with another system's processing
    on some samples; off, the sample is what it was before the option existed."""
    from train.map_fit import map_set, sample, sources_with_both_classes

    recs = [_rec(0, 1, ((0.4, 0.4, 0.5, 0.5),), "forearm"), _rec(1, 0, (), "phantom"),
            _rec(2, 1, ((0.1, 0.1, 0.2, 0.2),), "phantom")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    differ = 0
    for k in range(20):
        x0, c0, y0 = sample(ms, 0, np.random.default_rng([4, k]), 8, False, True)
        x1, c1, y1 = sample(ms, 0, np.random.default_rng([4, k]), 8, False, True, acquisition=True)
        assert np.array_equal(c0, c1) and np.array_equal(y0, y1)  # the boxes and labels are untouched
        differ += not np.array_equal(x0, x1)
    assert 0 < differ < 20


def test_a_photographed_pair_is_the_unpaired_sample_and_the_same_film_photographed():
    """--photo-consistency: the first of a pair is the sample as a file (an unpaired draw's geometry,
    acquisition effects and targets, no photo effects); the second is it photographed."""
    from train.map_fit import map_set, sample, sources_with_both_classes

    recs = [_rec(0, 1, ((0.4, 0.4, 0.5, 0.5),), "forearm"), _rec(1, 0, (), "phantom"),
            _rec(2, 1, ((0.1, 0.1, 0.2, 0.2),), "phantom")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    gaps = []
    for i in range(3):
        for k in range(8):
            one = sample(ms, i, np.random.default_rng([5, k]), 8, True, True, acquisition=True)
            pair = sample(ms, i, np.random.default_rng([5, k]), 8, True, True, acquisition=True, pair=True)
            assert len(pair) == 4 and all(np.array_equal(a, b) for a, b in zip(one[1:], pair[1:3]))
            if k < 2:  # with the photo effects off, the unpaired draw is the pair's file, pixel for pixel
                from train import augment

                kept = augment.PHOTOMETRIC
                try:
                    augment.PHOTOMETRIC = dataclasses.replace(kept, probability=0.0)
                    file_only = sample(ms, i, np.random.default_rng([5, k]), 8, True, True, acquisition=True)[0]
                finally:
                    augment.PHOTOMETRIC = kept
                assert np.array_equal(file_only, pair[0])
            assert pair[3].shape == pair[0].shape and pair[3].dtype == np.float32
            gaps.append(float(np.abs(pair[3] - pair[0]).mean()))
            # the same pixels, photographed: far closer to each other than to another geometry's draw
            other = sample(ms, i, np.random.default_rng([6, k]), 8, True, True)[0]
            assert np.corrcoef(pair[0].ravel(), pair[3].ravel())[0, 1] > np.corrcoef(pair[0].ravel(), other.ravel())[0, 1]
    assert min(gaps) > 0.0, "the photo of a sample must differ from it"
    with pytest.raises(ValueError, match="only with augmentation"):
        sample(ms, 0, np.random.default_rng(0), 8, True, False, pair=True)


def test_paired_batches_hold_half_the_images_twice_at_the_same_phantom_share():
    from train.map_fit import batches, map_set, sources_with_both_classes

    recs = ([_rec(i, 1, ((0.4, 0.4, 0.5, 0.5),), "forearm") for i in range(6)]
            + [_rec(10 + i, i % 2, ((0.1, 0.1, 0.2, 0.2),) if i % 2 else (), "phantom") for i in range(6)])
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    plain = batches({"train": ms}, 8, 0.5, 3, 8, 4, True)
    paired = batches({"train": ms}, 8, 0.5, 3, 8, 4, True, consistency=0.7)
    for step in (0, 5):
        xp, yp = plain(step)
        x, y = paired(step)
        assert x.shape == xp.shape and y["logit"].shape == (8, 3)
        assert np.all(yp["logit"][:, 2] == 0.0) and np.all(y["logit"][:, 2] == 0.7)
        # the first half is every second sample of the unpaired batch (as files), phantoms and real ones alike
        assert np.array_equal(y["map"][:4], yp["map"][::2]) and np.array_equal(y["logit"][:4, :2], yp["logit"][::2, :2])
        assert np.array_equal(y["map"][4:], y["map"][:4]) and np.array_equal(y["logit"][4:], y["logit"][:4])
        assert not np.array_equal(x[4:], x[:4])
    # with two replicas, each pairs its own samples
    for r in range(2):
        x, y = paired(1, r, 2)
        assert len(x) == 4 and np.array_equal(y["map"][2:], y["map"][:2])
    # a share of pairs, spread over the half: a draw puts its phantoms first (places 0-3 here), so
    # the twins are places 2 (a phantom) and 6 (a real radiograph); the other partners, places 1 and 5
    half = batches({"train": ms}, 8, 0.5, 3, 8, 4, True, consistency=0.7, pair_share=0.5)
    xp, yp = plain(2)
    x, y = half(2)
    assert np.array_equal(x[[0, 2]], xp[[0, 4]]) and np.array_equal(x[[4, 6]], xp[[1, 5]])  # unpaired: as drawn
    assert np.array_equal(y["map"][[5, 7]], y["map"][[1, 3]]) and not np.array_equal(x[[5, 7]], x[[1, 3]])
    assert y["logit"][:, 2].tolist() == [0.0, 0.7, 0.0, 0.7] * 2
    # a replica's odd part still makes two equal halves: its last sample is photographed
    x, y = batches({"train": ms}, 6, 0.5, 3, 8, 4, True, consistency=0.7, pair_share=0.5)(0, 0, 2)
    assert len(x) == 4 and y["logit"][:, 2].tolist() == [0.0, 0.7] * 2
    # a small share still pairs one
    x, y = batches({"train": ms}, 8, 0.5, 3, 8, 4, True, consistency=0.7, pair_share=0.1)(0)
    assert y["logit"][:, 2].tolist().count(0.7) == 2


def test_the_pair_term_weighs_each_pairs_logit_difference_and_nothing_unpaired():
    import tensorflow as tf

    from train.map_fit import IMAGE_WEIGHT, image_loss

    logits = tf.constant([[1.0], [-2.0], [1.5], [0.0]])
    label = [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]  # no image label counts: the pair term alone
    paired = image_loss(tf.constant([r + [2.0] for r in label]), logits).numpy()
    assert np.allclose(paired, [0.5, 8.0, 0.5, 8.0])  # 2 x 0.5^2, 2 x 2^2, counted on both members
    assert np.allclose(image_loss(tf.constant([r + [0.0] for r in label]), logits).numpy(), 0.0)
    # the sample is held fixed: only the photo's logit is pulled towards it
    with tf.GradientTape() as tape:
        z = tf.Variable(logits)
        loss = tf.reduce_sum(image_loss(tf.constant([r + [2.0] for r in label]), z))
    grad = tape.gradient(loss, z).numpy()[:, 0]
    assert np.allclose(grad[:2], 0.0) and np.allclose(grad[2:], [2 * 2 * 2 * 0.5, 2 * 2 * 2 * 2.0])
    # an odd batch (validation's last) adds no pair term to its last image; the BCE still counts
    odd = image_loss(tf.constant([[1.0, 1.0, 0.0]] * 3), tf.constant([[0.0], [0.0], [0.0]])).numpy()
    assert np.allclose(odd, IMAGE_WEIGHT * np.log(2.0))


@pytest.mark.parametrize("kwargs, message", [({"photo_consistency": -1.0}, "0 \\(off\\) or more"),
                                             ({"photo_pairs": 0.0}, "within \\(0, 1\\]"),
                                             ({"photo_consistency": 1.0, "photo_augment": False}, "photo augmentation"),
                                             ({"photo_consistency": 1.0, "batch_size": 7}, "must be even")])
def test_photo_consistency_options_are_checked(kwargs, message):
    from train.fit import TrainOptions

    with pytest.raises(ValueError, match=message):
        TrainOptions(**kwargs)


def test_a_source_of_fractures_only_trains_no_image_label_but_its_box_free_crops_are_negatives():
    from train.map_fit import map_set, sample, sources_with_both_classes

    recs = [_rec(0, 1, ((0.4, 0.4, 0.5, 0.5),), "forearm"), _rec(1, 1, ((0.1, 0.1, 0.2, 0.2),), "phantom"),
            _rec(2, 0, (), "phantom")]
    both = sources_with_both_classes(recs)
    assert both == {"phantom"}
    ms = map_set(_loaded(recs), both)
    assert ms.image_weight.tolist() == [0.0, 1.0, 1.0]
    # Un-augmented: the real fracture's image label does not count; its cells do.
    _, cells, img = sample(ms, 0, np.random.default_rng(0), 8, False, False)
    assert img[1] == 0.0 and cells[..., 1].any() and cells[..., 0].any()
    # Always a close crop: whenever no part of the box is in view, the crop is a real negative.
    seen_negative = seen_positive = False
    for k in range(60):
        _, cells, img = sample(ms, 0, np.random.default_rng(k), 8, False, True, negative_crop=1.0)
        if cells[..., 0].any():
            seen_positive = True
            assert img[1] == 0.0, "a crop that still shows the fracture teaches no image label"
        elif img[1] == 1.0:
            seen_negative = True
            assert img[0] == 0.0 and cells[..., 1].all(), "a real negative crop: every cell intact"
        else:  # only a box's margin in view: neither fractured nor intact, and its ring is ignored
            assert not cells[..., 1].all()
    assert seen_negative and seen_positive


def test_a_training_window_is_part_of_the_whole_sample_on_its_cell_grid():
    """--train-window: the same augmentation as the whole sample, then a window on the map's grid
    whose pixels (normalised over the whole input, as the device normalises) and cells are the
    whole sample's; its image label follows what the window holds."""
    from train.map_fit import map_set, sample, sources_with_both_classes

    recs = [_rec(0, 1, ((0.4, 0.4, 0.5, 0.5),), "forearm"), _rec(1, 0, (), "phantom"),
            _rec(2, 1, ((0.1, 0.1, 0.2, 0.2),), "phantom"), _rec(3, 1, None, "phantom")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    on_box, in_view = {0: 0, 2: 0}, {0: 0, 2: 0}
    for i in range(4):
        for k in range(48):
            whole = sample(ms, i, np.random.default_rng([7, k]), 8, True, True, acquisition=True)
            part = sample(ms, i, np.random.default_rng([7, k]), 8, True, True, acquisition=True, window=32)
            assert part[0].shape == (32, 32, 1) and part[1].shape == (4, 4, 2)
            at = [(t, l) for t in range(0, 33, 8) for l in range(0, 33, 8)
                  if np.array_equal(whole[0][t:t + 32, l:l + 32], part[0])]
            assert len(at) == 1, "the window is a cell-aligned part of the whole sample"
            t, l = at[0]
            assert np.array_equal(whole[1][t // 8:t // 8 + 4, l // 8:l // 8 + 4], part[1])
            if i == 3:  # a fracture of unknown place: the window may have left it out
                assert part[2][1] == 0.0 and not part[1][..., 1].any()
            elif i == 1:
                assert part[2].tolist() == [0.0, 1.0] and not part[1][..., 0].any()
            else:
                in_view[i] += bool(whole[1][..., 0].any())
            if i in on_box and part[1][..., 0].any():
                on_box[i] += 1
                assert part[2][0] == 1.0
            elif part[1][..., 1].all():  # nothing of a box nor its ring in view: a negative, the real one too
                assert part[2].tolist() == [0.0, 1.0]
            else:  # a ring (or a sliver of a box) without a positive cell: neither fractured nor intact
                assert part[2][1] == 0.0
    # half the windows are placed on the box where the input shows one, the rest by chance (~4 in 9 here)
    assert all(on_box[i] >= 0.5 * in_view[i] > 0 for i in on_box), (on_box, in_view)
    with pytest.raises(ValueError, match="only with augmentation"):
        sample(ms, 0, np.random.default_rng(0), 8, True, False, window=32)


def test_a_window_that_shows_a_sliver_of_a_box_but_no_positive_cell_is_not_called_fractured(monkeypatch):
    """The box is 1 px into the window; the whole input's cell there is not positive (it covers
    1/8 of the cell), so the window shows the box's ring and no fracture: no image label."""
    from train import augment, map_fit
    from train.map_fit import map_set, sample, sources_with_both_classes

    monkeypatch.setattr(augment, "augment_with_boxes", lambda x, boxes, *a, **k: (x, list(boxes)))
    monkeypatch.setattr(map_fit, "window_of", lambda boxes, size, window, stride, rng, **k: (0, 0))
    box = (159 / 256, 40 / 256, 180 / 256, 60 / 256)
    recs = [_rec(0, 1, (box,), "phantom"), _rec(1, 0, (), "phantom")]
    ms = map_set(_loaded(recs, size=256), sources_with_both_classes(recs))
    _, cells, img = sample(ms, 0, np.random.default_rng(0), 32, False, True, window=160)
    assert not cells[..., 0].any() and not cells[..., 1].all()
    assert img[1] == 0.0, "a sliver without a positive cell teaches no image label"
    whole = sample(ms, 0, np.random.default_rng(0), 32, False, True)
    assert whole[1][..., 0].any() and whole[2].tolist() == [1.0, 1.0]  # the whole input shows the fracture


def test_a_window_on_a_box_holds_the_centre_of_its_part_in_view_and_the_others_fall_anywhere():
    from train.map_fit import window_of

    rng = np.random.default_rng(1)
    box = (70.0, 10.0, 90.0, 30.0)
    for _ in range(50):
        left, top = window_of([box], 128, 48, 8, rng, on_box=1.0)
        assert left % 8 == 0 and top % 8 == 0 and 0 <= left <= 80 and 0 <= top <= 80
        assert left <= 80 < left + 48 and top <= 20 < top + 48
        left, top = window_of([(-30.0, 100.0, 10.0, 140.0)], 128, 48, 8, rng, on_box=1.0)  # the part in view
        assert left <= 5 < left + 48 and top <= 114 < top + 48
    anywhere = {window_of([box], 128, 48, 8, rng, on_box=0.0) for _ in range(2000)}
    assert len(anywhere) == 121  # every placement on the 11 x 11 grid
    assert {window_of([(200.0, 200.0, 220.0, 220.0)], 128, 48, 8, rng, on_box=1.0) for _ in range(2000)} == anywhere


def test_training_window_options_are_checked():
    from train.fit import TrainOptions

    for bad in (30, 16, 0):
        with pytest.raises(ValueError, match="train_window"):
            TrainOptions(train_window=bad)
    assert TrainOptions(train_window=160).train_window == 160


def test_a_close_crop_on_a_box_shows_the_fracture_enlarged_near_the_crop_centre_anywhere_in_it():
    """map_geometry(centre=...): the output's centre shows that input point, give or take
    CENTRE_JITTER of the crop's side; the box moves with the pixels (enlarged by the zoom)."""
    from train.augment import CENTRE_JITTER, map_geometry

    rng = np.random.default_rng(3)
    n = 128
    x = np.zeros((n, n), np.float32)
    box = (20.0, 90.0, 30.0, 100.0)
    x[92:98, 22:28] = 1.0  # a bright mark inside the box, to see where the pixels went
    offsets = []
    for _ in range(200):
        out, moved = map_geometry(x, [box], rng, 0.0, (2.5, 2.5), 0.45, centre=(25.0, 95.0))
        (x0, y0, x1, y1), = moved
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        offsets.append((cx - n / 2, cy - n / 2))
        # rotated by up to 20 degrees: the box around the corners is 2.5 x 10 px wide, or a little more
        assert 25.0 <= x1 - x0 <= 25.0 * 1.4 and 25.0 <= y1 - y0 <= 25.0 * 1.4
        ys, xs = np.nonzero(out > 0.5)
        assert len(xs) and x0 - 2 <= xs.mean() <= x1 + 2 and y0 - 2 <= ys.mean() <= y1 + 2
    off = np.abs(np.array(offsets))
    # the jitter is CENTRE_JITTER of the crop's side (n / zoom input px = n output px), each axis,
    # turned by the rotation: never farther than its corner, and not always in the middle
    turned = np.cos(np.radians(20)) + np.sin(np.radians(20))  # the rotation reaches 20 degrees
    assert off.max() <= CENTRE_JITTER * n * turned + 1.0
    assert np.mean(np.hypot(off[:, 0], off[:, 1]) > 0.1 * n) > 0.5


def test_close_crops_on_a_box_are_drawn_for_real_boxed_images_only_and_keep_their_cells():
    from train.map_fit import map_set, sample, sources_with_both_classes

    recs = [_rec(0, 1, ((0.1, 0.7, 0.2, 0.8),), "forearm"), _rec(1, 1, ((0.1, 0.7, 0.2, 0.8),), "phantom"),
            _rec(2, 0, (), "phantom"), _rec(3, 1, None, "forearm")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    positive = {True: [], False: []}
    for k in range(60):
        for on in (True, False):
            _, cells, img = sample(ms, 0, np.random.default_rng([5, k]), 8, False, True, negative_crop=0.0,
                                   close_on_box=1.0 if on else 0.0)
            positive[on].append(float((cells[..., 0] * cells[..., 1]).sum()))
            assert img[1] == 0.0  # the real source's image label never counts, close or not
        for i in (1, 2, 3):  # a phantom, or a real image without boxes, draws what it would without the option
            a = sample(ms, i, np.random.default_rng([5, k]), 8, True, True, close_on_box=1.0)
            b = sample(ms, i, np.random.default_rng([5, k]), 8, True, True)
            assert all(np.array_equal(u, v) for u, v in zip(a, b))
    on, off = np.array(positive[True]), np.array(positive[False])
    assert (on > 0).all(), "a close crop on the box always shows the fracture"
    assert np.median(on) >= 2 * max(np.median(off), 1.0), "and shows it enlarged: more positive cells"


def test_the_where_term_is_minus_log_the_boxes_share_of_a_softmax_at_its_sharpness(monkeypatch):
    """--where-sharpness R: -log(sum over box cells of e^(R m) / sum over scored cells of e^(R m));
    everything else in the map loss is the same at every R. Sharper, a map whose box cells are all
    fairly high but whose single peak is beside the box pays more than one with the peak in the box,
    where at R = 1 the two pay the same."""
    import tensorflow as tf

    from train import map_fit

    t = np.zeros((4, 4), np.float32)
    t[1:3, 1:3] = 1.0
    w = np.ones((4, 4), np.float32)
    w[0, 0] = 0.0  # an ignored cell counts nowhere
    y_true = tf.constant(np.stack([np.stack([t, w], -1)] * 2))

    def want(mm, r):
        z = r * mm.astype(np.float64)
        return -np.log(np.exp(z)[(t * w) > 0].sum() / np.exp(z)[w > 0].sum())

    def where(maps, r):  # the loss with the where term, less the loss without it
        y_pred = tf.constant(np.stack(maps)[..., None].astype(np.float32))
        full = map_fit.map_loss_with(r)(y_true, y_pred).numpy()
        with monkeypatch.context() as mp:
            mp.setattr(map_fit, "WHERE_WEIGHT", 0.0)
            rest = map_fit.map_loss_with(r)(y_true, y_pred).numpy()
        return full - rest

    rng = np.random.default_rng(0)
    maps = list(rng.normal(0, 2, (2, 4, 4)))
    for r in (1.0, 0.5, 4.0):
        assert np.allclose(where(maps, r), [want(m, r) for m in maps], atol=1e-4), r
    # the reference's loss is R = 1's
    y_pred = tf.constant(np.stack(maps)[..., None].astype(np.float32))
    assert np.array_equal(map_fit.map_loss(y_true, y_pred).numpy(), map_fit.map_loss_with(1.0)(y_true, y_pred).numpy())
    # the same share in the box at R = 1 (11 scored cells outside it), the peak in the box or beside it
    inside = np.zeros((4, 4), np.float32)
    inside[1:3, 1:3] = [[3.0, 0.0], [0.0, 0.0]]
    beside = np.full((4, 4), np.log(0.1 * (11.0 - np.exp(2.0))), np.float32)
    beside[1:3, 1:3] = np.log((np.exp(3.0) + 3.0) / 4.0)  # equal cells, the same total e^m as inside's box
    beside[3, 3] = 2.0  # the peak, past the box
    assert beside.max() > beside[1:3, 1:3].max() and inside.max() == inside[1:3, 1:3].max()
    gap = {r: np.subtract(*where([beside, inside], r)) for r in (1.0, 4.0)}
    assert abs(gap[1.0]) < 1e-4 and gap[4.0] > 0.4, gap


def test_close_on_box_at_zero_draws_nothing_more(monkeypatch):
    """Off (the default), a real boxed image's sample draws exactly what it did before the option
    existed: one draw for "a crop anywhere?", then the geometry's; so runs made before it (the
    committed reference) are drawn again the same."""
    from train import augment
    from train.map_fit import map_set, sample, sources_with_both_classes

    seen = []

    def record(x, boxes, rng, *a, **k):
        seen.append(rng.bit_generator.state["state"]["state"])
        return x, list(boxes)

    monkeypatch.setattr(augment, "augment_with_boxes", record)
    monkeypatch.setattr(augment, "augment_pair_with_boxes", lambda x, boxes, rng, *a, **k: record(x, boxes, rng) + (x,))
    recs = [_rec(0, 1, ((0.1, 0.7, 0.2, 0.8),), "forearm")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    for k in range(20):
        for kw in ({}, {"pair": True}, {"window": 32}):
            seen.clear()
            sample(ms, 0, np.random.default_rng([1, k]), 8, True, True, close_on_box=0.0, **kw)
            after_one = np.random.default_rng([1, k])
            after_one.random()
            assert seen == [after_one.bit_generator.state["state"]["state"]], kw
        seen.clear()
        sample(ms, 0, np.random.default_rng([1, k]), 8, True, True, negative_crop=0.0, close_on_box=1e-9)
        assert seen != [after_one.bit_generator.state["state"]["state"]]  # on, it draws once more


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_close_on_box_option_is_checked(bad):
    from train.cli import build_parser, options_from
    from train.fit import TrainOptions

    with pytest.raises(ValueError, match="close_on_box"):
        TrainOptions(close_on_box=bad)
    with pytest.raises(ValueError, match="where_sharpness"):
        TrainOptions(where_sharpness=bad * 100)
    with pytest.raises(ValueError, match="hard_negatives"):
        TrainOptions(hard_negatives=bad)
    args = build_parser().parse_args(["--model", "fracture_map", "--close-on-box", "0.5", "--where-sharpness", "4"])
    assert (options_from(args, []).close_on_box, options_from(args, []).where_sharpness) == (0.5, 4.0)


def test_a_false_peak_is_the_highest_cell_allowed():
    from train.map_fit import false_peaks

    maps = np.zeros((2, 4, 4))
    maps[0, 1, 1], maps[0, 3, 2] = 9.0, 5.0  # the highest cell (in a box) is not allowed; the next one is
    allowed = np.ones((2, 4, 4), bool)
    allowed[0, 1, 1] = False
    allowed[1] = False  # nothing allowed: no place
    got = false_peaks(maps, allowed, 8)
    assert got[0].tolist() == [2.5 * 8, 3.5 * 8] and np.isnan(got[1]).all()


def test_hard_negative_crops_are_centred_on_the_maps_false_peak(monkeypatch):
    """--hard-negatives: a close crop anywhere becomes one centred on ms.hard; off, or before the
    callback has found a place, the sample is drawn exactly as without the option."""
    from train import augment
    from train.map_fit import map_set, sample, sources_with_both_classes

    centres = []

    def record(x, boxes, rng, photo, zoom, shift, acquisition, centre=None):
        centres.append(centre)
        return x, list(boxes)

    recs = [_rec(0, 1, ((0.1, 0.7, 0.2, 0.8),), "forearm"), _rec(1, 0, (), "phantom")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    plain = [sample(ms, 0, np.random.default_rng([2, k]), 8, False, True) for k in range(10)]
    ms.hard = np.full((2, 2), np.nan)  # not found yet: as if off
    assert all(all(np.array_equal(u, v) for u, v in zip(a, sample(ms, 0, np.random.default_rng([2, k]), 8, False,
                                                                      True, hard=1.0)))
               for k, a in enumerate(plain))
    ms.hard[0] = (50.0, 12.0)
    monkeypatch.setattr(augment, "augment_with_boxes", record)
    for k in range(30):
        sample(ms, 0, np.random.default_rng([3, k]), 8, False, True, negative_crop=1.0, hard=1.0)
        sample(ms, 0, np.random.default_rng([3, k]), 8, False, True, negative_crop=0.0, hard=1.0)  # no crop: none
        sample(ms, 1, np.random.default_rng([3, k]), 8, False, True, negative_crop=1.0, hard=1.0)  # a phantom
    assert centres == [(50.0, 12.0), None, None] * 30


def test_the_hard_negative_callback_finds_each_real_boxed_radiographs_peak_away_from_its_boxes():
    """A stand-in model whose map is each cell's mean brightness: brightest in the box, next in its
    ring, then at one place beyond both; the callback must name that place, for real boxed
    radiographs only."""
    import keras

    from train.map_fit import hard_negative_callback, map_set, sources_with_both_classes

    recs = [_rec(0, 1, ((0.25, 0.25, 0.375, 0.375),), "forearm"), _rec(1, 0, (), "phantom"),
            _rec(2, 1, ((0.5, 0.5, 0.625, 0.625),), "forearm"), _rec(3, 1, None, "forearm")]
    loaded = _loaded(recs)
    loaded.resized[:] = 0.2 + 0.01 * loaded.resized  # dim, with a little texture
    loaded.resized[0, :, :8] = 0.8  # a flat band, as letterbox padding is: brighter than the place, never named
    for i, (bx, by), (px, py) in ((0, (16, 16), (52, 4)), (2, (32, 32), (4, 60))):
        loaded.resized[i, by:by + 8, bx:bx + 8] = 1.0  # the box's cell, brightest
        loaded.resized[i, by - 8:by, bx:bx + 8] = 0.9  # its ring, next
        loaded.resized[i, py - 4:py + 4, px - 4:px + 4] += 0.4  # the place the callback should name (textured)
    ms = map_set(loaded, sources_with_both_classes(recs))
    inp = keras.Input((64, 64, 1))
    model = keras.Model(inp, keras.layers.AveragePooling2D(8, name="map")(inp))
    cb = hard_negative_callback(model, ms, 8)
    assert np.isnan(ms.hard).all()
    cb.on_epoch_begin(0)
    assert np.isnan(ms.hard[[1, 3]]).all()  # a phantom, a real radiograph without boxes: no place
    assert ms.hard[0].tolist() == [52.0, 4.0] and ms.hard[2].tolist() == [4.0, 60.0]


def test_a_classifier_run_warns_that_it_ignores_the_map_options_set():
    from train.cli import build_parser, options_from
    from train.fit import MAP_ONLY, TrainOptions, ignored_by_classifiers

    def warning(*argv):
        args = build_parser().parse_args(list(argv))
        return ignored_by_classifiers(options_from(args, []), args.model.split(","))

    assert warning("--model", "custom_cnn", "--where-sharpness", "4", "--ema", "0.99") == \
        "warning: --where-sharpness, --ema apply to fracture-map models only: ignored for custom_cnn"
    assert warning("--model", "fracture_map,custom_cnn_gap", "--close-on-box", "0.5").endswith("ignored for custom_cnn_gap")
    assert warning("--model", "fracture_map", "--close-on-box", "0.5") is None  # a map reads them all
    assert warning("--model", "custom_cnn") is None  # nothing set
    assert all(hasattr(TrainOptions(), n) for n in MAP_ONLY)


def test_the_rest_of_a_real_radiograph_leaves_out_its_boxes_and_their_ring_and_every_phantom():
    from train.map_evaluate import box_free_rest

    recs = [_rec(0, 1, ((0.25, 0.25, 0.5, 0.5),), "forearm"), _rec(1, 1, ((0.1, 0.1, 0.2, 0.2),), "phantom"),
            _rec(2, 1, None, "forearm"), _rec(3, 1, ((0.0, 0.0, 1.0, 1.0),), "forearm")]
    split = _loaded(recs)  # 64 px, 8 x 8 cells of 8 px
    maps = np.zeros((4, 8, 8), np.float32)
    maps[0, 2:4, 2:4] = 9.0  # the box's cells
    maps[0, 1, 1] = 7.0  # its ring
    maps[0, 6, 6] = 3.0  # clear of both
    idx, rests = box_free_rest(split, maps)
    assert idx == [0]  # no phantom; no fracture of unknown place; nothing left of a box over everything
    assert rests[0].size == 64 - 16 and rests[0].max() == 3.0


def test_a_phantom_share_that_leaves_no_real_image_in_a_batch_is_refused():
    from train.fit import TrainOptions
    from train.map_fit import steps_for

    assert steps_for(212, 800, 16, 0.5) == 27  # 8 real images a batch: one pass over 212
    with pytest.raises(ValueError, match="no real image"):
        steps_for(212, 800, 16, 0.99)
    with pytest.raises(ValueError, match="phantom_share"):
        TrainOptions(phantom_share=1.0)


# ------------------------------------------------------------------------------------ manifest

def _manifest_with_map(**change):
    m = {"format": "fracture-edge-bundle", "format_version": 3, "status": "accepted", "demonstration_only": True,
         "model": {"name": "fracture_map", "input": {"shape": [1, 64, 64, 1]},
                   "outputs": {"map": {"shape": [1, 8, 8, 1]}}},
         "preprocess": PreprocessSpec(size=64).to_dict(),
         "decision": {"threshold": 0.3, "rule": "sensitivity=0.9", "positive_class": "fractured"},
         "artifacts": {"onnx_float": {"file": "model_float.onnx", "format": "onnx", "precision": "float32"}},
         "default_artifacts": {"onnx": "onnx_float"}, "gradcam": None,
         "files": {"model_float.onnx": "0" * 64},
         "fracture_map": {"output": "map", "pooling": {"kind": "lse", "r": 4.0}}}
    m.update(change)
    return seal(m)


def test_the_manifest_says_how_a_map_is_pooled_or_is_refused():
    info = Manifest.from_dict(_manifest_with_map())
    assert info.fracture_map.pooling == MapPooling("lse", 4.0) and info.fracture_map.grid == (8, 8)
    with pytest.raises(ManifestError, match="fracture_map"):
        Manifest.from_dict(_manifest_with_map(fracture_map=None))
    with pytest.raises(ManifestError, match="pooling"):
        Manifest.from_dict(_manifest_with_map(fracture_map={"output": "map", "pooling": {"kind": "median"}}))
    with pytest.raises(ManifestError, match="format_version"):
        Manifest.from_dict(_manifest_with_map(format_version=2))


# --------------------------------------------------------------------------- a tiny map model

def _yolo_from_phantoms(phantom_dir: Path, out: Path, n: int = 24) -> Path:
    """A small YOLO export of fractures only (the forearm set's shape) made of phantom fractures."""
    from fracdata.data import read_fracatlas

    ds = read_fracatlas(phantom_dir)
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    k, last = 0, None
    for r in ds.records:
        if r.label != 1 or not r.boxes or k >= n:
            continue
        last = out / "images" / r.path.name
        shutil.copyfile(r.path, last)
        (out / "labels" / f"{r.path.stem}.txt").write_text("".join(
            f"1 {(x0 + x1) / 2:.5f} {(y0 + y1) / 2:.5f} {x1 - x0:.5f} {y1 - y0:.5f}\n" for x0, y0, x1, y1 in r.boxes))
        k += 1
    (out / "images" / "unboxed.png").write_bytes(last.read_bytes())  # an unannotated image: not a negative
    (out / "labels" / "unboxed.txt").write_text("")
    return out


@pytest.fixture(scope="session")
def tiny_map_run(phantom_dir, tmp_path_factory) -> Path:
    """A fracture map trained briefly on fractures-only 'real' data with phantoms mixed in."""
    from train.cli import main as train_main

    root = tmp_path_factory.mktemp("mapdata")
    yolo = _yolo_from_phantoms(phantom_dir, root / "fractures")
    out = tmp_path_factory.mktemp("runs") / "map"
    rc = train_main(["--model", "fracture_map", "--data", str(yolo), "--phantom-mix", "40", "--size", "64",
                     "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8", "--bootstrap", "50",
                     "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.slow
def test_a_map_model_trains_on_mixed_sources_and_reports_them_apart(tiny_map_run):
    run = json.loads((tiny_map_run / "run.json").read_text())
    assert run["model"]["kind"] == "fracture_map" and run["preprocess"]["size"] == 64
    mix = run["training"]["mix"]
    assert mix["image_labels_from"] == ["phantom"], "fractures-only data must not train the image label"
    assert mix["real_train_images"] > 0 and mix["phantom_train_images"] > 0
    metrics = json.loads((tiny_map_run / "metrics.json").read_text())
    sources = metrics["test_by_source"]
    assert set(sources) == {"fractures", "phantom"}
    assert sources["fractures"]["roc_auc"] is None and "unmeasurable" in sources["fractures"]["specificity_on_real_radiographs"]
    assert sources["phantom"]["roc_auc"]["auc"] is not None
    loc = sources["fractures"]["localisation"]
    assert {"map", "gradcam_for_comparison"} <= set(loc)
    assert 0.0 <= loc["map"]["pointing_game"] <= 1.0 and "location_auc" in loc["map"]
    assert metrics["threshold"]["rule"] == "sensitivity=0.9" and "fractures" in metrics["threshold"]["per_source"]
    # the two proxies for real negatives, at the threshold and threshold-free; none for phantoms
    rest = sources["fractures"]["box_free_rest"]
    assert rest["n"] == sources["fractures"]["fractured"] and 0.0 <= rest["called_fractured"] <= 1.0
    assert 0.0 <= rest["auc_fractured_vs_rest"]["auc"] <= 1.0 and "box_free_rest" not in sources["phantom"]
    crops = sources["fractures"]["box_free_crops"]["auc_fractured_vs_crops"]
    assert crops["ci_low"] <= crops["auc"] <= crops["ci_high"] and "owners" in crops["method"]
    for pooling in metrics["pooling_on_validation"]["compared"].values():
        assert 0.0 <= pooling["auc_real_fractures_vs_rests"] <= 1.0 and pooling["n_real_rest"] > 0
    # Real radiographs' overlays are kept apart (overlays-real/ is never committed); the split names every source.
    real_overlays = [o for o in metrics["overlays"] if o.startswith("overlays-real/")]
    assert real_overlays and all((tiny_map_run / o).is_file() for o in real_overlays)
    assert "overlays-real/" in (Path(__file__).resolve().parents[1] / ".gitignore").read_text()
    split = (tiny_map_run / "split.csv").read_text()
    assert "phantom/" in split and "unboxed" not in split


@pytest.mark.heavy
@pytest.mark.slow
def test_a_map_trains_with_photographed_pairs_and_records_the_term(phantom_dir, tmp_path):
    from train.cli import main as train_main

    yolo = _yolo_from_phantoms(phantom_dir, tmp_path / "fractures", n=12)
    out = tmp_path / "run"
    rc = train_main(["--model", "fracture_map", "--data", str(yolo), "--phantom-mix", "24", "--size", "64",
                     "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--bootstrap", "20",
                     "--photo-consistency", "0.5", "--out", str(out)])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert "0.5 x (pooled logit" in run["training"]["loss"]["photo_consistency"]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert rows and all(np.isfinite(float(r["loss"])) and np.isfinite(float(r["val_loss"])) for r in rows)


@pytest.mark.heavy
@pytest.mark.slow
def test_a_map_trains_on_windows_and_is_saved_and_validated_whole(phantom_dir, tmp_path, capsys):
    import keras

    from train.cli import main as train_main

    yolo = _yolo_from_phantoms(phantom_dir, tmp_path / "fractures", n=12)
    out = tmp_path / "run"
    common = ["--model", "fracture_map", "--data", str(yolo), "--phantom-mix", "24", "--size", "64", "--epochs", "1",
              "--steps-per-epoch", "2", "--batch-size", "8", "--bootstrap", "20"]
    assert train_main([*common, "--train-window", "32", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["train_window"].startswith("32 x 32 px windows of each augmented 64 px input")
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert tuple(model.input.shape) == (None, 64, 64, 1)  # what export and the device take
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert rows and all(np.isfinite(float(r["val_loss"])) and 0.0 <= float(r["val_pointing"]) <= 1.0 for r in rows)
    capsys.readouterr()
    assert train_main([*common, "--train-window", "64", "--out", str(tmp_path / "whole")]) != 0
    err = capsys.readouterr().err
    assert "train_window 64" in err and "smaller than the input (64 px)" in err
    assert train_main([*common, "--train-window", "32", "--pooling", "topk:32", "--out", str(tmp_path / "k")]) != 0
    assert "cannot pool the top 32" in capsys.readouterr().err


@pytest.mark.heavy
@pytest.mark.slow
def test_with_ema_the_weights_average_is_validated_and_shipped(phantom_dir, tmp_path):
    """--ema M: the same seeded run, averaged, ships other weights and validates them, and run.json
    says so; without it, a run is repeated exactly (deterministic ops)."""
    import keras

    from train.cli import main as train_main
    from train.fit import TrainOptions

    yolo = _yolo_from_phantoms(phantom_dir, tmp_path / "fractures", n=12)
    common = ["--model", "fracture_map", "--data", str(yolo), "--phantom-mix", "24", "--size", "64", "--epochs", "2",
              "--steps-per-epoch", "2", "--batch-size", "8", "--bootstrap", "20"]
    runs = {name: tmp_path / name for name in ("plain", "again", "ema")}
    for name, out in runs.items():
        assert train_main([*common, *(["--ema", "0.5"] if name == "ema" else []), "--out", str(out)]) == 0
    weights = {n: keras.models.load_model(o / "model.keras", compile=False).get_layer("map").get_weights()[0]
               for n, o in runs.items()}
    val = {n: [float(r["val_loss"]) for r in csv.DictReader((o / "history.csv").open())] for n, o in runs.items()}
    assert np.array_equal(weights["plain"], weights["again"]) and val["plain"] == val["again"]  # deterministic
    assert not np.allclose(weights["plain"], weights["ema"]) and val["plain"] != val["ema"]
    run = json.loads((runs["ema"] / "run.json").read_text())["training"]
    assert run["weight_average"].startswith("exponential moving average of the weights, momentum 0.5")
    assert json.loads((runs["plain"] / "run.json").read_text())["training"]["weight_average"] is None
    for bad in (0.3, 1.0, -0.1):
        with pytest.raises(ValueError, match="ema"):
            TrainOptions(ema=bad)


@pytest.mark.slow
def test_the_edge_runtime_answers_a_map_bundle_as_the_float_model_does(tiny_map_run, tmp_path):
    from conftest import OPEN_TOLERANCES
    from edge_runtime.bundle import load_bundle
    from edge_runtime.predictor import Predictor
    from export.quantize import main as export_main
    from fracdata.images import load_images
    from fracdata.runs import dataset_for_run, read_run
    from fracdata.split import load_split, records_by_split
    from train.models import load_model
    from train.reference import predict_maps

    out = tmp_path / "bundle"
    rc = export_main([str(tiny_map_run), "--out", str(out), "--calibration-size", "16", "--scope-photos", "8",
                      "--scope-outliers", "3",
                      "--artifacts", "onnx_float,tflite_float,tflite_int8,onnx_int8", *OPEN_TOLERANCES,
                      "--min-map-correlation", "0"])
    assert rc == 0
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m["format_version"] == 5 and m["fracture_map"]["pooling"] == {"kind": "lse", "r": 4.0}
    # the map, and the pooled features the out-of-scope gate measures; a threshold per artifact
    assert set(m["model"]["outputs"]) == {"map", "pooled"} and m["gradcam"] is None
    assert set(m["scope"]["thresholds"]) == set(m["artifacts"]) and m["files"]["scope.f32"]
    # the outlier direction: fitted on generated files and their photos, a file and a film logit per artifact
    fit = m["scope"]["outlier"]["fitted_on"]
    assert fit["seed"] == 21 and sum(fit["outside_files"].values()) >= 15 and sum(fit["outside_photos"].values()) >= 5
    assert set(m["scope"]["outlier"]["thresholds"]) == set(m["artifacts"])
    # thresholds from validation and from training images scored by the gate refitted without their fold
    assert m["scope"]["cross_fitted"]["folds"] == 5
    assert all(0.0 < a["metrics"]["scope"]["training_out_of_fold_kept"] <= 1.0 for a in m["artifacts"].values())
    assert m["scope"]["arrays"]["outlier"]["shape"] == [m["model"]["outputs"]["pooled"]["shape"][1] + 1]
    assert m["default_artifacts"] == {"tflite": "tflite_int8", "onnx": "onnx_int8"}
    for key in ("tflite_float", "onnx_float"):
        assert m["artifacts"][key]["metrics"]["map_max_abs_diff"] < 1e-3
    assert "gradcam_localisation_for_comparison" in m["reference"]["float_keras"]

    found = read_run(tiny_map_run)
    ds = dataset_for_run(found.record, None, quiet=True)
    test = load_images(records_by_split(ds, load_split(found.split_path, ds))["test"], bundle.spec, progress=False)
    p_ref, maps_ref = predict_maps(load_model(found.model_path), test.images, bundle.spec)
    pred = Predictor(bundle, artifact="onnx_float")
    for x, p, mp in zip(test.images, p_ref, maps_ref):
        got, heat = pred.answer(x, calibrated=False)
        assert abs(got - p) < 1e-5
        np.testing.assert_allclose(heat, sigmoid(mp), atol=1e-5)  # the heatmap is P(fracture) per cell
    # A file through the whole predictor: an absolute heatmap overlay, the probability from the map.
    img = tmp_path / "x.png"
    Image.fromarray((test.resized[0] * 255).astype(np.uint8)).save(img)
    rec = pred.predict_file(img, tmp_path / "heat.jpg")
    assert rec.error is None and rec.heatmap and Path(rec.heatmap).is_file()
    # The self-test the device runs before switching to this bundle passes for every artifact.
    from edge_runtime import selftest

    for key in m["artifacts"]:
        st = selftest.run(bundle, artifact=key)
        assert st["passed"] is True and st["scope_max_diff"] <= st["scope_tolerance"], st
        assert st["scope_film_max_diff"] <= st["scope_tolerance"], "the film groups are self-tested too"
        assert st["scope_outlier_max_diff"] <= st["scope_tolerance"], "and the outlier direction"
    _the_gate_and_the_calibration_are_applied(bundle, out, pred, test, tmp_path)
    _the_gate_reads_film_photos_against_its_film_groups(bundle, pred, test, tmp_path)
    # train.evaluate --bundle applies the gate as the device does, and says what it refused.
    from train.bundle_eval import evaluate_bundle

    r = evaluate_bundle(out, ds, tmp_path / "ev", artifacts=["onnx_float"], limit=16, n_overlays=0, n_boot=20)
    g = r["artifacts"]["onnx_float"]["out_of_scope"]
    assert g["n"] == r["data"]["evaluated"] and g["refused"] == sum(g["by_code"].values())
    assert sum(v["n"] for v in g["by_label"].values()) == g["n"]
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    verdicts = [row["scope_onnx_float"] for row in rows]
    assert set(verdicts) <= {"in", "colour", "unfamiliar"} and sum(v != "in" for v in verdicts) == g["refused"]
    # The self-test covers the gate: scores that moved (a broken precision matrix, other kernels) fail it.
    recorded = bundle.manifest["self_test"]["scope_scores"]["onnx_float"]
    kept = list(recorded)
    try:
        recorded[2] = recorded[2] * 1.1 + 0.1  # 10% off, far beyond any kernel's rounding
        st = selftest.run(bundle, artifact="onnx_float")
        assert st["passed"] is False and "out-of-scope gate" in st["reason"]
    finally:
        recorded[:] = kept
    outliers = bundle.manifest["self_test"]["scope_outlier_logits"]["onnx_float"]
    kept = list(outliers)
    try:  # a direction whose arithmetic moved fails even where the distance sets the score
        outliers[1] = outliers[1] * 1.1 + 0.1
        st = selftest.run(bundle, artifact="onnx_float")
        assert st["passed"] is False and "outlier direction" in st["reason"]
    finally:
        outliers[:] = kept
    on_films = bundle.manifest["self_test"]["scope_scores_film"]["onnx_float"]
    kept = list(on_films)
    try:
        on_films[0] = on_films[0] * 1.1 + 0.1
        st = selftest.run(bundle, artifact="onnx_float")
        assert st["passed"] is False and "on films" in st["reason"]
    finally:
        on_films[:] = kept


def _the_gate_reads_film_photos_against_its_film_groups(bundle, pred, test, tmp_path):
    """Export photographed radiographs of each group and fitted film groups on them; a flattened
    film is measured against every group and refused when beyond all of them, a file against the
    file groups only; a gate without film groups records its verdict on films, not enforced."""
    import dataclasses

    from device.simulate import simulate
    from device.triage import triage_photo
    from edge_runtime.labels import OUT_OF_SCOPE
    from edge_runtime.predictor import UNFAMILIAR_PHOTO

    sc = bundle.manifest["scope"]
    assert sc["film_groups"] and all(g.startswith("film/") and g[5:] in sc["groups"] for g in sc["film_groups"])
    assert sc["film_photos"]["train"]["read"] >= 5 * len(sc["film_groups"])
    assert pred.gate.covers_film and "test_photos_refused" in bundle.manifest["artifacts"]["onnx_float"]["metrics"]["scope"]
    radiograph = np.kron(test.resized[0], np.ones((6, 6), np.float32))  # a film worth photographing
    data, _ = simulate(radiograph, "full", np.random.default_rng(11))
    (tmp_path / "film.jpg").write_bytes(data)
    rec = triage_photo(pred, tmp_path / "film.jpg", None)
    assert rec.retake is False and "score" in rec.scope and "enforced" not in rec.scope
    gate = pred.gate
    # The film's score is over every group, film groups included; a file's over the file groups only.
    from device.photo import open_photo
    from device.quality import film_minimum
    from device.triage import read_film
    from edge_runtime.preprocess import checked_input

    flat = read_film(open_photo(tmp_path / "film.jpg"), film_minimum(pred.spec.size, pred.spec.resize))["flat"]
    pooled = pred.assess(checked_input(flat.pixels, pred.spec)[0])[2]
    assert rec.scope["score"] == pytest.approx(gate.score(pooled, film=True), abs=1e-4)
    # With the file groups' thresholds made tiny, only a film group can keep the photo: the film path
    # keeps it, and the same pixels read as a file are refused.
    film_only = np.array([g in gate.film_groups for g in gate.groups])
    from edge_runtime.imageio import DecodedImage

    try:  # (the outlier direction set aside: this is about the groups)
        pred.gate = dataclasses.replace(gate, thresholds=np.where(film_only, gate.thresholds * 100, gate.thresholds * 1e-3),
                                        outlier_thresholds=None)
        kept = triage_photo(pred, tmp_path / "film.jpg", None)
        assert kept.scope["in_scope"] is True and kept.probability is not None
        as_file = pred.predict_pixels(DecodedImage(flat.pixels, "file", (1, 1), []), "as_file")
        assert as_file.decision == OUT_OF_SCOPE
    finally:
        pred.gate = gate
    try:
        pred.gate = dataclasses.replace(gate, thresholds=gate.thresholds * 1e-3)  # nothing is near enough now
        refused = triage_photo(pred, tmp_path / "film.jpg", None)
        assert refused.decision == OUT_OF_SCOPE and refused.probability is None and refused.scope["code"] == "unfamiliar"
        assert refused.mode == "film" and refused.retake is False
        pred.gate = dataclasses.replace(gate, thresholds=gate.thresholds * 1e-3, film_groups=())
        measured = triage_photo(pred, tmp_path / "film.jpg", None)
        assert measured.probability is not None and measured.scope == {**measured.scope, "enforced": False, "in_scope": False}
        assert UNFAMILIAR_PHOTO in measured.warnings
    finally:
        pred.gate = gate


def _the_gate_and_the_calibration_are_applied(bundle, out, pred, test, tmp_path):
    """The exported gate: every answer carries its score; a colour photo is refused before the
    model, with no probability and no heatmap; the calibrated probability is what people see;
    a gate file changed after export refuses the bundle."""
    from edge_runtime.bundle import BundleError, load_bundle
    from edge_runtime.cli import exit_status
    from edge_runtime.predictor import Predictor
    from edge_runtime.labels import OUT_OF_SCOPE
    from fracdata.ood import generate

    m = bundle.manifest
    img = tmp_path / "in.png"
    Image.fromarray((test.resized[1] * 255).astype(np.uint8)).save(img)
    rec = pred.predict_file(img)
    assert set(rec.scope) >= {"in_scope", "score", "outlier_logit"}
    # the direction refuses on its own: a file logit threshold below every logit refuses what the distance keeps
    import dataclasses

    gate = pred.gate
    try:
        pred.gate = dataclasses.replace(gate, thresholds=gate.thresholds * 1e3, outlier_thresholds=(-60.0, 60.0))
        past = pred.predict_file(img)
        assert past.decision == OUT_OF_SCOPE and past.scope["code"] == "unfamiliar" and past.scope["score"] > 1
        pred.gate = dataclasses.replace(gate, thresholds=gate.thresholds * 1e3, outlier_thresholds=(60.0, 60.0))
        assert pred.predict_file(img).scope["in_scope"] is True
    finally:
        pred.gate = gate
    if rec.scope["in_scope"]:
        from edge_runtime.inputs import read_image
        from edge_runtime.preprocess import checked_input

        x = checked_input(read_image(img, bundle.spec).pixels, bundle.spec)[0]
        raw = pred.answer(x, calibrated=False)[0]
        assert rec.probability == pytest.approx(pred.calibration.apply(raw) if pred.calibration else raw, abs=1e-6)
        assert (rec.probability >= m["decision"]["threshold"]) == (raw >= m["decision"].get("threshold_model", raw))
    _, photo = generate("colour_photo", 1, seed=4)[0]
    photo.convert("RGB").save(tmp_path / "photo.jpg", quality=90)
    refused = pred.predict_file(tmp_path / "photo.jpg", tmp_path / "photo_heat.jpg")
    assert refused.decision == OUT_OF_SCOPE and refused.out_of_scope and refused.scope["code"] == "colour"
    assert refused.probability is None and refused.heatmap is None and not (tmp_path / "photo_heat.jpg").exists()
    assert exit_status([rec, refused]) == 1
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    blob = bytearray((bad / "scope.f32").read_bytes())
    blob[8] ^= 0x40
    (bad / "scope.f32").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="scope.f32"):
        Predictor(load_bundle(bad), artifact="onnx_float")


# ------------------------------------------------------------------------------ the phone's port

def test_the_web_app_pools_a_map_exactly_as_the_runtime_does(tmp_path):
    from tests.node_port import run_node

    rng = np.random.default_rng(3)
    maps = [rng.normal(-4, 3, 64).astype(np.float32) for _ in range(6)] + [np.full(64, 800.0, np.float32)]
    cases = [(p.to_dict(), m.tolist()) for p in POOLINGS for m in maps]
    got = run_node(tmp_path, "fracturemap.js", ["poolMap", "sigmoid"],
                   "([p, m]) => { const l = poolMap(Float32Array.from(m), p); return [l, sigmoid(l)]; }", cases)
    for (p, m), (logit, prob) in zip(cases, got):
        want = MapPooling.from_dict(p).pool(np.asarray(m, np.float32))
        assert logit == pytest.approx(want, rel=1e-12, abs=1e-9)
        assert prob == pytest.approx(sigmoid(want), abs=1e-12)


def test_fracatlas_trains_image_labels_and_boxes_together():
    """A source with both classes (FracAtlas): every image's label counts; a non-fractured image
    is negative in every cell; a fractured one without boxes adds its label only."""
    from train.map_fit import map_set, sample, sources_with_both_classes

    recs = [_rec(0, 1, ((0.4, 0.4, 0.6, 0.6),), "FracAtlas"), _rec(1, 0, (), "FracAtlas"),
            _rec(2, 1, None, "FracAtlas")]
    ms = map_set(_loaded(recs), sources_with_both_classes(recs))
    assert ms.image_weight.tolist() == [1.0, 1.0, 1.0]
    _, cells, img = sample(ms, 1, np.random.default_rng(0), 8, False, False)
    assert cells[..., 1].all() and not cells[..., 0].any() and img.tolist() == [0.0, 1.0]
    _, cells, img = sample(ms, 2, np.random.default_rng(0), 8, False, False)
    assert not cells[..., 1].any() and img.tolist() == [1.0, 1.0]
    _, cells, img = sample(ms, 0, np.random.default_rng(0), 8, False, False)
    assert cells[..., 0].sum() >= 4 and img.tolist() == [1.0, 1.0]


@pytest.mark.slow
def test_views_and_pooling_are_export_choices_each_with_its_own_threshold(tiny_map_run, tmp_path):
    from conftest import OPEN_TOLERANCES
    from edge_runtime.bundle import load_bundle
    from export.quantize import main as export_main

    out = tmp_path / "dihedral"
    assert export_main([str(tiny_map_run), "--out", str(out), "--artifacts", "onnx_float", "--views", "dihedral",
                        "--pooling", "topk:4", "--calibration-size", "8", "--scope-photos", "0", *OPEN_TOLERANCES]) == 0
    m = load_bundle(out).manifest
    assert m["preprocess"]["views"] == "dihedral"
    # the float model was re-pooled too: the check (float map and P to 1e-3) passed against it
    assert m["fracture_map"]["pooling"] == {"kind": "topk", "k": 4} and m["check"]["passed"]
    trained = json.loads((tiny_map_run / "metrics.json").read_text())["threshold"]
    assert "views=dihedral, pooling=topk:4" in m["decision"]["chosen_on"] and m["decision"]["rule"] == trained["rule"]
    assert set(m["decision"]["validation"]) == set(trained["per_source"])
    # the rest of each real radiograph, the float model's and the artifact's (the same float map: the same answer)
    ref, art = m["reference"]["float_keras"]["box_free_rest"], m["artifacts"]["onnx_float"]["metrics"]["box_free_rest"]
    assert set(ref) == set(art) == {"fractures"} and ref["fractures"]["n"] == art["fractures"]["n"] > 0
    assert art["fractures"]["called_fractured"] == ref["fractures"]["called_fractured"]
    assert abs(art["fractures"]["auc_fractured_vs_rest"]["auc"] - ref["fractures"]["auc_fractured_vs_rest"]["auc"]) < 0.05
    assert "| onnx_float (edge runtime) |" in (out / "report.md").read_text().split("The rest of each fractured")[1]
    assert export_main([str(tiny_map_run), "--out", str(tmp_path / "x"), "--pooling", "median"]) == 2


def test_export_gates_each_source_apart_so_phantoms_cannot_hide_drift_on_real_radiographs():
    from export.check import Tolerances, by_source, compare, failures

    rng = np.random.default_rng(0)
    n_ph, n_real = 400, 40
    y = np.r_[rng.integers(0, 2, n_ph), np.ones(n_real, int)]
    sources = np.array(["phantom"] * n_ph + ["forearm"] * n_real)
    p_float = np.r_[np.where(y[:n_ph] == 1, 0.9, 0.1), np.full(n_real, 0.7)]
    p_art = p_float.copy()
    p_art[n_ph:] -= 0.12  # int8 drift on the real radiographs only
    pooled = compare(y, p_float, p_art, 0.5)
    assert failures(pooled, Tolerances(), "int8") == [], "pooled, the phantoms dilute the drift below the gate"
    m = compare(y, p_float, p_art, 0.5, sources=sources)
    assert set(m["by_source"]) == {"phantom", "forearm"}
    assert m["by_source"]["forearm"]["auc"] is None and m["by_source"]["forearm"]["sensitivity"] == 1.0
    bad = failures(m, Tolerances(), "int8")
    assert bad and all("on forearm" in b for b in bad) and any("mean |Δp|" in b for b in bad)
    ref = by_source(y, p_float, 0.5, sources)
    assert ref["phantom"]["auc"] == 1.0 and ref["forearm"]["n"] == n_real
    assert by_source(y, p_float, 0.5, np.array(["x"] * len(y))) is None


def test_the_map_correlation_gate_ignores_letterbox_padding():
    from export.check import compare, content_cells

    spec = PreprocessSpec(size=64, resize="letterbox")
    cells = content_cells((400, 100), spec, (8, 8))  # a narrow film: 2 of 8 columns are the image
    assert cells.sum() == 16 and cells[:, 3:5].all()
    rng = np.random.default_rng(1)
    ref = np.zeros((5, 8, 8))
    art = np.zeros((5, 8, 8))
    ref[:, :, 3:5] = 0.5 + 0.1 * rng.random((5, 8, 2))
    art[:, :, 3:5] = 0.5 + 0.1 * rng.random((5, 8, 2))  # on the image, unrelated to the reference
    y, p = np.ones(5, int), np.full(5, 0.8)
    loose = compare(y, p, p, 0.5, ref, art, "map")["map_correlation_mean"]
    strict = compare(y, p, p, 0.5, ref, art, "map", cells=np.stack([cells] * 5))["map_correlation_mean"]
    assert loose > 0.9 and strict < 0.6
