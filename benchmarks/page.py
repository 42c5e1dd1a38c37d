"""python -m benchmarks.page: the results page after years of results.

Writes a results log of N synthetic records (200,000 by default: several years of a busy clinic),
lets the service's Ledger index it, serves the page from a separate process as `device serve`
does, and measures GET / one request at a time (median and p95) and with 10 clients at once
(wall time and the server process's peak memory, VmHWM). The targets: ≤ 100 ms per
request and ≤ 150 MB peak with 10 concurrent clients, at 200k records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from edge_runtime.labels import NEGATIVE, POSITIVE


def write_log(data: Path, n: int) -> float:
    """n records like the service writes (answers, retakes, errors); seconds to index them."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "results.jsonl", "w") as fh:
        for k in range(n):
            rec = {"id": f"{k:032x}", "source": f"/mnt/cr-export/2026-{k % 12 + 1:02d}/IMG_{k:07d}.dcm",
                   "received_utc": "2026-11-29T10:00:00Z", "threshold": 0.5909, "demonstration_only": True,
                   "mode": "file", "warnings": []}
            if k % 50 == 0:
                rec["error"] = "corrupt or truncated image"
            else:
                rec.update(probability=(k % 97) / 97, decision=POSITIVE if k % 5 == 0 else NEGATIVE)
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    from device.service import Ledger
    t0 = time.perf_counter()
    Ledger(data / "results.jsonl")
    return time.perf_counter() - t0


def serve(data: Path) -> None:
    from device.page import start_page
    from device.service import Ledger
    server = start_page(Ledger(data / "results.jsonl"), data / "store", "127.0.0.1", 0)
    print(server.server_address[1], flush=True)
    threading.Event().wait()


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000.0


def _vmhwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(n: int, requests: int = 50, clients: int = 10) -> Dict:
    with tempfile.TemporaryDirectory(prefix="page-bench-") as tmp:
        data = Path(tmp)
        index_s = write_log(data, n)
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.page", "--serve", str(data)],
                                stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent))
        try:
            port = int(proc.stdout.readline())
            url = f"http://127.0.0.1:{port}/"
            _get(url)  # warm
            idle_mb = _vmhwm(proc.pid)
            seq = [_get(url) for _ in range(requests)]
            times: List[float] = []
            lock = threading.Lock()

            def client() -> None:
                for _ in range(requests // 5):
                    ms = _get(url)
                    with lock:
                        times.append(ms)
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            peak = _vmhwm(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    q = statistics.quantiles(seq, n=20)
    return {"records": n, "index_seconds_on_first_open": round(index_s, 2), "sequential_p50_ms": statistics.median(seq),
            "sequential_p95_ms": q[18], "concurrent_clients": clients, "concurrent_requests": len(times),
            "concurrent_wall_s": wall, "concurrent_p50_ms": statistics.median(times),
            "server_idle_rss_mb": idle_mb, "server_peak_rss_mb": peak,
            "targets": {"GET / <= 100 ms": statistics.median(seq) <= 100, "peak <= 150 MB with 10 clients": peak <= 150}}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        serve(Path(argv[1]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.page", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000, help="results in the log (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=50, help="requests timed one at a time (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="write page.json here")
    args = ap.parse_args(argv)
    res = measure(args.records, args.requests)
    res["command"] = "python -m benchmarks.page " + " ".join(argv)
    text = json.dumps(res, indent=2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "page.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
