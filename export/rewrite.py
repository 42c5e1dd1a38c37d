"""Quantization-friendly re-parameterisation: fold BatchNorm-after-ReLU into the next layer.

The paper's blocks are Conv(ReLU) -> BatchNorm -> MaxPool. A BatchNorm after the ReLU cannot be
folded into its conv (the converter's usual trick), so int8 has to quantize its output, and that
output is the worst tensor in the network for per-tensor int8: BN's per-channel scales g differ
by up to 20x, so one channel sets a range of ~75 while the others live in [-1.5, 1]. Measured on
the phantom models: the int8 TFLite copy flipped up to 80% of the float model's decisions.

With every g > 0 (checked), BN commutes with max pooling, so the same function is

    Conv(ReLU) -> MaxPool -> [+ b/g per channel] -> next Conv with its input weights scaled by g
    Conv(ReLU) -> MaxPool -> Flatten/GlobalPool -> Dense with rows scaled by g, bias + W.b

The per-channel shift keeps "same" zero padding exact (padding u = g*(m + b/g) with zeros is g
times padding m + b/g with zeros); it is a 1x1 depthwise conv, which int8 handles well because
its range is the ReLU output's. Float outputs are compared with the original before use.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np


class NotFoldable(ValueError):
    pass


def _bn_affine(bn) -> Tuple[np.ndarray, np.ndarray]:
    var = np.asarray(bn.moving_variance, np.float64)
    gamma = np.ones_like(var) if bn.gamma is None else np.asarray(bn.gamma, np.float64)
    beta = np.zeros_like(var) if bn.beta is None else np.asarray(bn.beta, np.float64)
    g = gamma / np.sqrt(var + bn.epsilon)
    return g, beta - np.asarray(bn.moving_mean, np.float64) * g


def _chain(model) -> List:
    layers = list(model.layers)
    for prev, layer in zip(layers, layers[1:]):
        if layer.input is not prev.output:
            raise NotFoldable(f"{layer.name} does not follow {prev.name}: not a plain chain")
    return layers


def _clone(layer, x):
    """A fresh copy of the layer applied to x (sharing the original would give it two inbound
    nodes, and the Grad-CAM feature layer's output must stay addressable by name)."""
    new = type(layer).from_config(layer.get_config())
    y = new(x)
    new.set_weights(layer.get_weights())
    return y


def fold_batchnorm_after_relu(model):
    """An equivalent model without BN-after-ReLU layers, or NotFoldable saying why not."""
    import keras
    from keras import layers as L

    chain = _chain(model)
    if not any(isinstance(layer, L.BatchNormalization) for layer in chain):
        raise NotFoldable("no BatchNormalization layer to fold")
    x = inp = keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name.split(":")[0] or "image")
    pending: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (g, b) not yet applied
    prev = None
    for layer in chain[1:]:
        if isinstance(layer, L.BatchNormalization):
            act = getattr(getattr(prev, "activation", None), "__name__", "")
            if not isinstance(prev, L.Conv2D) or act != "relu" or pending is not None:
                raise NotFoldable(f"{layer.name} does not follow a Conv2D with ReLU")
            g, b = _bn_affine(layer)
            if not (g > 0).all():
                raise NotFoldable(f"{layer.name} has a non-positive scale: it does not commute with max pooling")
            pending = (g, b)
            prev = layer
            continue
        if pending is not None and isinstance(layer, (L.MaxPooling2D, L.Dropout, L.Flatten,
                                                      L.GlobalAveragePooling2D, L.GlobalMaxPooling2D)):
            x = _clone(layer, x)  # pooling and flatten commute with a positive per-channel affine map
        elif pending is not None and isinstance(layer, L.Conv2D) and type(layer) is L.Conv2D:
            g, b = pending
            shift = L.DepthwiseConv2D(1, use_bias=True, name=f"{layer.name}_input_shift")
            x = shift(x)
            shift.set_weights([np.ones((1, 1, len(g), 1), np.float32), (b / g).astype(np.float32)])
            w, bias = layer.get_weights()
            conv = L.Conv2D.from_config(layer.get_config())
            x = conv(x)
            conv.set_weights([(w * g[None, None, :, None]).astype(np.float32), bias])
            pending = None
        elif pending is not None and isinstance(layer, L.Dense):
            g, b = pending
            w, bias = layer.get_weights()
            c = len(g)
            if w.shape[0] % c:
                raise NotFoldable(f"{layer.name}: {w.shape[0]} inputs is not a multiple of {c} channels")
            wr = w.reshape(-1, c, w.shape[1]).astype(np.float64)
            dense = L.Dense.from_config(layer.get_config())
            x = dense(x)
            dense.set_weights([(wr * g[None, :, None]).reshape(w.shape).astype(np.float32),
                               (bias + (wr * b[None, :, None]).sum((0, 1))).astype(np.float32)])
            pending = None
        elif pending is not None:
            raise NotFoldable(f"cannot carry a BatchNorm through {layer.name} ({type(layer).__name__})")
        else:
            x = _clone(layer, x)
        prev = layer
    if pending is not None:
        raise NotFoldable("a BatchNorm is not followed by a layer it can fold into")
    return keras.Model(inp, x, name=model.name)


def check_equivalent(original, rewritten, images: np.ndarray, tol: float = 1e-4) -> float:
    """Largest |Δp| between the two float models on these images; NotFoldable above `tol`."""
    a = original.predict(images, verbose=0).reshape(-1)
    b = rewritten.predict(images, verbose=0).reshape(-1)
    worst = float(np.abs(a - b).max()) if len(a) else 0.0
    if worst > tol:
        raise NotFoldable(f"rewritten model differs from the original by {worst:.2e} > {tol}")
    return worst
