"""Make the samples `python -m device demo` answers (device/samples/): phantom radiographs drawn by
fracdata.phantom and one simulated photo of a film on a lightbox (device.simulate). Phantoms, not
patients: made here so that nothing from a real dataset ships.

    python tests/make_samples.py [--out device/samples]

Deterministic (fixed seeds); tests/test_demo.py checks the shipped files are what this makes.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device import simulate  # noqa: E402
from fracdata.phantom import render_phantom  # noqa: E402

SIZE = (448, 352)  # (h, w): about the middle of the phantom generator's range
# name: (region, fractured, seed)
PHANTOMS = {"phantom_fractured_leg.png": ("leg", True, 11),
            "phantom_intact_leg.png": ("leg", False, 12),
            "phantom_intact_hand.png": ("hand", False, 13)}
PHOTO = ("phantom_fractured_leg_film-photo.jpg", "phantom_fractured_leg.png", "room", 14, (1600, 1200))


def phantom(region: str, fractured: bool, seed: int) -> np.ndarray:
    return render_phantom(np.random.default_rng(seed), region, fractured, size=SIZE)


def png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG", optimize=True)
    return out.getvalue()


def make() -> dict:
    """name -> bytes for every sample, and the index (samples.json) that says what each one is."""
    files, index = {}, {}
    arrays = {}
    for name, (region, fractured, seed) in PHANTOMS.items():
        arrays[name] = phantom(region, fractured, seed)
        files[name] = png(arrays[name])
        index[name] = {"kind": "radiograph file", "phantom": True, "region": region, "fractured": fractured,
                       "made_by": f"fracdata.phantom.render_phantom(seed={seed})"}
    name, of, condition, seed, size = PHOTO
    jpeg, _ = simulate.simulate(arrays[of].astype(np.float32) / 255.0, condition, np.random.default_rng(seed),
                                photo_size=size)
    files[name] = jpeg
    index[name] = {"kind": "photo of a film on a lightbox", "phantom": True, "of": of,
                   "fractured": PHANTOMS[of][1], "made_by": f"device.simulate.simulate('{condition}', seed={seed})"}
    files["samples.json"] = (json.dumps(index, indent=1) + "\n").encode()
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "device" / "samples", help="folder (default: %(default)s)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in make().items():
        (args.out / name).write_bytes(content)
        print(f"{args.out / name}: {len(content) / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
