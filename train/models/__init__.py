"""One registry for every model: `list_models()`, `get_config(name)`, `build_model(name, ...)`."""

from .registry import ModelConfig, UnknownModelError, build_model, get_config, list_models  # noqa: F401
from . import custom_cnn, transfer  # noqa: F401,E402  (registers the models)
