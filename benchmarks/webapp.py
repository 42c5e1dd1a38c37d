"""python -m benchmarks.webapp: the phone web app in Chromium, side by side with the native runtime.

One run measures, on this machine:
- browser inference (ONNX Runtime Web, WASM) per image (the bundle's views, one batch) and per
  single view, with 1 thread and with WASM threads (cross-origin isolated), against the native
  Python runtime (LiteRT) on the same image, same run;
- the film path on a 12 MP phone photo (decode, find, flatten, gate, model, heatmap) in the
  browser and in Python;
- time from navigation to ready (bundle fetched and checked, model compiled, self-test), on a
  first visit and on a return visit (offline copy, self-test remembered);
- what a first visit downloads, as transferred (gzip), and the site's raw size.

Chromium here is a desktop build on a 2-core x86 server: absolute times on a phone differ; the
ratios are what the targets are about (docs/webapp.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from .report import save

# Targets: browser inference <= 6x native, film path <= 1 s at 12 MP, first download <= 8 MB.
TARGET_RATIO = 6.0
TARGET_FILM_S = 1.0
TARGET_DOWNLOAD_MB = 8.0

TIME_INFER = """async ([reps, count]) => {
  const e = fractureEdge.engine, n = e.spec.size;
  const x = new Float32Array(count * n * n);
  for (let i = 0; i < x.length; i++) x[i] = (i * 7919 % 1000) / 1000;
  for (let i = 0; i < 3; i++) await e.infer(x, count);
  const t = [];
  for (let i = 0; i < reps; i++) { const t0 = performance.now(); await e.infer(x, count); t.push(performance.now() - t0); }
  return t;
}"""

ANALYZE = """async ([b64, name, kind]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const blob = new Blob([bytes]);
  const t0 = performance.now();
  const r = kind === "film" ? await fractureEdge.analyzePhoto(blob, name) : await fractureEdge.analyzeFile(blob, name);
  return { ms: performance.now() - t0, timings: r.timings_ms, decision: r.decision, error: r.error || null,
           codes: r.quality ? r.quality.codes : null };
}"""


def _median(xs: List[float]) -> float:
    return float(statistics.median(xs))


def native_ms(pred, count: int, reps: int) -> float:
    """Median ms of the native runtime (`pred`: LiteRT, 1 thread) on `count` views of one image."""
    import numpy as np

    n = pred.spec.size
    x = ((np.arange(count * n * n) * 7919 % 1000) / 1000).astype(np.float32).reshape(count, n, n, 1)
    for _ in range(3):
        for v in x:
            pred.infer(v)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for v in x:  # the runtime answers view by view (its interpreters are built for batch 1)
            pred.infer(v)
        times.append((time.perf_counter() - t0) * 1000)
    return _median(times)


def twelve_mp_photo(tmp: Path) -> Path:
    import numpy as np

    from device.simulate import simulate
    from edge_runtime.selftest import image
    data, _ = simulate(image(0, size=600), "full", np.random.default_rng(4242), photo_size=(4000, 3000))
    path = tmp / "film_12mp.jpg"
    path.write_bytes(data)
    return path


def run(reps: int = 20, out: Optional[Path] = None, chromium: Optional[str] = None,
        command: str = "python -m benchmarks.webapp") -> Dict:
    import base64

    from playwright.sync_api import sync_playwright

    from device.page import start_page
    from device.service import Ledger
    from device.triage import triage_photo
    from device.webapp import build_site
    from edge_runtime.bundle import load_bundle
    from edge_runtime.predictor import Predictor

    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("error: chromium not found (apt install chromium)")
    bundle = load_bundle(None)
    site = build_site(bundle)
    views = bundle.spec.n_views
    tmp = Path(tempfile.mkdtemp(prefix="bench-webapp-"))
    srv = start_page(Ledger(tmp / "results.jsonl"), tmp, port=0, bundle=lambda: bundle)
    url = f"http://127.0.0.1:{srv.server_address[1]}/app/"
    photo = twelve_mp_photo(tmp)
    res: Dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": command,
                 "reps": reps,
                 "machine": f"{platform.processor() or platform.machine()}, {platform.machine()}",
                 "model": bundle.model_name, "artifact": site.artifact, "views_per_image": views,
                 "site_files": len(site.files), "site_bytes": site.size(compressed=False),
                 "site_bytes_gzip": site.size(compressed=True)}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            res["chromium"] = browser.version
            # First visit: an empty profile; count what crosses the wire.
            ctx = browser.new_context()
            page = ctx.new_page()
            transferred: List[int] = []
            page.on("requestfinished", lambda r: transferred.append(r.sizes()["responseBodySize"]))
            page.goto(url + "?threads=64")  # every core the page may use (capped at hardwareConcurrency)
            page.wait_for_function("() => window.fractureEdge && window.fractureEdge.offline", timeout=120_000)
            res["first_visit_ready_ms"] = page.evaluate("fractureEdge.readyMs")
            page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=60_000)
            page.wait_for_timeout(500)
            res["first_visit_transferred_bytes"] = int(sum(transferred))
            res["first_visit_requests"] = len(transferred)
            ready = []
            for _ in range(3):  # return visits: from the offline copy, self-test remembered
                page.reload()
                page.wait_for_function("() => window.fractureEdge && window.fractureEdge.readyMs", timeout=120_000)
                ready.append(page.evaluate("fractureEdge.readyMs"))
            res["return_visit_ready_ms"] = _median(ready)
            res["threads_isolated"] = page.evaluate("fractureEdge.engine.threads")
            res["browser_image_ms_threads"] = _median(page.evaluate(TIME_INFER, [reps, views]))
            res["browser_view_ms_threads"] = _median(page.evaluate(TIME_INFER, [reps, 1]))
            b64 = base64.b64encode(photo.read_bytes()).decode()
            film = [page.evaluate(ANALYZE, [b64, photo.name, "film"]) for _ in range(5)]
            res["browser_film_12mp_ms"] = _median([f["ms"] for f in film])
            res["browser_film_12mp_stages_ms"] = film[-1]["timings"]
            res["browser_film_12mp_decision"] = film[-1]["decision"] or film[-1]["codes"]
            ctx.close()
            # One thread: the same app asked for 1.
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(url + "?threads=1")
            page.wait_for_function("() => window.fractureEdge && window.fractureEdge.engine", timeout=120_000)
            res["browser_image_ms_1thread"] = _median(page.evaluate(TIME_INFER, [reps, views]))
            res["browser_view_ms_1thread"] = _median(page.evaluate(TIME_INFER, [reps, 1]))
            ctx.close()
            browser.close()
    finally:
        srv.shutdown()
    pred = Predictor(bundle, backend="auto", threads=1)  # one load for the native rows and Python's film path
    res["native_backend"], res["native_artifact"] = pred.backend, pred.artifact
    res["native_image_ms_1thread"] = native_ms(pred, views, reps)
    res["native_view_ms_1thread"] = native_ms(pred, 1, reps * 4)
    py = []
    for _ in range(5):
        t0 = time.perf_counter()
        triage_photo(pred, photo, keep_dir=None)
        py.append((time.perf_counter() - t0) * 1000)
    res["python_film_12mp_ms"] = _median(py)
    res["ratio_image_1thread"] = res["browser_image_ms_1thread"] / res["native_image_ms_1thread"]
    res["ratio_image_threads"] = res["browser_image_ms_threads"] / res["native_image_ms_1thread"]
    res["ratio_view_1thread"] = res["browser_view_ms_1thread"] / res["native_view_ms_1thread"]
    shutil.rmtree(tmp, ignore_errors=True)
    save(res, markdown(res), out, "webapp")
    return res


def markdown(r: Dict) -> str:
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    mb = r["first_visit_transferred_bytes"] / 1e6
    return f"""# Web app benchmark — {r['model']} ({r['artifact']}, {r['views_per_image']} view{'s' if r['views_per_image'] != 1 else ''} per image)

