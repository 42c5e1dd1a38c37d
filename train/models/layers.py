"""Keras layers of our own (imports Keras: loaded only by builders and `load_model`).

`MapPool` turns a fracture map's cell logits into the image's logit; it must compute exactly what
edge_runtime.fracture_map.MapPooling computes on the device (tests/test_fracture_map.py checks it).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fracture_edge")
class MapPool(keras.layers.Layer):
    """(batch, h, w, 1) cell logits -> (batch, 1) image logit: max, log-sum-exp (r) or top-k mean."""

    def __init__(self, kind: str = "lse", r: float = 4.0, k: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.r, self.k = kind, float(r), int(k)

    def call(self, m):
        flat = ops.reshape(m, (ops.shape(m)[0], -1))
        if self.kind == "max":
            return ops.max(flat, axis=1, keepdims=True)
        if self.kind == "topk":
            k = self.k if flat.shape[1] is None else min(self.k, int(flat.shape[1]))  # None: a model of any size
            return ops.mean(ops.top_k(flat, k)[0], axis=1, keepdims=True)
        top = ops.stop_gradient(ops.max(flat, axis=1, keepdims=True))  # a shift; the value is unchanged
        return top + ops.log(ops.mean(ops.exp(self.r * (flat - top)), axis=1, keepdims=True)) / self.r

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "r": self.r, "k": self.k}


def masked_pool(m, mask, r: float):
    """Log-sum-exp pooling (mean-normalised, as MapPool's) of the cells where mask > 0, per image
    of a (batch, h, w) map; (pooled (batch,), whether the image had any such cell (batch,))."""
    flat = ops.reshape(m, (ops.shape(m)[0], -1))
    mk = ops.reshape(mask, (ops.shape(m)[0], -1))
    count = ops.sum(mk, axis=1)
    z = ops.where(mk > 0, r * flat, -1e4)
    pooled = (ops.logsumexp(z, axis=1) - ops.log(ops.maximum(count, 1.0))) / r
    return pooled, ops.cast(count > 0, "float32")
