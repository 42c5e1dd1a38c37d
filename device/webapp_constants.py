"""The film path's constants for the web app's JavaScript port (webapp/src/film/), read from the
Python modules themselves so that a threshold or a sentence changed here changes there too.

The JS port holds no copy of any of them: it refuses to run without this dict (see
webapp/src/film/read_film.js, REQUIRED_CONSTANTS). `python -m device.webapp_constants` prints it
as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict

from edge_runtime import preprocess

from . import film, film_finder, photo, quality

# (module, names): every module-level constant the port reads
_NAMES = (
    (film_finder, ("WORK_SIDE", "MIN_FILM_SHARE", "MAX_HOLE_SHARE", "MIN_QUADNESS", "MIN_ENCLOSURE",
                   "MIN_RING_LEVEL", "MAX_FILM_LEVEL")),
    (film, ("OUT_LONG_SIDE", "INSET", "PROFILE_OFFSETS", "GRID")),
    (quality, ("MIN_FILM_SIDE_PX", "MIN_PX_PER_INPUT_PX", "MIN_DETAIL", "MAX_SATURATED", "MIN_LIGHTBOX_LEVEL",
               "SCREEN_EDGE", "SCREEN_SURROUND", "SCREEN_LIT_PANEL", "SCREEN_WINDOW", "SCREEN_BRIGHT", "SCREEN_FLAT",
               "SATURATED_LEVEL",
               "OVER_LEVEL", "MAX_CLIPPED_SHARE", "MAX_GLARE_SHARE", "MAX_EDGE_WIDTH", "MIN_SHARPNESS",
               "GRAY_CHROMA", "TEXT")),
    (photo, ("DECODE_SIDE", "MAX_PHOTO_PIXELS", "MAX_DECODED_PIXELS", "GRAYSCALE_MODES")),
    (preprocess, ("MIN_FILL",)),
)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def film_constants() -> Dict[str, Any]:
    """Name -> value (JSON-ready: tuples become lists) for every constant the JS film path uses."""
    out: Dict[str, Any] = {}
    for module, names in _NAMES:
        for name in names:
            if name in out:
                raise ValueError(f"{name} is defined in two modules")
            out[name] = _plain(getattr(module, name))
    return out


if __name__ == "__main__":
    json.dump(film_constants(), sys.stdout, indent=1)
    sys.stdout.write("\n")
