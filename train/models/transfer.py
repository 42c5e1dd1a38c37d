"""Transfer-learning baselines: frozen ImageNet base, GAP, Dense(64, ReLU), Dense(1, sigmoid).

The grayscale input is replicated to three channels and scaled to what each base expects inside
the model, so every model takes the same [0, 1] input from edge_runtime.preprocess. The base is
built on that tensor (not nested), which keeps its last conv layer reachable for Grad-CAM.
"""

from __future__ import annotations

from pathlib import Path

from .registry import model_preprocess, register_model

PREPROCESS = model_preprocess(224)  # the ImageNet bases' native input size

# What the out-of-scope gate measures in each frozen base: two activations, one early and one
# half-way down, globally averaged. Not the 1,280-2,048 values the head reads: the gate keeps a
# precision matrix per group, 7-17 MB each at that width; at these 288-384 values, 0.3-0.6 MB.
# Chosen by width and depth, not measured (no ImageNet weights or FracAtlas on the machines that
# chose them): `python -m train.scope_evaluate RUN --bundle B` measures a bundle.
SCOPE_LAYERS = {
    "efficientnetb0": ("block2a_expand_activation", "block4a_activation"),  # 96 + 240; swish: a negative mean reads 0
    "mobilenetv2": ("block_1_expand_relu", "block_6_depthwise_relu"),  # 96 + 192
    "resnet50": ("conv3_block4_2_relu", "conv4_block6_2_relu"),  # 128 + 256
}

# Keras's own file names for the no-top ImageNet weights, so `--weights DIR` can hold all three.
WEIGHT_FILES = {
    "efficientnetb0": "efficientnetb0_notop.h5",
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


class WeightsError(ValueError):
    """Pretrained weights could not be found or loaded; the message says what to pass instead."""


def resolve_weights(name: str, weights: str):
    """'imagenet' | 'none' | a weights file | a folder holding Keras's file name for this model."""
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    p = Path(weights).expanduser()
    if p.is_dir():
        p = p / WEIGHT_FILES[name]
    if not p.is_file():
        raise WeightsError(f"{p}: weights file for {name} not found")
    return str(p)


def _transfer(name: str, app: str, scale: float, offset, input_shape, weights: str):
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="image")
    x = layers.Concatenate(name="gray_to_rgb")([inp, inp, inp])
    x = layers.Rescaling(scale, offset=offset, name="imagenet_scaling")(x)
    w = resolve_weights(name, weights)
    try:
        base = getattr(keras.applications, app)(include_top=False, weights=w, input_tensor=x,
                                                input_shape=(*input_shape[:2], 3))
    except Exception as exc:  # network failure, wrong file: say which and what to do
        raise WeightsError(
            f"{name}: could not load weights {w!r} ({type(exc).__name__}: {exc}). Without internet, "
            f"pass --weights PATH (a file, or a folder with {WEIGHT_FILES[name]}) or --weights none") from exc
    for layer in base.layers:
        layer.trainable = False
    y = layers.GlobalAveragePooling2D(name="gap")(base.output)
    y = layers.Dense(64, activation="relu", name="dense")(y)
    logit = layers.Dense(1, name="logit")(y)
    out = layers.Activation("sigmoid", dtype="float32", name="prob")(logit)
    return keras.Model(inp, out, name=name)


@register_model("efficientnetb0", preprocess=PREPROCESS, gradcam_layer="top_activation", default_epochs=5,
                pretrained=True, scope_layers=SCOPE_LAYERS["efficientnetb0"], description="EfficientNetB0 base (expects 0-255)")
def efficientnetb0(input_shape, weights: str = "imagenet"):
    return _transfer("efficientnetb0", "EfficientNetB0", 255.0, 0.0, input_shape, weights)


@register_model("mobilenetv2", preprocess=PREPROCESS, gradcam_layer="out_relu", default_epochs=5,
                pretrained=True, scope_layers=SCOPE_LAYERS["mobilenetv2"], description="MobileNetV2 base (expects [-1, 1])")
def mobilenetv2(input_shape, weights: str = "imagenet"):
    return _transfer("mobilenetv2", "MobileNetV2", 2.0, -1.0, input_shape, weights)


@register_model("resnet50", preprocess=PREPROCESS, gradcam_layer="conv5_block3_out", default_epochs=5,
                pretrained=True, scope_layers=SCOPE_LAYERS["resnet50"], description="ResNet50 base (caffe: BGR means subtracted from 0-255)")
def resnet50(input_shape, weights: str = "imagenet"):
    # Gray replicated, so the BGR order of the caffe means only decides which channel gets which.
    return _transfer("resnet50", "ResNet50", 255.0, [-103.939, -116.779, -123.68], input_shape, weights)
