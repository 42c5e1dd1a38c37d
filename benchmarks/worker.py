"""One backend, one artifact, one thread count, in a process of its own (so its memory is its own).

Prints one JSON object: when the first answer came (epoch seconds, for the parent's cold-start
figure), load and first-inference times, latency samples, batch throughput and peak RSS.
Run by benchmarks.cli; not meant to be called by hand.
"""

from __future__ import annotations

import time

T_START = time.time()  # before any heavy import

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from typing import Callable, List  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.memory import peak_rss_mb  # noqa: E402


def _keras_runner(model_path: str, threads: int, size: int) -> Callable[[np.ndarray], float]:
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from train.models import load_model  # the project's own layers (a fracture map's pooling) must be known
    model = load_model(model_path)

    def run(x: np.ndarray) -> float:  # the float model called on one image, as a script would
        return float(np.asarray(model(x[None], training=False)).reshape(-1)[0])
    return run


def _runtime_runner(bundle: str, backend: str, artifact: str, threads: int) -> Callable[[np.ndarray], float]:
    from edge_runtime.predictor import Predictor
    pred = Predictor(bundle, backend, artifact, threads, gradcam=False)
    return pred.probability


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="auto")  # keras | litert | tflite | onnx (auto: the film path)
    ap.add_argument("--bundle")
    ap.add_argument("--artifact")
    ap.add_argument("--keras-model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--film", help="a photo of film: time the film path (decode, find, flatten, gate, predict)")
    args = ap.parse_args(argv)
    if args.film:
        return film_path(args)

    rng = np.random.default_rng(0)
    x = rng.random((args.size, args.size, 1), dtype=np.float32)
    t0 = time.time()
    if args.backend == "keras":
        run = _keras_runner(args.keras_model, args.threads, args.size)
    else:
        run = _runtime_runner(args.bundle, args.backend, args.artifact, args.threads)
    t_loaded = time.time()
    run(x)
    t_first = time.time()
    for _ in range(args.warmup):
        run(x)
    lat = []
    for _ in range(args.runs):
        s = time.perf_counter()
        run(x)
        lat.append((time.perf_counter() - s) * 1000.0)
    batch = rng.random((args.batch, args.size, args.size, 1), dtype=np.float32)
    s = time.perf_counter()
    for img in batch:  # one image at a time: what the device does with a queue of files
        run(img)
    batch_s = time.perf_counter() - s
    print(json.dumps({
        "t_start": T_START, "t_first_answer": t_first, "import_and_load_s": t_loaded - t0,
        "first_inference_ms": (t_first - t_loaded) * 1000.0, "latency_ms": lat,
        "throughput_images_per_s": args.batch / batch_s if batch_s > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
    }))
    return 0


def film_path(args) -> int:
    """The `film` command's work on one photo, repeated: stage timings from the records themselves."""
    import tempfile
    from pathlib import Path

    from device.triage import triage_photo
    from edge_runtime.predictor import Predictor

    pred = Predictor(args.bundle, "auto", None, args.threads)
    records = []
    with tempfile.TemporaryDirectory() as keep:
        for _ in range(args.warmup + args.runs):
            records.append(triage_photo(pred, Path(args.film), Path(keep), None))
    timed = records[args.warmup:]
    print(json.dumps({"timings_ms": [r.timings_ms or {} for r in timed],
                      "answered": sum(r.answered for r in timed), "runs": len(timed),
                      "codes": (timed[-1].quality or {}).get("codes"),
                      "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
