"""Radiographs from another X-ray system: `python -m train.acquisition_shift RUN_DIR --bundle B`.

Another hospital's system processes its radiographs before anyone sees them (global histogram
equalisation, strong unsharp masking, down-sampling, heavy JPEG) and burns things into them
(collimation bands, text labels); a crop is a film framed tighter. None of these is in the
training split. Each of the run's validation and test radiographs is read as the device reads a
file, processed once per kind, and answered by the bundle through the edge runtime (its
preprocessing, interpreter, gate and threshold); per kind and source: how many are refused as
outside what the model reads, and of those answered both ways, how many decisions flip and how
many detected fractures are lost.

The kinds here are the measurement's, kept apart from the training augmentation's
(train/augment.py, Acquisition): full global equalisation (training: CLAHE and tone curves),
unsharp masking at radius 1.6% of the side and 250% (training: up to 3 px of 256 at 200%),
bands of 12-18% (training: 2-11%), text labels (training: blocks). Each is applied to the
radiograph as decoded (as the other system would, before any resizing: a letterboxing model's
padding takes no part), with sizes relative to the image; the down-sampling goes to 35% of the
model's input size.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from edge_runtime.errors import ImageReadError
from edge_runtime.imageio import DecodedImage
from edge_runtime.inputs import read_image
from edge_runtime.labels import POSITIVE
from PIL import ImageFont
from fracdata.data import record_source
from fracdata.progress import progress as progress_of


def _u8(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


def _f(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), np.float32) / 255.0


def _jpeg(x: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    buf = io.BytesIO()
    _u8(x).save(buf, "JPEG", quality=15)
    return _f(Image.open(io.BytesIO(buf.getvalue())))


def _down_up(x: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """Down to 35% of the model's input size (long side), then back up."""
    h, w = x.shape
    k = 0.35 * side / max(h, w)
    small = _u8(x).resize((max(8, int(w * k)), max(8, int(h * k))), Image.Resampling.BILINEAR)
    return _f(small.resize((w, h), Image.Resampling.BILINEAR))


