"""Reference Grad-CAM: follows the gradient to a planted feature, not just bright pixels."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _planted_model(head: str):
    """conv = identity of the input (+ReLU); head reads the map through GAP or one Flatten region."""
    import keras
    from keras import layers

    inp = keras.Input((32, 32, 1))
    conv = layers.Conv2D(1, 3, padding="same", activation="relu", name="conv",
                         kernel_initializer=keras.initializers.Constant(
                             np.pad([[1.0]], 1).reshape(3, 3, 1, 1)), bias_initializer="zeros")(inp)
    if head == "gap":
        x = layers.GlobalAveragePooling2D()(conv)
        logit = layers.Dense(1, name="logit", kernel_initializer="ones")(x)
    else:
        x = layers.Flatten()(conv)
        w = np.zeros((32 * 32, 1), np.float32)
        w.reshape(32, 32)[20:26, 4:10] = 1.0  # the head only looks at this patch
        logit = layers.Dense(1, name="logit", kernel_initializer=keras.initializers.Constant(w))(x)
    out = layers.Activation("sigmoid", name="prob")(logit)
    return keras.Model(inp, out)


def test_gradcam_peaks_on_the_planted_bright_square():
    from train.gradcam import gradcam

    img = np.zeros((1, 32, 32, 1), np.float32)
    img[0, 5:10, 22:27, 0] = 1.0
    raw, norm, prob = gradcam(_planted_model("gap"), img, "conv")
    peak = np.unravel_index(np.argmax(norm[0]), norm[0].shape)
    assert 5 <= peak[0] < 10 and 22 <= peak[1] < 27
    assert norm[0].max() == pytest.approx(1.0) and norm[0][20:, :10].max() == 0.0
    assert 0.5 < prob[0] < 1.0


def test_gradcam_channel_weight_is_the_mean_gradient():
    from train.gradcam import gradcam

    img = np.full((1, 32, 32, 1), 0.2, np.float32)
    img[0, 2:8, 2:8, 0] = 1.0
    raw, norm, _ = gradcam(_planted_model("flatten"), img, "conv")
    # d logit / d map is the head's weight patch (36 ones over 32x32), so the channel weight is
    # 36/1024 and the map is that times the feature map, which equals the input here.
    assert raw[0].max() == pytest.approx(1.0 * 36 / 1024, rel=1e-5)
    assert norm[0][2:8, 2:8].min() == pytest.approx(1.0)
