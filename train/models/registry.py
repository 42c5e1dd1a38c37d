"""Model registry in the style of timm: a config per model, one-line registration, helpful errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelConfig:
    name: str
    input_size: int
    gradcam_layer: str  # last convolutional feature map, for Grad-CAM
    default_epochs: int
    pretrained: bool  # takes --weights (ImageNet base)
    description: str
    builder: Callable


_REGISTRY: Dict[str, ModelConfig] = {}


def register_model(name: str, *, input_size: int, gradcam_layer: str, default_epochs: int,
                   pretrained: bool, description: str):
    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelConfig(name, input_size, gradcam_layer, default_epochs, pretrained, description, fn)
        return fn
    return wrap


def list_models() -> List[str]:
    return list(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def build_model(name: str, weights: str = "none"):
    """Build an uncompiled keras.Model. Outputs: layer 'logit' (pre-sigmoid) feeds layer 'prob'."""
    cfg = get_config(name)
    if not cfg.pretrained and weights not in ("none", None, "imagenet"):
        raise ValueError(f"{name} is trained from scratch; --weights {weights!r} applies to the "
                         "transfer-learning baselines only")
    return cfg.builder(weights=weights) if cfg.pretrained else cfg.builder()
