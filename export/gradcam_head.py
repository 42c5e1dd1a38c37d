"""Fold the layers between the Grad-CAM feature layer and the logit into the small arrays that
edge_runtime.gradcam needs (see its docstring for the algebra).

Walks the Keras model from the feature layer to the layer named 'logit' and accepts only layers
whose gradient it can fold exactly; anything else raises UnsupportedHead, and the bundle then
ships without a heatmap rather than with a wrong one. Export also checks the result numerically
against the GradientTape reference on the float artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np


class UnsupportedHead(ValueError):
    pass


@dataclass
class HeadSpec:
    layer: str
    feature_shape: tuple  # (h, w, C)
    arrays: Dict[str, np.ndarray]  # {"alpha"} or {"mix", "w_out"}
    hidden_layer: Optional[str]  # Dense+ReLU whose output the model must emit, if any


def derive_head(model, layer_name: str) -> HeadSpec:
    layers = list(model.layers)
    names = [layer.name for layer in layers]
    if layer_name not in names or "logit" not in names:
        raise UnsupportedHead(f"model has no layer {layer_name!r} or no 'logit' layer")
    feat = layers[names.index(layer_name)]
    h, w, c = (int(d) for d in feat.output.shape[1:])
    scale = np.ones(c, np.float64)
    state, flat_positions, kernel, hidden = "spatial", None, None, None
    prev = feat
    for layer in layers[names.index(layer_name) + 1:]:
        if layer.input is not prev.output:
            raise UnsupportedHead(f"{layer.name} does not follow {prev.name} directly (branching head)")
        kind = type(layer).__name__
        prev = layer
        if kind == "Dropout":
            continue
        if kind == "BatchNormalization" and state == "spatial":
            gamma = np.ones(c) if layer.gamma is None else np.asarray(layer.gamma, np.float64)
            scale *= gamma / np.sqrt(np.asarray(layer.moving_variance, np.float64) + layer.epsilon)
        elif kind == "MaxPooling2D" and state == "spatial":
            continue  # routes each gradient to one input: per-channel sums are unchanged
        elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D") and state == "spatial":
            state = "vector"  # either way the per-channel gradient sum is the pooled gradient
        elif kind == "Flatten" and state == "spatial":
            state, flat_positions = "flat", int(np.prod(layer.input.shape[1:3]))
        elif kind == "Dense" and layer.name != "logit" and state in ("vector", "flat") and hidden is None:
            if getattr(layer.activation, "__name__", "") != "relu":
                raise UnsupportedHead(f"hidden Dense {layer.name} is not ReLU")
            kernel, hidden = np.asarray(layer.kernel, np.float64), layer.name
        elif layer.name == "logit" and state in ("vector", "flat"):
            w_out = np.asarray(layer.kernel, np.float64)[:, 0]
            break
        else:
            raise UnsupportedHead(f"cannot fold layer {layer.name} ({kind}) into the Grad-CAM head")
    else:
        raise UnsupportedHead("no 'logit' layer after the feature layer")

    per_channel = scale / float(h * w)
    if hidden is None:
        u = w_out.reshape(flat_positions, c).sum(0) if state == "flat" else w_out
        arrays = {"alpha": (per_channel * u).astype(np.float32)}
    else:
        mix = kernel.reshape(flat_positions, c, -1).sum(0) if state == "flat" else kernel
        arrays = {"mix": (per_channel[:, None] * mix).astype(np.float32), "w_out": w_out.astype(np.float32)}
    return HeadSpec(layer_name, (h, w, c), arrays, hidden)


def head_file_bytes(spec: HeadSpec) -> tuple:
    """(bytes of the little-endian float32 file, the manifest's array index)."""
    from edge_runtime.bundle import pack_arrays

    return pack_arrays(spec.arrays)
