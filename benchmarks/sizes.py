"""What an input size costs: one registry model built at several sizes, MACs and int8/float TFLite
latency measured side by side in one run.

The localisation half of the size comparison needs training (docs/results.md#the-fracture-map);
this is the cost half, which does not depend on the weights, so untrained models answer it.
Latencies are interleaved round by round (these machines are noisy) and reported against the
smallest size as ratios.
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


def _sizes(text: str) -> List[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants a comma list of integers, got {text!r}")
    if not sizes or min(sizes) < 32:
        raise argparse.ArgumentTypeError("--sizes: at least one size, each >= 32")
    return sizes


def _interpreter(blob: bytes, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the train extra brings ai-edge-litert
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_content=blob, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.zeros(inp["shape"], dtype=inp["dtype"])

    def run() -> float:
        s = time.perf_counter()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return (time.perf_counter() - s) * 1000.0
    return run


def build(model: str, size: int, workdir: Path, calibration_images: int) -> Dict[str, object]:
    """The model at `size`, as export would convert it (int8 calibrated on random images: the
    latency of an int8 graph does not depend on its scales)."""
    from export.convert import export_saved_model, map_serving_model, serving_model, to_tflite
    from train.models import build_model, get_config
    from train.models.complexity import complexity

    cfg = get_config(model)
    keras_model = build_model(model, size=size)
    serving = (map_serving_model(keras_model) if cfg.is_map
               else serving_model(keras_model, cfg.gradcam_layer, None))
    saved = export_saved_model(serving, workdir / f"saved-{size}")
    calib = np.random.default_rng(0).random((calibration_images, size, size, 1), dtype=np.float32)
    return {"size": size, **complexity(keras_model),
            "tflite": {"float32": to_tflite(saved, "float32"), "int8": to_tflite(saved, "int8", calib)}}


def measure(models: List[Dict[str, object]], runs: int, warmup: int, threads: int) -> List[Dict[str, object]]:
    runners = {(m["size"], p): _interpreter(blob, threads) for m in models for p, blob in m["tflite"].items()}
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: Dict[tuple, List[float]] = {k: [] for k in runners}
    for _ in range(runs):  # round-robin: every configuration sees the same machine noise
        for key, run in runners.items():
            samples[key].append(run())
    base = min(m["size"] for m in models)
    out = []
    for m in models:
        row = {k: m[k] for k in ("size", "params", "macs_per_image")}
        for p in m["tflite"]:
            row[f"tflite_{p}_bytes"] = len(m["tflite"][p])
            row[f"tflite_{p}_p50_ms"] = float(np.median(samples[(m["size"], p)]))
        out.append(row)
    ref = {p: next(r for r in out if r["size"] == base)[f"tflite_{p}_p50_ms"] for p in ("float32", "int8")}
    for row in out:
        for p in ("float32", "int8"):
            row[f"tflite_{p}_vs_{base}"] = row[f"tflite_{p}_p50_ms"] / ref[p]
    return out


def table(rows: List[Dict[str, object]]) -> str:
    base = rows[0]["size"]
    lines = ["| input | params | MACs per image | int8 TFLite p50 ms | vs %d | float TFLite p50 ms | vs %d |" % (base, base),
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['params']:,} | {r['macs_per_image'] / 1e6:,.0f} M | "
                     f"{r['tflite_int8_p50_ms']:.1f} | {r['tflite_int8_vs_%d' % base]:.2f}× | "
                     f"{r['tflite_float32_p50_ms']:.1f} | {r['tflite_float32_vs_%d' % base]:.2f}× |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sizes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fracture_map", help="registry model (default: fracture_map)")
    ap.add_argument("--sizes", type=_sizes, default=[128, 256, 384], help="comma list (default: 128,256,384)")
    ap.add_argument("--runs", type=int, default=30, help="timed inferences per configuration (default: 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed inferences first, per configuration (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="interpreter threads (default: 1, as a Pi core)")
    ap.add_argument("--calibration-images", type=int, default=8,
                    help="random images that calibrate each int8 conversion; latency does not depend on them (default: 8)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here (default: print only)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = ap.parse_args(argv)

    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        for size in args.sizes:
            print(f"building {args.model} at {size} px ...", file=sys.stderr)
            models.append(build(args.model, size, Path(tmp), args.calibration_images))
    rows = measure(models, args.runs, args.warmup, args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "threads": args.threads, "runs": args.runs,
                                        "rows": rows}, indent=2))
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
