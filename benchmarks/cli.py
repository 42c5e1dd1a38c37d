"""python -m benchmarks: latency, cold start, memory, size and accuracy of every backend in a
bundle, beside the TensorFlow float model, in one run on this device.

Everything is measured side by side in one invocation so the ratios hold on a noisy machine. Each
backend runs in its own subprocess (benchmarks/worker.py), so its memory is its own. Writes
OUT/benchmark.json and OUT/benchmark.md; prints the markdown (or the JSON with --json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge_runtime.backends import BACKENDS, backend_version, installed_backends
from edge_runtime.bundle import BundleError, load_bundle, sha256_file
from edge_runtime.environment import package_version

from .report import markdown, save, targets

DEFAULT_OUT = Path("runs/bench")


def _cpuinfo() -> Dict[str, str]:
    info: Dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                info.setdefault(k, v)
    except OSError:
        pass
    return info


def nominal_peak_gops(cores: int) -> Dict[str, object]:
    """fp32 multiply-add peak from the vector unit and the clock: a ceiling to compare with, not a measurement."""
    info = _cpuinfo()
    flags = info.get("flags", info.get("Features", ""))
    mhz = None
    try:
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000.0
    except (OSError, ValueError):
        try:
            mhz = float(info.get("cpu MHz", ""))
        except ValueError:
            mhz = None
    if "avx512f" in flags:
        per_cycle, unit = 64, "AVX-512: 2 FMA x 16 fp32"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, unit = 32, "AVX2: 2 FMA x 8 fp32"
    elif "asimd" in flags:
        per_cycle, unit = 16, "NEON: 2 FMA x 4 fp32 (Cortex-A76 class; A72 has half)"
    else:
        per_cycle, unit = 8, "unknown vector unit"
    gops = cores * (mhz / 1000.0) * per_cycle if mhz else None
    return {"gops_fp32": gops, "basis": f"{cores} cores x {mhz} MHz x {per_cycle} ops/cycle ({unit})",
            "note": "nominal fp32 peak; int8 dot-product units (VNNI, SDOT) reach 2-4x more"}


def device_info() -> Dict[str, object]:
    info = _cpuinfo()
    cores = os.cpu_count() or 1
    return {"cpu": info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor(),
            "machine": platform.machine(), "cores": cores, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "interpreters": {b: backend_version(b) for b in BACKENDS},
            "tensorflow": package_version("tensorflow"), "peak": nominal_peak_gops(cores)}


def _keras_model(bundle, explicit: Optional[Path]) -> Optional[Path]:
    """The float model the bundle was exported from, checked by its sha256 in the manifest."""
    ref = bundle.manifest.get("reference", {}).get("float_keras", {})
    candidates = [explicit] if explicit else []
    source = bundle.manifest["model"].get("source", "")
    if source.startswith("run directory "):
        candidates.append(Path(source[len("run directory "):]) / ref.get("file", "model.keras"))
    for c in candidates:
        if c and c.is_file() and (explicit or sha256_file(c) == ref.get("sha256")):
            return c
    return None


def _percentiles(lat: List[float]) -> Dict[str, float]:
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(np.mean(lat)),
            "runs": len(lat)}


def run_worker(cmd: List[str], timeout: float) -> Dict[str, object]:
    t_spawn = time.time()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", *cmd], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["worker failed"])[-1]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "t_first_answer" in out:
        out["cold_start_s"] = out["t_first_answer"] - t_spawn
    return out


def measure_backends(bundle, keras_path: Optional[Path], threads: List[int], runs: int, warmup: int,
                     batch: int, progress: bool) -> List[Dict[str, object]]:
    have = installed_backends()
    jobs = []
    if keras_path is not None:
        jobs.append(("keras", "float Keras (TensorFlow)", ["--keras-model", str(keras_path)], keras_path))
    for art in bundle.artifacts():
        for backend in (("litert", "tflite") if art.format == "tflite" else ("onnx",)):
            if backend in have:
                jobs.append((backend, art.key, ["--bundle", str(bundle.path), "--artifact", art.key], art.path))
    size = bundle.spec.size
    macs = (bundle.manifest["model"].get("complexity") or {}).get("macs_per_image")
    rows = []
    for backend, artifact, extra, path in jobs:
        for n in threads:
            if progress:
                print(f"  {backend:7s} {artifact:26s} {n} thread(s) ...", file=sys.stderr, flush=True)
            r = run_worker(["--backend", backend, *extra, "--threads", str(n), "--size", str(size),
                            "--runs", str(runs), "--warmup", str(warmup), "--batch", str(batch)], timeout=900)
            row = {"backend": backend, "artifact": artifact, "threads": n, "file_mb": path.stat().st_size / 1e6}
            if "error" in r:
                row["error"] = r["error"]
            else:
                lat = _percentiles(r["latency_ms"])
                row.update(lat, cold_start_s=r["cold_start_s"], import_and_load_s=r["import_and_load_s"],
                           first_inference_ms=r["first_inference_ms"], peak_rss_mb=r["peak_rss_mb"],
                           throughput_images_per_s=r["throughput_images_per_s"])
                if macs:
                    row["achieved_gops"] = 2 * macs / (lat["p50_ms"] / 1000.0) / 1e9
            rows.append(row)
    return rows


def end_to_end(bundle, files: Dict[str, Path], repeats: int) -> Dict[str, Dict[str, float]]:
    """One full-size file to the answer, medians: the stage timings are the ones the runtime's own
    predict_file records; only the full (non-draft) decode, for comparison, is timed here."""
    from edge_runtime.imageio import read_grayscale
    from edge_runtime.predictor import Predictor

    pred = Predictor(bundle, threads=1)
    stages = {"decode": "decode_fast", "preprocess": "preprocess", "inference": "inference", "gradcam": "gradcam"}
    out = {}
    for kind, path in files.items():
        t: Dict[str, List[float]] = {k: [] for k in ["decode_full", *stages.values(), "predict_file_total",
                                                     "with_heatmap_total"]}
        overlay = path.with_name(f"{path.stem}_gradcam.jpg")
        overlay.unlink(missing_ok=True)  # an earlier run's must not pass for this one's
        for _ in range(repeats):
            s = time.perf_counter()
            read_grayscale(path)
            t["decode_full"].append((time.perf_counter() - s) * 1000.0)
            s = time.perf_counter()
            rec = pred.predict_file(path)
            json.dumps(rec.to_dict())  # the whole answer, as the CLI makes it
            t["predict_file_total"].append((time.perf_counter() - s) * 1000.0)
            if not rec.timings_ms or "inference" not in rec.timings_ms:
                raise SystemExit(f"benchmark input {path}: answered {rec.decision!r} before the model ran: nothing "
                                 "of the end-to-end path to time")
            for stage, name in stages.items():  # a fracture map's heatmap is timed as "heatmap", Grad-CAM's as "gradcam"
                t[name].append(rec.timings_ms[stage] if stage != "gradcam" else
                               rec.timings_ms.get("gradcam", rec.timings_ms.get("heatmap", 0.0)))
            s = time.perf_counter()
            json.dumps(pred.predict_file(path, overlay).to_dict())  # the same, drawing the overlay as --heatmap does
            t["with_heatmap_total"].append((time.perf_counter() - s) * 1000.0)
        med = {f"{k}_ms": statistics.median(v) for k, v in t.items()}
        med["overhead_over_decode"] = (med["predict_file_total_ms"] - med["decode_fast_ms"]) / med["decode_fast_ms"]
        med["heatmap_ratio"] = med["with_heatmap_total_ms"] / med["predict_file_total_ms"]
        if not overlay.is_file():  # refused (out of scope, retake): no overlay was drawn, so --heatmap was not timed
            med["heatmap_ratio"] = None
            med["heatmap_not_timed"] = f"the input was answered {rec.decision!r}, without an overlay"
        med.update(file=str(path), bytes=path.stat().st_size, backend=pred.backend, artifact=pred.artifact,
                   decision=rec.decision)
        out[kind] = med
    return out


def film_path(bundle, photos: Dict[str, Path], runs: int) -> Dict[str, Dict[str, object]]:
    """The film path on phone-style JPEGs, each size in its own process (its peak memory is its own)."""
    out = {}
    for name, path in photos.items():
        r = run_worker(["--film", str(path), "--bundle", str(bundle.path), "--threads", "1", "--runs", str(runs),
                        "--warmup", "1"], timeout=900)
        if "error" in r:
            out[name] = {"error": r["error"]}
            continue
        stages = sorted({k for t in r["timings_ms"] for k in t})
        med = {f"{k}_ms": statistics.median(t[k] for t in r["timings_ms"] if k in t) for k in stages}
        if "heatmap_ms" in med and "gradcam_ms" not in med:  # a fracture map's heatmap, in the same column
            med["gradcam_ms"] = med["heatmap_ms"]
        from PIL import Image
        with Image.open(path) as img:
            size = img.size
        out[name] = {"file": str(path), "bytes": path.stat().st_size, "pixels": size, "runs": r["runs"],
                     "answered": r["answered"], "codes": r["codes"], "peak_rss_mb": r["peak_rss_mb"], **med}
    return out


def accuracy(bundle) -> Dict[str, object]:
    """From the manifest: export measured every artifact through this runtime on the test split."""
    m = bundle.manifest
    ref = m.get("reference", {}).get("float_keras", {})

    def figures(metrics: Dict) -> Dict[str, object]:
        return {k: metrics.get(k) for k in ("auc", "delta_auc", "sensitivity", "agreement", "mean_abs_diff")}
    out = {"source": f"export's check on the {m['check']['split']} split ({m['check']['n']} images of "
                     f"{m['data']['name']})", "float_auc": ref.get("auc"),
           "artifacts": {k: figures(a["metrics"]) for k, a in m["artifacts"].items()}}
    if ref.get("by_source"):  # real radiographs and phantoms mixed: a pooled AUC would mean nothing
        out["float_auc"] = None
        out["by_source"] = {src: {"float": {"auc": r.get("auc"), "sensitivity": r.get("sensitivity"), "n": r.get("n")},
                                  "artifacts": {k: figures(a["metrics"]["by_source"][src])
                                                for k, a in m["artifacts"].items() if src in a["metrics"].get("by_source", {})}}
                            for src, r in ref["by_source"].items()}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: the runtime's default bundle)")
    ap.add_argument("--keras", type=Path, help="the float .keras model for the TensorFlow baseline "
                                                "(default: the bundle's source model, if present and its sha256 matches)")
    ap.add_argument("--no-keras", action="store_true", help="skip the TensorFlow baseline")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where benchmark.json/.md go (default: %(default)s)")
    ap.add_argument("--threads", default="1,2,4", help="thread counts, capped at the cores present (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per setting after warm-up (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed runs first (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32, help="images in the throughput batch (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=10, help="end-to-end repeats per file (default: %(default)s)")
    ap.add_argument("--image-size", default="2000x2500", help="synthetic full-size radiograph, WxH (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a short run: 1 thread, 20 runs, 3 repeats (used by the tests)")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the markdown")
    args = ap.parse_args(argv)
    if args.quick:
        args.threads, args.runs, args.warmup, args.batch, args.repeats = "1", 20, 3, 4, 3
    cores = os.cpu_count() or 1
    threads = sorted({min(int(t), cores) for t in args.threads.split(",")})
    try:
        bundle = load_bundle(args.bundle)
        w, h = (int(v) for v in args.image_size.lower().split("x"))
    except (BundleError, ValueError) as exc:
        print(f"error: {exc if isinstance(exc, BundleError) else f'--image-size {args.image_size!r}: expected WxH'}",
              file=sys.stderr)
        return 2
    keras_path = None
    if not args.no_keras and importlib.util.find_spec("tensorflow") is not None:
        keras_path = _keras_model(bundle, args.keras)
    from .inputs import write_inputs, write_phone_photos

    progress = sys.stderr.isatty() or not args.json
    print(f"benchmarking {bundle.path} ({bundle.model_name}) on {cores} cores", file=sys.stderr)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = {
        "date": started, "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick, "device": device_info(), "bundle": str(bundle.path), "model": bundle.model_name,
        "macs_per_image": (bundle.manifest["model"].get("complexity") or {}).get("macs_per_image"),
        "demonstration_only": bundle.demonstration_only, "title": bundle.manifest.get("title"),
        "heatmap": "fracture map" if bundle.fracture_map else "Grad-CAM", "input_size": bundle.spec.size,
        "default_tflite": bundle.info.default_artifacts.get("tflite"),
        "keras_baseline": str(keras_path) if keras_path else None,
        "backends": measure_backends(bundle, keras_path, threads, args.runs, args.warmup, args.batch, progress),
        "end_to_end": end_to_end(bundle, write_inputs(args.out / "inputs", (w, h)), args.repeats),
        "film_path": film_path(bundle, write_phone_photos(args.out / "inputs", quick=args.quick), max(3, args.repeats)),
        "accuracy": accuracy(bundle),
    }
    result["targets"] = targets(result)
    text = markdown(result)
    save(result, text, args.out, "benchmark")
    print(json.dumps(result, indent=2) if args.json else text)
    return 0
