"""`python -m benchmarks.training`: where training time goes, and what more workers and the
decoded-image cache buy, measured side by side in one run on this machine.

1. Decoding: the split's images decoded by the device's decoder with 1 thread and with one per
   CPU, then read back from the on-disk cache (cold write, warm read).
2. Augmenting: training batches made one at a time in Python, and through the tf.data pipeline
   that training uses (parallel, in order).
3. Stepping: the model's training step alone on a fixed batch.
4. Training: `python -m train` with one worker and with 2 local workers (MultiWorkerMirroredStrategy
   on 127.0.0.1, train.launch) at the same global batch; images/s from the median epoch time after
   the first (which traces the graphs).

Writes OUT/training.json and OUT/training.md and prints the markdown (or the JSON with --json).
Numbers are for this machine and this data only; ratios measured here are the point (two workers
on 2 cores share the cores, so they show the overhead of the collectives, not a speed-up).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

DEFAULT_OUT = Path("runs/bench-training")


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def measure_decode(records, spec, cache_dir: Path) -> Dict[str, object]:
    from fracdata.images import load_images
    from train.job import file_hashes

    out: Dict[str, object] = {"images": len(records)}
    for label, workers in (("decode_1_thread", 1), ("decode_all_threads", os.cpu_count() or 1)):
        t = time.perf_counter()
        load_images(records, spec, progress=False, workers=workers)
        out[label] = _rate(len(records), time.perf_counter() - t)
    t = time.perf_counter()
    hashes = file_hashes(records)
    out["hash_files"] = _rate(len(records), time.perf_counter() - t)
    t = time.perf_counter()
    load_images(records, spec, progress=False, cache_dir=cache_dir, hashes=hashes)
    out["cache_cold_decode_and_write"] = _rate(len(records), time.perf_counter() - t)
    t = time.perf_counter()
    load_images(records, spec, progress=False, cache_dir=cache_dir, hashes=hashes)
    out["cache_warm_read"] = _rate(len(records), time.perf_counter() - t)
    return out


def measure_augment_and_step(loaded, name: str, batch: int, steps: int) -> Dict[str, object]:
    import numpy as np

    from train.dataset import step_dataset
    from train.map_fit import batch_signature, batches, grid_of, map_set, training_view
    from train.models import build_model, get_config

    cfg = get_config(name)
    spec = loaded.spec
    grid = grid_of(spec, cfg.map_stride)
    sets = {"train": map_set(loaded, set())}
    batch_of = batches(sets, batch, 1.0, 0, grid, steps, True)
    t = time.perf_counter()
    for s in range(steps):
        batch_of(s)
    serial = time.perf_counter() - t
    sig = batch_signature(spec.size, grid)
    ds = step_dataset(batch_of, sig, steps, 2 * steps)  # other steps than above: nothing cached
    t = time.perf_counter()
    for _ in ds:
        pass
    parallel = time.perf_counter() - t
    from train.map_fit import image_loss, map_loss
    import keras

    model = build_model(name, size=spec.size)
    view = training_view(model)
    view.compile(optimizer=keras.optimizers.Adam(1e-3), loss={"map": map_loss, "logit": image_loss})
    x, y = batch_of(0)
    view.train_on_batch(x, y)  # traces
    t = time.perf_counter()
    for _ in range(steps):
        view.train_on_batch(x, y)
    step = time.perf_counter() - t
    n = steps * batch
    return {"augment_serial": _rate(n, serial), "augment_tf_data_parallel": _rate(n, parallel),
            "training_step_only": _rate(n, step), "batch": batch, "steps": steps,
            "input_px": spec.size, "images_per_step_shape": list(np.shape(x))}


def _epoch_rate(run: Path, images_per_epoch: int) -> Dict[str, object]:
    with open(run / "history.csv") as f:
        secs = [float(r["epoch_seconds"]) for r in csv.DictReader(f)]
    later = secs[1:] or secs
    return {"epoch_seconds": [round(s, 2) for s in secs],
            "images_per_second": _rate(images_per_epoch, statistics.median(later))}


def measure_training(data_args: List[str], name: str, size: int, batch: int, steps: int, epochs: int,
                     workdir: Path) -> Dict[str, object]:
    from train import launch

    args = ["--model", name, *data_args, "--size", str(size), "--batch-size", str(batch), "--steps-per-epoch",
            str(steps), "--epochs", str(epochs), "--bootstrap", "20"]
    out: Dict[str, object] = {}
    t = time.perf_counter()
    one = subprocess.run([sys.executable, "-m", "train", *args, "--out", str(workdir / "one")], capture_output=True,
                         text=True)
    if one.returncode:
        raise RuntimeError(f"one worker failed: {one.stderr[-2000:]}")
    out["one_worker"] = {**_epoch_rate(workdir / "one", steps * batch), "command_seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    codes = launch.wait(launch.start([*args, "--out", str(workdir / "two")], 2, workdir / "logs"), 1800)
    if any(codes):
        raise RuntimeError(f"two workers failed ({codes}): see {workdir / 'logs'}")
    out["two_workers"] = {**_epoch_rate(workdir / "two", steps * batch), "command_seconds": round(time.perf_counter() - t, 1)}
    out["two_over_one"] = round(out["two_workers"]["images_per_second"] / out["one_worker"]["images_per_second"], 3)
    return out


def markdown(res: Dict) -> str:
    d, a, t = res["decode"], res["augment_and_step"], res["training"]
    lines = [f"# Training throughput ({res['model']} at {a['input_px']} px, global batch {a['batch']}; "
             f"{res['data']}; {res['cpus']} CPUs)", "",
             f"Command: `{res['command']}`", "",
             "| stage | images/s |", "|---|---|",
             f"| decode, 1 thread | {d['decode_1_thread']} |",
             f"| decode, {res['cpus']} threads | {d['decode_all_threads']} |",
             f"| sha256 of the files (the cache key) | {d['hash_files']} |",
             f"| cache off→on: decode and write | {d['cache_cold_decode_and_write']} |",
             f"| cache on: read back | {d['cache_warm_read']} |",
             f"| augment, one at a time | {a['augment_serial']} |",
             f"| augment, tf.data parallel | {a['augment_tf_data_parallel']} |",
             f"| training step alone | {a['training_step_only']} |",
             f"| training, 1 worker | {t['one_worker']['images_per_second']} |",
             f"| training, 2 local workers | {t['two_workers']['images_per_second']} |", "",
             f"2 workers / 1 worker: {t['two_over_one']}. Epoch seconds, 1 worker: {t['one_worker']['epoch_seconds']}; "
             f"2 workers: {t['two_workers']['epoch_seconds']}.", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="phantom", help="data folder, or phantom (default: %(default)s)")
    ap.add_argument("--phantom-images", type=int, default=240, help="phantom set size (default: %(default)s)")
    ap.add_argument("--model", default="fracture_map", help="registry model with a map (default: %(default)s)")
    ap.add_argument("--size", type=int, default=128, help="input size (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="global batch (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=12, help="steps per epoch (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of each training run (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the markdown")
    args = ap.parse_args(argv)
    from dataclasses import replace

    from fracdata.console import quiet_start
    from fracdata.data import load_data
    from fracdata.images import load_images
    from train.models import get_config

    quiet_start(False, ["tensorflow"])
    dataset = load_data(args.data, phantom_images=args.phantom_images, quiet=True)
    spec = replace(get_config(args.model).preprocess, size=args.size)
    records = dataset.records
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        print("decoding ...", file=sys.stderr)
        decode = measure_decode(records, spec, tmp / "cache")
        loaded = load_images(records, spec, progress=False)
        print("augmenting and stepping ...", file=sys.stderr)
        aug = measure_augment_and_step(loaded, args.model, args.batch_size, args.steps)
        print("training with 1 and 2 workers ...", file=sys.stderr)
        data_args = ["--data", args.data] + (["--phantom-images", str(args.phantom_images)] if args.data == "phantom" else [])
        training = measure_training(data_args, args.model, args.size, args.batch_size, args.steps, args.epochs, tmp)
    res = {"command": " ".join(["python -m benchmarks.training", *(argv if argv is not None else sys.argv[1:])]),
           "model": args.model, "data": dataset.name + (" (PHANTOM)" if dataset.phantom else ""),
           "cpus": os.cpu_count(), "decode": decode, "augment_and_step": aug, "training": training,
           "measured_unix": time.time()}
    (args.out / "training.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (args.out / "training.md").write_text(md)
    print(json.dumps(res, indent=2) if args.json else md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
