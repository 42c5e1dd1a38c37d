"""Model registry in the style of timm: a config per model, one-line registration, helpful errors.

As timm keeps a model's input size and interpolation in its pretrained config, each entry here
carries its PreprocessSpec: the input size is stated there once (the builder gets its input shape
from it), training starts from it (`python -m train` flags may override the resize mode,
normalisation and views) and records the result in run.json, and export copies that into the
bundle's manifest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from edge_runtime.fracture_map import MapPooling
from edge_runtime.preprocess import PreprocessSpec

# The paper's four models (`--model all` in train and export).
PAPER_MODELS = ("custom_cnn", "efficientnetb0", "mobilenetv2", "resnet50")
# Every registered model's defaults beyond its size: window normalisation was chosen by
# measurement (docs/results.md, "Intensity normalisation"); eight views make the answer the same
# for a film turned or mirrored on the lightbox (docs/architecture.md).
# Stretch resizes the whole radiograph, as the paper's Keras pipeline did.
DEFAULT_RESIZE = "stretch"
DEFAULT_NORMALIZE = "window"
DEFAULT_VIEWS = "dihedral"


def model_preprocess(size: int) -> PreprocessSpec:
    """The registry's PreprocessSpec for a model of this input size (bilinear resampling)."""
    return PreprocessSpec(size=size, resize=DEFAULT_RESIZE, normalize=DEFAULT_NORMALIZE, views=DEFAULT_VIEWS)


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelConfig:
    name: str
    preprocess: PreprocessSpec  # the model's input size and preprocessing
    gradcam_layer: str  # last convolutional feature map, for Grad-CAM
    default_epochs: int
    pretrained: bool  # takes --weights (ImageNet base)
    description: str
    builder: Callable  # builder(input_shape, [weights]) -> uncompiled keras.Model
    # Fracture-map models (train/models/fracture_map.py): the image's answer is this pooling of the
    # per-cell map (layer 'map'); None for the image classifiers.
    map_pooling: Optional[MapPooling] = None
    map_stride: int = 0  # input pixels per map cell
    default_batch: int = 32  # images per training batch unless --batch-size says otherwise
    # What the out-of-scope gate measures (edge_runtime/scope.py): the global average of each of these
    # layers' features (ReLU-like: the gate square-roots them and reads a negative average as 0),
    # side by side; () ships no gate.
    scope_layers: Tuple[str, ...] = ()

    @property
    def is_map(self) -> bool:
        return self.map_pooling is not None

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.preprocess.size, self.preprocess.size, self.preprocess.channels)


_REGISTRY: Dict[str, ModelConfig] = {}


def register_model(name: str, *, preprocess: PreprocessSpec, gradcam_layer: str, default_epochs: int,
                   pretrained: bool, description: str, map_pooling: Optional[MapPooling] = None,
                   map_stride: int = 0, default_batch: int = 32, scope_layers: Tuple[str, ...] = ()):
    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelConfig(name, preprocess, gradcam_layer, default_epochs, pretrained, description, fn,
                                      map_pooling, map_stride, default_batch, tuple(scope_layers))
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


def build_model(name: str, weights: str = "none", size: Optional[int] = None, pooling: Optional[MapPooling] = None,
                any_size: bool = False):
    """Build an uncompiled keras.Model for the entry's input shape (or `size` x `size`, when a run
    chose another). Outputs: layer 'logit' (pre-sigmoid) feeds layer 'prob'; a fracture-map model's
    'logit' is the pooling of its layer 'map' (`pooling` overrides the entry's). `any_size` (fracture
    maps: training on windows): the input's height and width are left open."""
    cfg = get_config(name)
    if any_size:
        if not cfg.is_map:
            raise ValueError(f"{name}: only a fracture-map model takes inputs of any size")
        return cfg.builder((None, None, cfg.preprocess.channels), pooling=pooling or cfg.map_pooling)
    if not cfg.pretrained and weights not in ("none", None, "imagenet"):
        raise ValueError(f"{name} is trained from scratch; --weights {weights!r} applies to the "
                         "transfer-learning baselines only")
    shape = cfg.input_shape if size is None else (size, size, cfg.preprocess.channels)
    if cfg.pretrained:
        return cfg.builder(shape, weights=weights)
    if cfg.is_map:
        return cfg.builder(shape, pooling=pooling or cfg.map_pooling)
    return cfg.builder(shape)
