"""A full-size synthetic radiograph (about 2,000 x 2,500 px) as JPEG and PNG, for end-to-end timing.

Made here with the phantom generator (fracdata/phantom.py) and film grain, so the benchmark needs no
dataset and no other stage: its content has to cost what a real radiograph costs to decode (smooth
anatomy, sharp cortical edges, grain), and it has to be a radiograph the bundle answers. A picture
its out-of-scope gate refuses is answered without an overlay, and would time nothing of --heatmap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image

GRAIN = 6.0  # gray levels (sd): a 2000 x 2500 JPEG at quality 92 then weighs ~1.5 MB, as a real one


def synthetic_radiograph(size: Tuple[int, int] = (2000, 2500), seed: int = 0) -> np.ndarray:
    """(h, w) uint8: a fractured phantom leg at full size (w, h = `size`), with film grain."""
    from fracdata.phantom import render_phantom

    w, h = size
    rng = np.random.default_rng(seed)
    img = render_phantom(rng, "leg", True, size=(h, w)).astype(np.float32)
    return np.clip(img + rng.normal(0, GRAIN, (h, w)), 0, 255).astype(np.uint8)


def write_inputs(out: Path, size: Tuple[int, int] = (2000, 2500)) -> Dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    arr = synthetic_radiograph(size)
    paths = {"jpeg": out / f"radiograph_{size[0]}x{size[1]}.jpg", "png": out / f"radiograph_{size[0]}x{size[1]}.png"}
    Image.fromarray(arr).save(paths["jpeg"], quality=92)
    Image.fromarray(arr).save(paths["png"], optimize=False)
    return paths


PHONE_SIZES = {"12MP": (4000, 3000), "48MP": (8000, 6000)}


def write_phone_photos(out: Path, sizes: Dict[str, Tuple[int, int]] = PHONE_SIZES, seed: int = 0,
                       quick: bool = False) -> Dict[str, Path]:
    """Phone-style JPEGs of a film on a lightbox in a room (device/simulate.py), made once per size
    (`quick`: the 12 MP one only)."""
    if quick:
        sizes = {k: v for k, v in sizes.items() if k == "12MP"}
    from dataclasses import replace

    from device.simulate import draw_scene, render_photo

    out.mkdir(parents=True, exist_ok=True)
    radiograph = synthetic_radiograph((1000, 1250), seed).astype(np.float32) / 255.0
    paths = {}
    for name, size in sizes.items():
        path = out / f"phone_{name}_{size[0]}x{size[1]}.jpg"
        if not path.is_file():
            rng = np.random.default_rng([seed, size[0]])
            scene = replace(draw_scene("room", 1.25, rng, photo_size=size), jpeg_quality=92)  # a phone camera's quality
            path.write_bytes(render_photo(radiograph, scene))
        paths[name] = path
    return paths
