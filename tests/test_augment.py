"""Training augmentation: seeded, in range, and followed by THE normalisation."""

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, normalize_intensity, resize_input, window
from train.augment import augment, describe, geometry, photometric


def _image():
    from fracdata.phantom import render_phantom
    spec = PreprocessSpec()
    return resize_input(render_phantom(np.random.default_rng(1), "leg", True, size=(300, 240)) / 255.0, spec)


def test_the_same_seed_gives_the_same_augmented_image():
    x = _image()
    a = augment(x, np.random.default_rng([3, 1, 7]), dihedral=True)
    b = augment(x, np.random.default_rng([3, 1, 7]), dihedral=True)
    c = augment(x, np.random.default_rng([3, 2, 7]), dihedral=True)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1


def test_photometric_changes_gray_levels_not_anatomy():
    x = _image()
    y = photometric(x, np.random.default_rng(0))
    assert np.abs(y - x).mean() > 0.01  # it did something
    # The same picture under a gray-level mapping, light and noise: at a coarse scale it still
    # correlates with the original.
    def coarse(a):
        return a.reshape(16, 8, 16, 8).mean(axis=(1, 3)).ravel()
    assert np.corrcoef(coarse(x), coarse(y))[0, 1] > 0.8


def test_geometry_rotates_by_quarter_turns_only_when_dihedral():
    x = np.zeros((64, 64), np.float32)
    x[5:20, 30:34] = 1.0  # a bar near the top
    tops = [geometry(x, np.random.default_rng(k), dihedral=False, perspective=0.0)[:32].sum() >
            geometry(x, np.random.default_rng(k), dihedral=False, perspective=0.0)[32:].sum() for k in range(20)]
    assert all(tops)  # without quarter turns the bar stays in the top half (rotation <= 20 deg, zoom <= 20%)
    moved = [geometry(x, np.random.default_rng(k), dihedral=True, perspective=0.0)[:32].sum() <
             geometry(x, np.random.default_rng(k), dihedral=True, perspective=0.0)[32:].sum() for k in range(20)]
    assert any(moved)


def test_training_batches_are_normalised_like_the_device_input():
    from fracdata.images import LoadedSplit
    from train.dataset import training_batch

    spec = PreprocessSpec(normalize="window", views="dihedral")
    xs = np.stack([_image() for _ in range(5)])
    split = LoadedSplit([], xs, np.array([0, 1, 0, 1, 0]), spec)
    batch_of, steps = training_batch(split, 4, seed=0)
    batch, labels = batch_of(0)
    assert steps == 2 and batch.shape == (4, 128, 128, 1) and labels.shape == (4,)
    for img in batch[..., 0]:  # already normalised: normalising again changes nothing
        np.testing.assert_allclose(normalize_intensity(img, spec), img, atol=1e-3)
    np.testing.assert_allclose(split.images[0, ..., 0], window(xs[0]), atol=1e-6)  # val/test: exactly THE function
    assert describe(True)["dihedral"] and describe(True, photo=False)["photometric"] is None


def test_another_systems_marks_never_cover_a_fracture_box():
    """Bands and markers land beside the boxes, never on them (the targets stay true); on a uniform
    image the processing steps leave the box uniform, so any change inside it would be a mark."""
    from train.augment import acquisition

    x = np.full((128, 128), 0.5, np.float32)
    box = (40.0, 50.0, 90.0, 80.0)
    marked = 0
    for k in range(120):
        y = acquisition(x, [box], np.random.default_rng([5, k]))
        assert y.shape == x.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
        inside = y[50:80, 40:90]
        assert inside.std() < 1e-6, k
        marked += bool(np.abs(y - inside.mean()).max() > 0.2)  # a band or a marker elsewhere
    assert marked >= 20  # the marks are drawn, just not over the box


def test_another_systems_processing_is_seeded_opt_in_and_recorded():
    from train.augment import ACQUISITION, acquisition, augment_with_boxes, describe_map

    x = _image()
    a = acquisition(x, [], np.random.default_rng(9))
    assert np.array_equal(a, acquisition(x, [], np.random.default_rng(9))) and not np.array_equal(a, x)
    assert describe_map()["acquisition"] is None  # off unless asked for: the reference's training command is unchanged
    assert describe_map(True, True)["acquisition"]["probability"] == ACQUISITION.probability
    on = [augment_with_boxes(x, [], np.random.default_rng([2, k]), photo=False, acquisition_effects=True)[0]
          for k in range(12)]
    off = [augment_with_boxes(x, [], np.random.default_rng([2, k]), photo=False)[0] for k in range(12)]
    assert all(np.array_equal(a, augment_with_boxes(x, [], np.random.default_rng([2, k]), photo=False,
                                                    acquisition_effects=True)[0]) for k, a in enumerate(on))
    # the same geometry either way (the effects draw after it); some images then get the effects
    assert 0 < sum(not np.array_equal(a, b) for a, b in zip(on, off)) < 12


def test_without_the_flag_a_map_image_is_augmented_exactly_as_before_it_existed():
    """The reference's documented training command must still reproduce it: off, the effects draw
    nothing from the random stream, so geometry then photo effects see the draws they always did."""
    from train.augment import MAP_SHIFT, MAP_ZOOM, PHOTOMETRIC, augment_with_boxes, map_geometry

    x = _image()
    boxes = [(60.0, 50.0, 90.0, 80.0)]
    for k in range(6):
        got, moved = augment_with_boxes(x, boxes, np.random.default_rng([8, k]))
        rng = np.random.default_rng([8, k])
        want, want_boxes = map_geometry(x, boxes, rng, PHOTOMETRIC.perspective, MAP_ZOOM, MAP_SHIFT)
        if rng.random() < PHOTOMETRIC.probability:
            want = photometric(want, rng)
        assert np.array_equal(got, want) and moved == want_boxes, k
