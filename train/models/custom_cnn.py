"""The paper's custom CNN, and two lean variants of ours that replace its 4.2 M-weight Dense head.

Max pooling keeps the strongest local response of a few-pixel finding; average pooling is the
usual head. Which serves FracAtlas better is measured, not assumed (docs/results.md).
"""

from __future__ import annotations

from .registry import model_preprocess, register_model

FILTERS = (32, 64, 128)
PREPROCESS = model_preprocess(128)  # the input size of all three: the paper's 128 x 128
# What the out-of-scope gate measures: each block's ReLU features (before BatchNorm, so never
# negative), globally averaged: 32 + 64 + 128 values, edges to the last block, as the map's gate.
SCOPE_LAYERS = tuple(f"block{i}_conv" for i in range(1, len(FILTERS) + 1))


def _features(x, layers):
    for i, f in enumerate(FILTERS, start=1):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"block{i}_conv")(x)
        # momentum 0.9, not Keras's 0.99: with ~90 steps an epoch the moving statistics must
        # catch up within an epoch or validation (inference-mode BN) sees garbage.
        x = layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{i}_dropout")(x)
    return x


def _output(x, layers):
    logit = layers.Dense(1, name="logit")(x)
    # float32 output even under mixed precision, so probabilities are not rounded to fp16.
    return layers.Activation("sigmoid", dtype="float32", name="prob")(logit)


@register_model("custom_cnn", preprocess=PREPROCESS, gradcam_layer="block3_conv", default_epochs=30,
                pretrained=False, scope_layers=SCOPE_LAYERS, description="paper: 3x(Conv-BN-MaxPool-Dropout), Flatten, Dense(128), Dense(1)")
def custom_cnn(input_shape):
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="image")
    x = _features(inp, layers)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="head_dropout")(x)
    return keras.Model(inp, _output(x, layers), name="custom_cnn")


def _lean(name: str, pooling: str, input_shape):
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="image")
    x = _features(inp, layers)
    pool = layers.GlobalMaxPooling2D if pooling == "gmp" else layers.GlobalAveragePooling2D
    x = pool(name=pooling)(x)
    x = layers.Dropout(0.3, name="head_dropout")(x)
    return keras.Model(inp, _output(x, layers), name=name)


@register_model("custom_cnn_gmp", preprocess=PREPROCESS, gradcam_layer="block3_conv", default_epochs=30,
                pretrained=False, scope_layers=SCOPE_LAYERS, description="ours: same 3 blocks, GlobalMaxPooling head (~45x fewer params)")
def custom_cnn_gmp(input_shape):
    return _lean("custom_cnn_gmp", "gmp", input_shape)


@register_model("custom_cnn_gap", preprocess=PREPROCESS, gradcam_layer="block3_conv", default_epochs=30,
                pretrained=False, scope_layers=SCOPE_LAYERS, description="ours: same 3 blocks, GlobalAveragePooling head (~45x fewer params)")
def custom_cnn_gap(input_shape):
    return _lean("custom_cnn_gap", "gap", input_shape)
