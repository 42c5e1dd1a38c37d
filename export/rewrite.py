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


_PASS_THROUGH = ("MaxPooling2D", "Dropout", "Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D")


MAX_EQUALIZE_SCALE = 16.0


def equalize_ranges(model, images: np.ndarray):
    """Cross-layer equalisation (Nagel et al., 2019) between each ReLU conv and the conv or dense
    layer it feeds; exact in float.

    int8 gives each activation tensor one scale. Between two convs the tensor the consumer reads
    is the pooled ReLU output plus the BatchNorm fold's per-channel shift: centred values whose
    channels differ in range, read by weights that carry BatchNorm's scales (up to 20x apart), so
    a channel with a small range and large weights is rounded to a few steps and its error
    amplified. Measured on the film-path phantom model: the int8 copy moved every probability by
    ~0.05 (a logit shift of ~0.8). Nagel's rule balances the two: channel c of the producer is
    multiplied by s_c = sqrt(w_c / r_c) (r_c the channel's range in the tensor the consumer reads,
    on the calibration images; w_c the consumer's largest weight for it; scales centred on 1 and
    kept within 1/16..16), the consumer's weights for it divided by s_c. A positive per-channel
    scale commutes with ReLU, max pooling, dropout, global pooling, flattening and the shift (whose
    bias scales too). Measured on that model (int8 TFLite, its test split): mean |Δp| 0.048 ->
    0.035 with the stratified calibration export uses, 0.013 with another 200 training images;
    still above export's 0.02, so its int8 copies are refused (docs/results.md).
    """
    import keras

    chain = _chain(model)
    new = keras.models.clone_model(model)
    new.set_weights(model.get_weights())
    done = 0
    for i, layer in enumerate(chain):
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        if type(layer).__name__ != "Conv2D" or act != "relu":
            continue
        between, consumer = [], None
        for nxt in chain[i + 1:]:
            kind = type(nxt).__name__
            if kind in _PASS_THROUGH or (kind == "DepthwiseConv2D" and nxt.name.endswith("_input_shift")):
                between.append(nxt)
                continue
            if kind in ("Conv2D", "Dense"):
                consumer = nxt
            break
        if consumer is None:
            continue
        # Weights come from the working copy: a conv is the consumer of one pair and the producer
        # of the next, and both changes must stand.
        # The tensor the consumer reads, as int8 sees it, with its channels still last (before a
        # Flatten, whose rows are positions x channels).
        keeps = [m for m in between if type(m).__name__ != "Flatten"]
        read = keeps[-1] if keeps else layer
        acts = keras.Model(new.inputs, new.get_layer(read.name).output).predict(images, verbose=0)
        acts = acts.reshape(-1, acts.shape[-1]).astype(np.float64)
        r = np.maximum(acts.max(axis=0), 0) - np.minimum(acts.min(axis=0), 0)
        cw = [np.asarray(v, np.float64) for v in new.get_layer(consumer.name).get_weights()]
        dense = type(consumer).__name__ == "Dense"
        c = acts.shape[-1]
        w_in = np.abs(cw[0]).reshape(-1, c, cw[0].shape[-1]).max(axis=(0, 2)) if dense else np.abs(cw[0]).max(axis=(0, 1, 3))
        live = (r > 0) & (w_in > 0)
        if not live.any():
            continue
        s = np.ones_like(r)
        s[live] = np.sqrt(w_in[live] / r[live])
        s[live] /= np.exp(np.mean(np.log(s[live])))
        s = np.clip(s, 1 / MAX_EQUALIZE_SCALE, MAX_EQUALIZE_SCALE)
        w, b = new.get_layer(layer.name).get_weights()
        new.get_layer(layer.name).set_weights([(w * s[None, None, None, :]).astype(np.float32),
                                               (b * s).astype(np.float32)])
        for mid in between:
            if type(mid).__name__ == "DepthwiseConv2D":
                dw, db = new.get_layer(mid.name).get_weights()
                new.get_layer(mid.name).set_weights([dw, (db * s).astype(np.float32)])
        if dense:
            cw[0] = (cw[0].reshape(-1, c, cw[0].shape[-1]) / s[None, :, None]).reshape(cw[0].shape)
        else:
            cw[0] = cw[0] / s[None, None, :, None]
        new.get_layer(consumer.name).set_weights([v.astype(np.float32) for v in cw])
        done += 1
    if not done:
        raise NotFoldable("no ReLU conv feeding another conv to equalise")
    return new
