"""Real out-of-scope images this machine already holds: sample files that installed packages ship.

The generated sets (fracdata.ood) are drawn by our own code, so a gate can learn the generator
rather than "not a limb radiograph". These are real images no generator drew: pydicom's test
DICOMs (CT and MR slices, a nuclear-medicine whole-body bone scan and ultrasound frames of real
patients, from NEMA's WG04 sample sets and GDCM's test data; provenance and licences in the
wheel's `pydicom/data/test_files/README.txt`) and, where scikit-image is installed, its sample
photographs (licences in `skimage/data/_fetchers.py`). Nothing is downloaded: the files are
copied from the installed packages into a folder laid out like fracdata.ood's, so
`python -m train.scope_evaluate RUN --bundle B --ood DIR` measures the gate on them. They are few
(a handful per kind), so they check the gate rather than set it; keep them out of every fit.

    python -m fracdata.real_ood --out runs/ood-real
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import util as import_util
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .ood import MARKER, _write_atomic

# pydicom's test files that hold a real medical image and decode without optional codecs:
# (file, kind, what it shows). Left out: the synthetic patterns, segmentations, dose grids, the
# copies of these in other transfer syntaxes, and files whose codec pydicom cannot run here.
PYDICOM_FILES: Tuple[Tuple[str, str, str], ...] = (
    ("693_J2KI.dcm", "real_ct", "CT of the head, 512 x 512"),
    ("J2K_pixelrep_mismatch.dcm", "real_ct", "CT of the head, skull base, 512 x 512"),
    ("CT_small.dcm", "real_ct", "CT of the thorax at a vertebra, reduced to 128 x 128 (NEMA WG04 CT1)"),
    ("MR_small.dcm", "real_mr", "MR of the head, reduced to 64 x 64 (NEMA WG04 MR1)"),
    ("examples_overlay.dcm", "real_mr", "MR of the abdomen, 484 x 300"),
    ("JPEG2000.dcm", "real_nm", "nuclear-medicine whole-body bone scan, 256 x 1024 (NEMA WG04 NM1)"),
    ("examples_palette.dcm", "real_us", "ultrasound, palette colour, 800 x 350"),
    ("examples_jpeg2k.dcm", "real_us", "ultrasound, colour, 640 x 480 (NEMA WG04 US1)"),
    ("examples_rgb_color.dcm", "real_us", "ultrasound, colour, 320 x 240 (NEMA WG04 US1, cropped)"),
    ("examples_ybr_color.dcm", "real_us", "ultrasound, colour, 30 frames of 320 x 240"),
)
SKIMAGE_GRAY = ("brick.png", "camera.png", "cell.png", "chessboard_GRAY.png", "clock_motion.png", "coins.png",
                "grass.png", "gravel.png", "microaneurysms.png", "moon.png", "page.png", "text.png")
SKIMAGE_COLOUR = ("astronaut.png", "chelsea.png", "chessboard_RGB.png", "coffee.png", "color.png", "horse.png",
                  "hubble_deep_field.jpg", "ihc.png", "logo.png", "motorcycle_left.png", "motorcycle_right.png",
                  "phantom.png", "retina.jpg", "rocket.jpg")


def _package_dir(name: str) -> Optional[Path]:
    """The installed package's folder, found without importing it (pydicom pulls in numpy plugins)."""
    spec = import_util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def sources() -> List[Tuple[Path, str, str, str]]:
    """(file, kind, what it shows, package) of every real sample image the installed packages hold."""
    found = []
    pyd = _package_dir("pydicom")
    if pyd is not None:
        for name, kind, what in PYDICOM_FILES:
            path = pyd / "data" / "test_files" / name
            if path.is_file():
                found.append((path, kind, what, f"pydicom {_version('pydicom')}"))
    ski = _package_dir("skimage")
    if ski is not None:
        for names, kind in ((SKIMAGE_GRAY, "real_gray"), (SKIMAGE_COLOUR, "real_colour")):
            for name in names:
                path = ski / "data" / name
                if path.is_file():
                    found.append((path, kind, f"scikit-image sample '{path.stem}'", f"scikit-image {_version('scikit-image')}"))
    return found


def write_real_set(out: Path) -> Path:
    """Copy every real sample image found into out/<kind>/ and list them in out/ood_set.json (the
    generated sets' layout, with each file's description and package). Returns `out`."""
    found = sources()
    if not found:
        raise SystemExit("error: no real sample images found: install pydicom (the 'dicom' or 'dev' extra) "
                         "or scikit-image")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    files: Dict[str, List[str]] = {}
    about: Dict[str, Dict[str, str]] = {}
    for path, kind, what, package in found:
        rel = f"{kind}/{path.name}"
        (out / kind).mkdir(exist_ok=True)
        shutil.copyfile(path, out / rel)
        files.setdefault(kind, []).append(rel)
        about[rel] = {"shows": what, "from": package}
    record = {"generator_version": 0, "seed": -1, "n_per_kind": max(len(v) for v in files.values()),
              "kinds": list(files), "source": "sample files of installed packages (fracdata/real_ood.py); "
              "provenance and licences in each package", "files": files, "about": about}
    _write_atomic(out / MARKER, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fracdata.real_ood",
        description="Copy the real medical and photographic sample images that installed packages ship "
                    "(pydicom's CT, MR, nuclear-medicine and ultrasound DICOMs; scikit-image's photos) into a "
                    "folder train.scope_evaluate --ood reads. Nothing is downloaded.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--json", action="store_true", help="print ood_set.json instead of the folder")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = write_real_set(args.out)
    print((out / MARKER).read_text().rstrip() if args.json else out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
