"""python -m benchmarks.formats: the same pixels as JPEG, 16-bit PNG and DICOM, the same answer?

Each radiograph is saved as an 8-bit JPEG; that JPEG's decoded pixels are then saved as a 16-bit
PNG, a 12-bit PNG, and DICOMs with a window, without one, inverted (MONOCHROME1) and with a
rescale slope and intercept. Every copy is predicted through the runtime; the table gives the
largest |Δp| against the JPEG per file. Files come from any folder (no labels are needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from edge_runtime.imageio import read_grayscale
from edge_runtime.predictor import Predictor

VARIANTS = ("jpeg", "png16", "png12", "dicom_window", "dicom_no_window", "dicom_monochrome1", "dicom_rescaled")


def write_variants(pixels: np.ndarray, out: Path) -> Dict[str, Path]:
    """The same pixels in every format the runtime reads (pydicom needed for the DICOMs)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    paths = {"jpeg": out / "a.jpg", "png16": out / "b16.png", "png12": out / "b12.png"}
    Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)).save(paths["jpeg"], quality=95)
    px = np.asarray(Image.open(paths["jpeg"]).convert("L")).astype(np.uint16)
    Image.fromarray(px * 257).save(paths["png16"])
    Image.fromarray(px * 16).save(paths["png12"])
    v = px * 16

    def dicom(name, arr, photometric="MONOCHROME2", window=None, slope=1.0, intercept=0.0):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns = "CR", *arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = arr.astype("<u2").tobytes()
        paths[name] = out / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)

    dicom("dicom_window", v, window=(float(v.min() + v.max()) / 2 + 0.5, float(v.max() - v.min()) + 1))
    dicom("dicom_no_window", v)
    dicom("dicom_monochrome1", 4095 - v, photometric="MONOCHROME1")
    dicom("dicom_rescaled", v, slope=0.5, intercept=-1000.0)
    return paths


def measure(predictor: Predictor, files: List[Path]) -> Dict[str, object]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            paths = write_variants(read_grayscale(f).pixels, Path(tmp))
            ps = {k: predictor.predict_file(p).probability for k, p in paths.items()}
            if any(v is None for v in ps.values()):
                rows.append({"file": str(f), "error": "a copy could not be answered", "p": ps})
                continue
            rows.append({"file": str(f), "p": ps, "max_abs_dp": max(abs(v - ps["jpeg"]) for v in ps.values())})
    d = np.array([r["max_abs_dp"] for r in rows if "max_abs_dp" in r])
    return {"files": len(files), "answered": int(len(d)), "variants": list(VARIANTS),
            "max_abs_dp": {"mean": float(d.mean()) if len(d) else None, "p95": float(np.percentile(d, 95)) if len(d) else None,
                           "max": float(d.max()) if len(d) else None, "share_within_0.01": float((d <= 0.01).mean()) if len(d) else None},
            "rows": rows}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.formats", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, metavar="FILE_OR_DIR", help="radiographs, or folders of them")
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: the runtime's default bundle)")
    ap.add_argument("--every", type=int, default=1, help="take every n-th file (default: 1)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    files: List[Path] = []
    for p in args.files:
        files.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png")) if p.is_dir() else [p])
    files = files[::max(1, args.every)]
    if not files:
        print("error: no image files found", file=sys.stderr)
        return 2
    res = measure(Predictor(args.bundle, gradcam=False), files)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        s = res["max_abs_dp"]
        print(f"{res['answered']} of {res['files']} radiographs, each as {', '.join(VARIANTS)}: largest |Δp| against the JPEG "
              f"per file: mean {s['mean']:.4f}, p95 {s['p95']:.4f}, max {s['max']:.4f}; within 0.01: {s['share_within_0.01']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
