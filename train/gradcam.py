"""Reference Grad-CAM on the float Keras model (GradientTape), the oracle for the edge version.

The score is the pre-sigmoid logit (layer 'logit'); the sigmoid would only rescale every channel
weight by the same positive factor, so the normalised map is the same, and the edge runtime can
reproduce the logit's gradient exactly.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, merge_maps, views


def gradcam_views(model, images: np.ndarray, layer_name: str,
                  spec: Optional[PreprocessSpec] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(raw cams (n, h, w), cams normalised to [0, 1] per image), each the mean over the spec's
    views turned back, as the device computes it."""
    if spec is None or spec.n_views == 1:
        raw, norm, _ = gradcam(model, images, layer_name)
        return raw, norm
    raws = []
    for x in images:
        r, _, _ = gradcam(model, views(x, spec), layer_name)
        raws.append(merge_maps(r, spec))
    raw = np.stack(raws)
    peak = raw.reshape(len(raw), -1).max(axis=1)
    norm = np.where(peak[:, None, None] > 0, raw / np.maximum(peak, 1e-12)[:, None, None], 0.0)
    return raw, norm.astype(np.float32)


def gradcam(model, images: np.ndarray, layer_name: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (raw cams (n, h, w), cams normalised to [0, 1] per image, probabilities (n,))."""
    import keras
    import tensorflow as tf

    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output,
                                            model.get_layer("logit").output, model.output])
    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    with tf.GradientTape() as tape:
        feats, logit, prob = grad_model(x, training=False)
        score = tf.reduce_sum(tf.cast(logit, tf.float32))
    grads = tape.gradient(score, feats)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    raw = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feats, tf.float32), axis=-1)).numpy()
    peak = raw.reshape(len(raw), -1).max(axis=1)
    norm = np.where(peak[:, None, None] > 0, raw / np.maximum(peak, 1e-12)[:, None, None], 0.0)
    return raw, norm.astype(np.float32), np.asarray(prob).reshape(-1)
