"""The fracture-map model: per-location fracture logits, and the image's answer pooled from them.

Box-supervised (train/map_fit.py): each cell of the map is trained on whether it lies in a
fracture box, away from one, or in the ignored margin around one (fracdata/targets.py). The
image's logit is a pooling of that map alone (layer 'logit', edge_runtime.fracture_map), so there is
no image-level head that could learn "a real radiograph is fractured" from data in which every
real radiograph is; and the map itself is the heatmap the device shows, from the same inference.

Layout: plain Conv-BN-ReLU blocks (BatchNorm before the ReLU, so every converter folds it into the
convolution and int8 sees one tensor per block), three max-poolings to a map at 1/8 of the input,
then dilated convolutions (rates 2, 4) that widen the receptive field to ~150 px without losing
the map's resolution: whether a dark line is a fracture depends on the bone around it.
"""

from __future__ import annotations

from edge_runtime.fracture_map import MapPooling
from edge_runtime.preprocess import PreprocessSpec

from .registry import DEFAULT_NORMALIZE, register_model

STRIDE = 8  # input pixels per map cell (three 2x2 max-poolings)
# Input size and letterboxing were chosen by measurement (docs/results.md, "The fracture map"):
# narrow forearm films lose their aspect ratio when stretched, and a hairline is a pixel wide at 128.
PREPROCESS = PreprocessSpec(size=256, resize="letterbox", normalize=DEFAULT_NORMALIZE, views="single")
POOLING = MapPooling("lse", r=4.0)
# (filters, dilation) per convolution; "pool" between the stages.
LAYOUT = ((16, 1), "pool", (32, 1), (32, 1), "pool", (64, 1), (64, 1), "pool", (96, 1), (96, 2), (96, 4))
FEATURE_LAYER = "conv8_relu"  # the last features, which the map reads (and Grad-CAM, for comparison)
# What the out-of-scope gate measures (edge_runtime/scope.py): the global average of these layers'
# features, from edges to the map's own. The last layer alone let through half of the generated
# skulls and ultrasound images at the same in-scope rate (docs/results.md, "Out of scope").
SCOPE_LAYERS = ("conv2_relu", "conv3_relu", "conv5_relu", "conv8_relu")


def _cbr(x, filters: int, dilation: int, name: str, layers):
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_map_model(input_shape, pooling: MapPooling = POOLING, layout=LAYOUT, dropout: float = 0.2,
                    name: str = "fracture_map"):
    import keras
    from keras import layers

    from .layers import MapPool

    if input_shape[0] is not None and (input_shape[0] % STRIDE or input_shape[1] % STRIDE):
        raise ValueError(f"{name}: input size must be a multiple of {STRIDE}, got {input_shape[:2]}")
    inp = keras.Input(input_shape, name="image")
    x, k = inp, 0
    for item in layout:
        if item == "pool":
            x = layers.MaxPooling2D(2, name=f"pool{k}")(x)
            continue
        k += 1
        x = _cbr(x, item[0], item[1], f"conv{k}", layers)
    x = layers.Dropout(dropout, name="map_dropout")(x)
    # The bias starts at the log-odds of a fracture cell (~1 in 50): the map starts near its prior.
    m = layers.Conv2D(1, 1, name="map", bias_initializer=keras.initializers.Constant(-4.0))(x)
    logit = MapPool(pooling.kind, pooling.r, pooling.k, name="logit")(m)
    prob = layers.Activation("sigmoid", dtype="float32", name="prob")(logit)
    return keras.Model(inp, prob, name=name)


@register_model("fracture_map", preprocess=PREPROCESS, gradcam_layer=FEATURE_LAYER, default_epochs=56,
                pretrained=False, map_pooling=POOLING, map_stride=STRIDE, default_batch=16, scope_layers=SCOPE_LAYERS,
                description="ours: box-supervised fracture map (8 Conv-BN-ReLU, 3 pools, dilations 2 and 4; "
                            "1/8-resolution map; image logit = pooled map)")
def fracture_map(input_shape, pooling: MapPooling = POOLING):
    return build_map_model(input_shape, pooling)


# The reference fits its own training radiographs no better than its validation ones (the rest of
# each radiograph outranked as often on both), so a wider last stage was tried beside it: 128
# features at 1/8 and a fourth convolution there. Measured no better on either (docs/results.md,
# "More capacity"); kept as an option for a machine with more time.
WIDE_LAYOUT = ((16, 1), "pool", (32, 1), (32, 1), "pool", (64, 1), (64, 1), "pool",
               (128, 1), (128, 2), (128, 4), (128, 1))
WIDE_FEATURE_LAYER = "conv9_relu"
WIDE_SCOPE_LAYERS = ("conv2_relu", "conv3_relu", "conv5_relu", WIDE_FEATURE_LAYER)


@register_model("fracture_map_wide", preprocess=PREPROCESS, gradcam_layer=WIDE_FEATURE_LAYER, default_epochs=56,
                pretrained=False, map_pooling=POOLING, map_stride=STRIDE, default_batch=16,
                scope_layers=WIDE_SCOPE_LAYERS,
                description="ours: fracture_map with a wider last stage (9 Conv-BN-ReLU, 128 features at 1/8)")
def fracture_map_wide(input_shape, pooling: MapPooling = POOLING):
    return build_map_model(input_shape, pooling, layout=WIDE_LAYOUT, name="fracture_map_wide")