{r['date_utc']}; `{r.get('command', 'python -m benchmarks.webapp')}`; Chromium {r['chromium']} headless on
{r['machine']}; native: {r['native_backend']} {r['native_artifact']}, 1 thread, same run. Medians of {r['reps']}.

| measure | browser | native | ratio | target |
|---|---:|---:|---:|---|
| one image ({r['views_per_image']} view{'s' if r['views_per_image'] != 1 else ''}), 1 thread | {r['browser_image_ms_1thread']:.1f} ms | {r['native_image_ms_1thread']:.1f} ms | {r['ratio_image_1thread']:.1f}x | <= {TARGET_RATIO:.0f}x: {met(r['ratio_image_1thread'] <= TARGET_RATIO)} |
| one image, WASM threads ({r['threads_isolated']}) | {r['browser_image_ms_threads']:.1f} ms | {r['native_image_ms_1thread']:.1f} ms | {r['ratio_image_threads']:.1f}x | <= {TARGET_RATIO:.0f}x: {met(r['ratio_image_threads'] <= TARGET_RATIO)} |
| one view, 1 thread | {r['browser_view_ms_1thread']:.2f} ms | {r['native_view_ms_1thread']:.2f} ms | {r['ratio_view_1thread']:.1f}x | |
| one view, WASM threads | {r['browser_view_ms_threads']:.2f} ms | | | |
| film path, 12 MP photo | {r['browser_film_12mp_ms']:.0f} ms | {r['python_film_12mp_ms']:.0f} ms (Python) | | <= {TARGET_FILM_S * 1000:.0f} ms: {met(r['browser_film_12mp_ms'] <= TARGET_FILM_S * 1000)} |
| navigation to ready, first visit | {r['first_visit_ready_ms']:.0f} ms | | | |
| navigation to ready, return visit | {r['return_visit_ready_ms']:.0f} ms | | | |
| first download, as transferred | {mb:.2f} MB ({r['first_visit_requests']} requests) | | | <= {TARGET_DOWNLOAD_MB:.0f} MB: {met(mb <= TARGET_DOWNLOAD_MB)} |
| site, raw / gzip | {r['site_bytes'] / 1e6:.2f} / {r['site_bytes_gzip'] / 1e6:.2f} MB | | | |

Film path stages in the browser (ms): {json.dumps(r['browser_film_12mp_stages_ms'])}; answer: {r['browser_film_12mp_decision']}.
"""


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.webapp", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-webapp"), help="where webapp.json and webapp.md go "
                                                                               "(default: %(default)s)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per measure (default: %(default)s)")
    ap.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    res = run(args.reps, args.out, args.chromium,
              " ".join(["python -m benchmarks.webapp", *(argv if argv is not None else sys.argv[1:])]))
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
