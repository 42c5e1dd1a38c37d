"""One registry for every model: `list_models()`, `get_config(name)`, `build_model(name, ...)`."""

from .registry import (PAPER_MODELS, ModelConfig, UnknownModelError, build_model, get_config,  # noqa: F401
                       list_models)
from . import custom_cnn, transfer  # noqa: F401,E402  (registers the models)
