"""`python -m train.launch --workers N -- TRAIN ARGS`: a multi-worker run on this one host.

Starts N `python -m train --strategy multiworker ...` processes, each with its own TF_CONFIG on
127.0.0.1 (free ports picked by the system), waits for them, and returns the first failure's exit
status (0 when every worker succeeded). Worker k's output goes to worker-k.log in --logs (default:
a temporary folder, named on stderr). It is how the tests, the training
benchmark and a newcomer try multi-worker training without a cluster; on several hosts, each host
runs `python -m train` itself with its own TF_CONFIG (docs/training.md, "More than one machine").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence


def free_ports(n: int) -> List[int]:
    """n ports free on 127.0.0.1 now (bound together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(ports: Sequence[int]) -> List[str]:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": k}}) for k in range(len(ports))]


def start(train_args: Sequence[str], workers: int, logs: Path, env: Optional[Dict[str, str]] = None,
          ports: Optional[Sequence[int]] = None, python: str = sys.executable) -> List[subprocess.Popen]:
    """Start the workers (worker 0 is the chief); their output goes to logs/worker-k.log."""
    logs.mkdir(parents=True, exist_ok=True)
    ports = list(ports) if ports else free_ports(workers)
    procs = []
    for k, config in enumerate(tf_configs(ports)):
        e = {**os.environ, **(env or {}), "TF_CONFIG": config}
        log = open(logs / f"worker-{k}.log", "ab")
        procs.append(subprocess.Popen([python, "-m", "train", "--strategy", "multiworker", *train_args],
                                      stdout=log, stderr=subprocess.STDOUT, env=e))
        log.close()
    return procs


def wait(procs: Sequence[subprocess.Popen], timeout: Optional[float] = None) -> List[int]:
    """Every worker's exit status; on `timeout`, the ones still running are ended (by their PID)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(None if deadline is None else max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            codes.append(p.wait())
    return codes


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m train.launch", description=__doc__.splitlines()[0],
                                 epilog="example: python -m train.launch --workers 2 -- --model fracture_map "
                                        "--data phantom --out runs/two-workers")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    ap.add_argument("--logs", type=Path, help="folder for worker-k.log (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, help="end every worker after this many seconds (default: none)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if "--out" not in train_args:
        ap.error("give the training command an --out after '--': every worker must name the same run folder")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="train-launch-"))
    print(f"{args.workers} workers on 127.0.0.1; logs in {logs}", file=sys.stderr)
    codes = wait(start(train_args, args.workers, logs), args.timeout)
    for k, c in enumerate(codes):
        print(f"worker {k}: exit {c}", file=sys.stderr)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
