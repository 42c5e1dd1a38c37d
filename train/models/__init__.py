"""One registry for every model: `list_models()`, `get_config(name)`, `build_model(name, ...)`."""

from .registry import (PAPER_MODELS, ModelConfig, UnknownModelError, build_model, get_config,  # noqa: F401
                       list_models)
from . import custom_cnn, fracture_map, transfer  # noqa: F401,E402  (registers the models)


def load_model(path):
    """A saved model.keras, with this project's own layers (MapPool) known to Keras."""
    import keras

    from . import layers  # noqa: F401  (registers MapPool)

    return keras.models.load_model(path, compile=False)
