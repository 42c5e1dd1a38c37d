"""Every registry model builds with the expected shapes; weights load from a local file."""

import numpy as np
import pytest

from train.models import UnknownModelError, build_model, get_config, list_models
from train.models.complexity import complexity

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list_models())
def test_registry_model_shapes(name):
    cfg = get_config(name)
    m = build_model(name, weights="none")
    assert tuple(m.input.shape) == (None, cfg.input_size, cfg.input_size, 1)
    assert tuple(m.output.shape) == (None, 1)
    assert len(m.get_layer(cfg.gradcam_layer).output.shape) == 4
    assert m.get_layer("logit").output.shape[-1] == 1
    c = complexity(m)
    assert c["params"] > 0 and c["macs_per_image"] > c["trainable_params"]
    if cfg.pretrained:  # frozen base: only the head trains
        assert c["trainable_params"] < 0.1 * c["params"]
    p = np.asarray(m(np.zeros((1, cfg.input_size, cfg.input_size, 1), np.float32)))
    assert p.shape == (1, 1) and 0.0 <= p[0, 0] <= 1.0


def test_custom_cnn_matches_the_paper_and_hand_counted_macs():
    m = build_model("custom_cnn")
    c = complexity(m)
    conv = 128 * 128 * 9 * 1 * 32 + 64 * 64 * 9 * 32 * 64 + 32 * 32 * 9 * 64 * 128
    dense = 16 * 16 * 128 * 128 + 128
    assert c["macs_per_image"] == conv + dense
    assert m.get_layer("dense").count_params() == 16 * 16 * 128 * 128 + 128  # the 4.2 M Dense
    assert complexity(build_model("custom_cnn_gap"))["params"] < c["params"] / 40


def test_weights_from_a_local_file(tmp_path):
    first = build_model("mobilenetv2", weights="none")
    base_layers = [l for l in first.layers if l.name not in ("gap", "dense", "logit", "prob")]
    import keras
    base = keras.Model(first.input, first.get_layer("out_relu").output)
    path = tmp_path / "mnv2.weights.h5"
    base.save_weights(path)
    second = build_model("mobilenetv2", weights=str(path))
    for name in ("Conv1", "block_16_project", "Conv_1"):
        for a, b in zip(first.get_layer(name).get_weights(), second.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert any(l.weights for l in base_layers)


def test_weights_errors_are_clear(tmp_path):
    from train.models.transfer import WeightsError

    with pytest.raises(WeightsError, match="weights file for resnet50 not found"):
        build_model("resnet50", weights=str(tmp_path / "nope.h5"))
    with pytest.raises(WeightsError, match="mobilenet_v2_weights"):
        build_model("mobilenetv2", weights=str(tmp_path))  # a folder without Keras's file name
    with pytest.raises(ValueError, match="from scratch"):
        build_model("custom_cnn", weights=str(tmp_path / "x.h5"))


def test_unknown_model_suggests_the_closest():
    with pytest.raises(UnknownModelError, match="did you mean 'resnet50'"):
        get_config("resnet5")


def test_each_entry_states_its_preprocessing_and_the_model_follows_it():
    """The input size is stated once, in the entry's PreprocessSpec: the builder takes its shape
    from there, so an entry with another size builds a model of that size."""
    import dataclasses

    from train.models import PAPER_MODELS
    from train.models.registry import DEFAULT_NORMALIZE, DEFAULT_RESIZE, DEFAULT_VIEWS, _REGISTRY

    assert set(PAPER_MODELS) <= set(list_models())
    for name in list_models():
        p = get_config(name).preprocess
        if get_config(name).is_map:  # measured choices of its own (docs/results.md): 256, letterbox, one view
            assert (p.size, p.resize, p.normalize, p.views) == (256, "letterbox", DEFAULT_NORMALIZE, "single")
        else:
            assert (p.resize, p.normalize, p.views) == (DEFAULT_RESIZE, DEFAULT_NORMALIZE, DEFAULT_VIEWS)
        assert get_config(name).input_size == p.size
    cfg = get_config("custom_cnn_gap")
    smaller = dataclasses.replace(cfg, name="custom_cnn_gap_96", preprocess=dataclasses.replace(cfg.preprocess, size=96))
    _REGISTRY[smaller.name] = smaller
    try:
        assert tuple(build_model(smaller.name).input.shape) == (None, 96, 96, 1)
    finally:
        del _REGISTRY[smaller.name]


def test_training_options_override_the_entry_and_refuse_nonsense():
    from train.fit import TrainOptions

    base = get_config("custom_cnn").preprocess
    assert TrainOptions().preprocess_for(base) == base
    letterboxed = TrainOptions(resize="letterbox", normalize="clahe", views="single").preprocess_for(base)
    assert (letterboxed.size, letterboxed.resize, letterboxed.normalize, letterboxed.views) == \
        (base.size, "letterbox", "clahe", "single")
    with pytest.raises(ValueError, match="unknown threshold rule 'f1'"):
        TrainOptions(threshold_rule="f1")
    with pytest.raises(ValueError, match="resize must be one of"):
        TrainOptions(resize="crop")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TrainOptions(batch_size=0)
