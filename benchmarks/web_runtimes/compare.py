"""python benchmarks/web_runtimes/compare.py: which WASM runtime should the phone app use?

Runs the reference model in headless Chromium through onnxruntime-web (the bundle's own ONNX,
dynamic batch) and through LiteRT.js (@litertjs/core, XNNPACK), one view and a batch of eight
views, 1 and 2 threads, side by side in one run. LiteRT.js refuses a dynamic batch dimension, so
fixed-batch TFLites (1 and 8) are converted here from the bundle's source Keras model (TensorFlow
needed; these are measurement copies, never shipped). Needs `npm ci` in this folder first.
Results: docs/webapp.md#the-runtime-chosen-by-measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent


class _Isolated(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".js": "text/javascript"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args):
        pass


def fixed_batch_tflites(keras_file: Path, out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    model = keras.models.load_model(keras_file, compile=False)
    for b in (1, 8):
        x = keras.Input(shape=model.input_shape[1:], batch_size=b)
        conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, model(x)))
        (out / f"model_b{b}.tflite").write_bytes(conv.convert())


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/web_runtimes/compare.py", description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="timed runs per measure (default: %(default)s)")
    ap.add_argument("--keras", type=Path, default=HERE.parents[1] / "models/phantom-demo/custom_cnn_gap_film/model.keras",
                    help="the reference bundle's source model (default: %(default)s)")
    ap.add_argument("--chromium", default=shutil.which("chromium"), help="browser binary (default: chromium on PATH)")
    args = ap.parse_args(argv)
    if not (HERE / "node_modules" / "@litertjs" / "core").is_dir():
        print(f"error: run `npm ci` in {HERE} first", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from edge_runtime.bundle import load_bundle
    bundle = load_bundle(None)
    models = HERE / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir()
    try:
        (models / "model_float.onnx").write_bytes(bundle.read_verified(bundle.manifest["artifacts"]["onnx_float"]["file"]))
        fixed_batch_tflites(args.keras, models)
        srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Isolated, directory=str(HERE)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            results["chromium"] = browser.version
            for threads in (1, 2):
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{srv.server_address[1]}/bench.html")
                page.wait_for_function("window.ready")
                results[f"threads_{threads}"] = page.evaluate(f"bench({args.reps}, {threads})")
                page.close()
            browser.close()
        srv.shutdown()
    finally:
        shutil.rmtree(models, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
