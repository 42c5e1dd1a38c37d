"""The service's reader process: decodes and answers images for `device serve`, one at a time.

Decoding is where hostile files do harm, so it runs here, apart from the service: with an
address-space limit set after the model is loaded (a file that would need more gets a
MemoryError, which the runtime turns into that file's record), and in a process the service can
lose without losing itself. If this process is killed (the kernel's OOM killer, a crash in a
decoder) or hangs, the service counts an attempt against that file, starts a new reader, and
after three attempts quarantines the file with a record. A MemoryError that escapes the file's
own record (raised outside the decoder) ends this process with exit status OUT_OF_MEMORY, so that
the service can say the reader ran out of memory rather than that it died or hung. Protocol: one
JSON task per line on stdin, one JSON record per line on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

READY = "ready"
OUT_OF_MEMORY = 86  # exit status: a MemoryError outside any one file's record (the service says so)
# Fault injection for the service's tests: "kill:NAME,hang:NAME,oom:NAME" makes this process die,
# hang or run out of its address space (a real MemoryError, outside the per-file handler) on a
# file whose source path contains NAME, as a decoder crash or a pathological file would;
# "nostart:1" makes it exit before it is ready, as with a bundle that does not load.
FAULT_ENV = "FRACTURE_EDGE_READER_FAULTS"


def _inject(faults, source: str) -> None:
    if faults.get("kill") and faults["kill"] in source:
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.get("hang") and faults["hang"] in source:
        threading.Event().wait()
    if faults.get("oom") and faults["oom"] in source:
        bytearray(1 << 40)  # beyond the address-space limit: MemoryError


def _vm_size_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _serve(argv)
    except MemoryError:
        try:
            sys.stderr.write("the reader ran out of memory outside a file's own record: exiting\n")
        except MemoryError:
            pass
        os._exit(OUT_OF_MEMORY)


def _serve(argv: Optional[List[str]]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m device.worker")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--memory-mb", type=int, default=512, help="address space allowed beyond the loaded model")
    args = ap.parse_args(argv)

    from edge_runtime.predictor import Predictor

    from .triage import Triaged, triage_file, triage_photo

    faults = dict(f.split(":", 1) for f in os.environ.get(FAULT_ENV, "").split(",") if ":" in f)
    if faults.get("nostart"):
        return 3  # as a reader whose bundle does not load
    predictor = Predictor(args.bundle, args.backend, None, args.threads)
    if args.memory_mb > 0:
        limit = int((_vm_size_mb() + args.memory_mb) * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({READY: True, "bundle": str(predictor.bundle.root)}), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        original, dest, heat = Path(task["original"]), Path(task["dest"]), Path(task["heat"])
        _inject(faults, task.get("source", ""))
        try:
            if task["mode"] == "film":
                rec = triage_photo(predictor, original, dest, heat)
            else:
                rec = triage_file(predictor, original, heat)
        except MemoryError:
            rec = Triaged(file=str(original), mode=task["mode"],
                          error="too large to read within the memory this device allows")
        except Exception as exc:  # noqa: BLE001 - one image must not end the reader
            import traceback
            traceback.print_exc(file=sys.stderr)  # to the service's log, never into the record
            rec = Triaged(file=str(original), mode=task["mode"], internal_error=True,
                          error=f"internal error ({type(exc).__name__}); details in the service log")
        print(json.dumps(rec.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
