"""Grad-CAM from the model's own outputs, in numpy: no gradient engine on the device.

Grad-CAM weights each feature channel k by the spatial mean of d(logit)/dA_k. Between the
feature layer A and the logit our models only have per-channel affine BatchNorm (scale g_k),
max pooling, Flatten / global pooling, at most one Dense+ReLU layer and the logit Dense. Max
pooling routes each pooled gradient to exactly one input, so the *sum* over positions survives it
whichever input wins, and the channel weights reduce to

    alpha = mix @ (w_out * [hidden > 0])    (with a hidden ReLU layer)
    alpha = const                           (pooling straight into the logit)

where export folded g_k, the pooling, the Flatten layout and 1/(h*w) into `mix` (C x H) or the
constant. The only per-image quantity is the hidden layer's ReLU mask, which the bundle's model
emits as a second output beside the feature maps. Cost: one (h*w x C) @ (C) product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .bundle import Bundle, BundleError


@dataclass
class GradCamHead:
    layer: str
    alpha: Optional[np.ndarray] = None  # (C,) when the weights do not depend on the image
    mix: Optional[np.ndarray] = None  # (C, H)
    w_out: Optional[np.ndarray] = None  # (H,)

    @property
    def needs_hidden(self) -> bool:
        return self.alpha is None

    def channel_weights(self, hidden: Optional[np.ndarray] = None) -> np.ndarray:
        if self.alpha is not None:
            return self.alpha
        if hidden is None:
            raise ValueError("this model's Grad-CAM needs the hidden layer output")
        return self.mix @ (self.w_out * (np.asarray(hidden, np.float32).reshape(-1) > 0))

    def cam(self, features: np.ndarray, hidden: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(raw map (h, w), map scaled to [0, 1] by its peak; all zero where nothing is positive)."""
        a = np.asarray(features, dtype=np.float32)
        a = a.reshape(a.shape[-3:])
        raw = np.maximum(a @ self.channel_weights(hidden), 0.0)
        peak = float(raw.max())
        return raw, (raw / peak if peak > 0 else np.zeros_like(raw))


def load_head(bundle: Bundle) -> Optional[GradCamHead]:
    """The bundle's Grad-CAM head, or None where export could not derive one for this model."""
    spec = bundle.gradcam
    if not spec:
        return None
    path = bundle.root / spec["file"]
    arrays = bundle.read_arrays(spec["file"], spec["arrays"], "Grad-CAM head")
    if "alpha" not in arrays and not {"mix", "w_out"} <= set(arrays):
        raise BundleError(path, f"Grad-CAM head needs 'alpha' or 'mix' and 'w_out', has {sorted(arrays)}")
    return GradCamHead(spec["layer"], arrays.get("alpha"), arrays.get("mix"), arrays.get("w_out"))
