"""Which int8 ONNX format runs fastest on this CPU: `python -m benchmarks.onnx_formats BUNDLE`.

The bundle's float ONNX file quantized again four ways with onnxruntime.quantization (static,
per-channel int8 weights, the same calibration images): QDQ with int8 activations (S8S8, what
export shipped until 2026-12-06), QDQ with uint8 activations (U8S8), the same with 7-bit weights
(reduce_range: what export ships now) and QOperator with uint8 activations; then every
file, the float one and the bundle's own int8 file run one thread each, interleaved round by round
(these machines are noisy), and reported as ratios to the float file. Only speed is measured:
the calibration images are random, so the quantized copies are not for shipping (export's gate
decides that). Measured: with the out-of-scope gate's pooled output, the int8-activation graph
ran slower than float on an AMD EPYC, the uint8 ones 2.3x faster (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

# name: (format, activation type, reduce_range)
VARIANTS = {"qdq_s8s8": ("QDQ", "QInt8", False), "qdq_u8s8": ("QDQ", "QUInt8", False),
            "qdq_u8s8_reduced": ("QDQ", "QUInt8", True), "qoperator_u8s8": ("QOperator", "QUInt8", False)}


def quantize_variants(float_path: Path, out: Path, shape, n_calibration: int, seed: int) -> Dict[str, Path]:
    """Each of VARIANTS, by export's own quantizer (export.convert.to_onnx_int8)."""
    from export.convert import to_onnx_int8

    images = np.random.default_rng(seed).random((n_calibration, *shape)).astype(np.float32)
    return {name: to_onnx_int8(float_path, out / f"{name}.onnx", images, fmt, act, reduced)
            for name, (fmt, act, reduced) in VARIANTS.items()}


def time_interleaved(paths: Dict[str, Path], shape, runs: int, warmup: int, seed: int) -> Dict[str, float]:
    """Median ms per call, one thread, every model once per round."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(seed + 1).random((1, *shape)).astype(np.float32)
    times: Dict[str, List[float]] = {k: [] for k in sessions}
    for r in range(warmup + runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v) * 1000) for k, v in times.items()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.onnx_formats", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="a bundle folder with model_float.onnx (and model_int8.onnx)")
    ap.add_argument("--runs", type=int, default=40, help="timed rounds (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    ap.add_argument("--calibration-images", type=int, default=16, help="random calibration images (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the calibration images and the input (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    float_path = args.bundle / "model_float.onnx"
    if not float_path.is_file():
        print(f"error: {float_path}: no float ONNX file (export it with --artifacts onnx_float)", file=sys.stderr)
        return 2
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    shape = tuple(manifest["model"]["input"]["shape"][1:])
    with tempfile.TemporaryDirectory(prefix="onnx-formats-") as tmp:
        paths = {"float": float_path, **quantize_variants(float_path, Path(tmp), shape, args.calibration_images,
                                                          args.seed)}
        if (args.bundle / "model_int8.onnx").is_file():
            paths["bundle_int8"] = args.bundle / "model_int8.onnx"
        ms = time_interleaved(paths, shape, args.runs, args.warmup, args.seed)
    from .cli import device_info

    result = {"bundle": str(args.bundle), "cpu": device_info()["cpu"], "threads": 1,
              "runs": args.runs, "ms_p50": ms, "speed_vs_float": {k: ms["float"] / v for k, v in ms.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['cpu']}, one thread, median of {args.runs} interleaved rounds")
        print(f"{'model':16s} {'p50 ms':>8s} {'vs float':>9s}")
        for k, v in ms.items():
            print(f"{k:16s} {v:8.2f} {ms['float'] / v:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
