"""The float Keras model as the reference that evaluation and export measure against.

What export takes from training, besides the model registry (train.models): the float model's
answers and its GradientTape Grad-CAM, both over the PreprocessSpec's views as the device computes
them, the validation threshold rule, and the classification and localisation scores.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, views

from .localisation import agreement, boxed_positives, localise  # noqa: F401 - export's localisation scores
from .metrics import auc, choose_threshold, sens_spec  # noqa: F401 - export's classification scores

GRADCAM_BATCH = 32


def is_map_model(model) -> bool:
    """A fracture-map model: its answer is the pooling of its layer 'map' (train/models/fracture_map.py)."""
    return any(layer.name == "map" for layer in model.layers) and any(layer.name == "logit" for layer in model.layers) \
        and type(model.get_layer("logit")).__name__ == "MapPool"


def predict_maps(model, images: np.ndarray, spec: PreprocessSpec, batch_size: int = 32):
    """(P(fractured) (n,), merged cell-logit maps (n, h, w)) of a fracture-map model, as the device
    computes them: each view's map turned back, the logits averaged, then pooled with the model's
    own pooling (edge_runtime.fracture_map, the same arithmetic as the layer)."""
    import keras

    from edge_runtime.fracture_map import MapPooling, sigmoid
    from edge_runtime.preprocess import merge_maps

    layer = model.get_layer("logit")
    pooling = MapPooling(layer.kind, layer.r, layer.k)
    head = keras.Model(model.inputs, model.get_layer("map").output)
    n_views = spec.n_views
    maps = []
    for start in range(0, len(images), 64):
        chunk = np.concatenate([views(x, spec) for x in images[start:start + 64]]) if n_views > 1 \
            else images[start:start + 64]
        m = np.asarray(head.predict(chunk, batch_size=batch_size, verbose=0), np.float32)[..., 0]
        m = m.reshape(-1, n_views, *m.shape[1:])
        maps.extend(merge_maps(v, spec) for v in m)
    maps = np.stack(maps) if maps else np.zeros((0, 1, 1), np.float32)
    return np.array([sigmoid(pooling.pool(m)) for m in maps], np.float64), maps


def predict(model, images: np.ndarray, spec: Optional[PreprocessSpec] = None, batch_size: int = 32) -> np.ndarray:
    """P(fractured) per image: the mean over the spec's views, as the device computes it (a
    fracture-map model: the pooling of its merged map, predict_maps)."""
    if len(images) == 0:
        return np.zeros((0,), np.float32)
    if spec is not None and is_map_model(model):
        return predict_maps(model, images, spec, batch_size)[0]
    n_views = spec.n_views if spec is not None else 1
    if n_views == 1:
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64).reshape(-1)
    return mean_over_views(lambda x: model.predict(x, batch_size=batch_size, verbose=0).reshape(-1), images, spec)


def mean_over_views(fn, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """fn(inputs (m, size, size, 1)) -> (m, ...) per view; per image, the mean over the spec's views,
    as the device averages them. Eight views of a chunk at a time: bounded memory."""
    n_views, out = spec.n_views, []
    for start in range(0, len(images), 64):
        chunk = images[start:start + 64]
        if n_views > 1:
            chunk = np.concatenate([views(x, spec) for x in chunk])
        a = np.asarray(fn(chunk), np.float64)
        out.append(a.reshape(-1, n_views, *a.shape[1:]).mean(axis=1))
    return np.concatenate(out)


def gradcam_reference(model, layer: str, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Raw Grad-CAM maps (n, h, w) by GradientTape, each the mean over the spec's views turned back."""
    from .gradcam import gradcam_views

    return np.concatenate([gradcam_views(model, images[i:i + GRADCAM_BATCH], layer, spec)[0]
                           for i in range(0, len(images), GRADCAM_BATCH)])