def _crop(x: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    h, w = x.shape
    m, n = int(h * 0.125), int(w * 0.125)
    return _f(_u8(x).crop((n, m, w - n, h - m)).resize((w, h), Image.Resampling.BILINEAR))


def _bands(x: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    y = x.copy()
    w = int(round(x.shape[0] * rng.uniform(0.12, 0.18)))
    y[:w], y[-w:] = 1.0, 1.0
    return y


def _labels(x: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    img = _u8(x)
    d = ImageDraw.Draw(img)
    h, w = x.shape
    font = ImageFont.load_default(size=max(8, int(0.03 * min(h, w))))
    for _ in range(4):
        left, top, right, bottom = d.textbbox((0, 0), "L  AP 12/03", font=font)
        d.text((int(rng.integers(0, max(1, w - right))), int(rng.integers(0, max(1, h - bottom)))), "L  AP 12/03",
               fill=255, font=font)
    return _f(img)


# name -> (what it stands for, the processing: (decoded radiograph, rng, the model's input size) -> processed)
KINDS: Dict[str, tuple] = {
    "equalised": ("global histogram equalisation", lambda x, rng, side: _f(ImageOps.equalize(_u8(x)))),
    "unsharp": ("unsharp masking, radius 1.6% of the short side, 250%",
                lambda x, rng, side: _f(_u8(x).filter(ImageFilter.UnsharpMask(radius=0.016 * min(x.shape), percent=250,
                                                                         threshold=0)))),
    "downsampled": ("down-sampled to 35% of the model's input size and back", _down_up),
    "jpeg15": ("JPEG at quality 15", _jpeg),
    "crop75": ("the central 75%, enlarged", _crop),
    "bands": ("clear bands at top and bottom, 12-18% each (collimation)", _bands),
    "labels": ("burned-in text labels", _labels),
}


def process(pixels: np.ndarray, kind: str, index: int, seed: int, side: int) -> np.ndarray:
    """One decoded radiograph processed as `kind`, its draws seeded by (seed, its index among the
    radiographs measured): the same pixels here and in train.scope_compare."""
    return KINDS[kind][1](pixels, np.random.default_rng([seed, index]), side)


def _answer(pred, pixels: np.ndarray, name: str) -> Dict:
    rec = pred.predict_pixels(DecodedImage(pixels, "L", (pixels.shape[1], pixels.shape[0])), name)
    if rec.error:
        return {"error": rec.error}
    if rec.out_of_scope:
        return {"refused": True}
    return {"p": rec.probability, "positive": rec.decision == POSITIVE}


def evaluate(run_dir: Path, bundle: Path, artifact: Optional[str] = None, kinds: Optional[List[str]] = None,
             seed: int = 0, progress: bool = True) -> Dict:
    from edge_runtime.predictor import Predictor
    from fracdata.runs import dataset_for_run, read_run
    from fracdata.split import load_split, records_by_split

    pred = Predictor(bundle, artifact=artifact, gradcam=False)
    found = read_run(run_dir)
    ds = dataset_for_run(found.record, None, quiet=True)
    parts = records_by_split(ds, load_split(found.split_path, ds))
    kinds = kinds or list(KINDS)
    out: Dict[str, Dict[str, Dict]] = {}
    for i, r in enumerate(progress_of(parts["val"] + parts["test"], "radiographs", enabled=progress)):
        try:
            x = read_image(r.path, pred.spec).pixels
        except ImageReadError:
            continue
        base = _answer(pred, x, r.image_id)
        source = record_source(r)
        for k in kinds:
            got = _answer(pred, process(x, k, i, seed, pred.spec.size), r.image_id)
            s = out.setdefault(k, {}).setdefault(source, {"n": 0, "refused": 0, "base_refused": 0, "errors": 0,
                                                         "both_answered": 0, "flips": 0, "fractures_lost": 0,
                                                         "detected": 0, "abs_dp": []})
            s["n"] += 1
            s["refused"] += bool(got.get("refused"))
            s["errors"] += "error" in got  # nothing left to read after the processing (the content check)
            s["base_refused"] += bool(base.get("refused"))
            if "p" in base and "p" in got:
                s["both_answered"] += 1
                s["abs_dp"].append(abs(got["p"] - base["p"]))
                s["flips"] += got["positive"] != base["positive"]
                if r.label == 1 and base["positive"]:
                    s["detected"] += 1
                    s["fractures_lost"] += not got["positive"]
    for per in out.values():
        for s in per.values():
            d = s.pop("abs_dp")
            s["mean_abs_dp"] = float(np.mean(d)) if d else None
            s["refused_share"] = s["refused"] / s["n"] if s["n"] else None
    return {"run": str(run_dir), "bundle": str(bundle), "artifact": pred.artifact, "backend": pred.backend,
            "threshold": pred.threshold, "gate": pred.gate is not None, "seed": seed,
            "kinds": {k: KINDS[k][0] for k in kinds}, "results": out}


def render(result: Dict) -> str:
    lines = [f"Radiographs processed as another system would, answered by {result['bundle']} "
             f"({result['artifact']}, threshold {result['threshold']:.3f}"
             + ("" if result["gate"] else "; no out-of-scope gate") + "):", "",
             "| processing | source | radiographs | refused (out of scope) | unprocessed refused | not readable after "
             "it | decisions flipped, of answered both ways | detected fractures lost | mean \\|Δp\\| |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, per in result["results"].items():
        for source, s in per.items():
            dp = "–" if s["mean_abs_dp"] is None else f"{s['mean_abs_dp']:.3f}"
            lines.append(f"| {result['kinds'][k]} | {source} | {s['n']} | {s['refused']} ({s['refused_share']:.2f}) | "
                         f"{s['base_refused']} | {s['errors']} | {s['flips']} of {s['both_answered']} | "
                         f"{s['fractures_lost']} of {s['detected']} | {dp} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.acquisition_shift", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the training run whose validation and test "
                                                                   "radiographs to process")
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle that answers them")
    ap.add_argument("--artifact", help="which of its artifacts (default: the device's)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma list (default: all: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bands' widths and the labels' places")
    ap.add_argument("--out", type=Path, help="write shift.json and shift.md here")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on stderr)")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"error: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    result = evaluate(args.run_dir, args.bundle, args.artifact, kinds, args.seed, not args.no_progress)
    text = render(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shift.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "shift.md").write_text(text)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
