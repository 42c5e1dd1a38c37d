"""Parameters and multiply-accumulates per image, for the benchmarks' achieved-ops figure.

Counts Conv2D, DepthwiseConv2D, SeparableConv2D and Dense MACs (what dominates these models);
batch norm, pooling, activations and element-wise adds are left out and said so in the output.
"""

from __future__ import annotations

from typing import Dict

import numpy as np


def _prod(shape) -> int:
    return int(np.prod([d for d in shape if d is not None]))


def count_macs(model) -> int:
    from keras import layers as L

    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # nested model
            total += count_macs(layer)
            continue
        if isinstance(layer, (L.DepthwiseConv2D,)):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += _prod(out[1:3]) * kh * kw * cin * layer.depth_multiplier
        elif isinstance(layer, L.SeparableConv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += _prod(out[1:3]) * (kh * kw * cin * layer.depth_multiplier + cin * layer.depth_multiplier * layer.filters)
        elif isinstance(layer, L.Conv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += _prod(out[1:3]) * kh * kw * (cin // layer.groups) * layer.filters
        elif isinstance(layer, L.Dense):
            inp = layer.input.shape
            total += _prod(inp[1:-1] or [1]) * inp[-1] * layer.units
    return total


def complexity(model) -> Dict[str, object]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return {"params": int(model.count_params()), "trainable_params": trainable,
            "macs_per_image": count_macs(model),
            "macs_counted": "Conv2D, DepthwiseConv2D, SeparableConv2D, Dense"}
