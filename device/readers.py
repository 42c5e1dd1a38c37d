"""Who reads an image for the service: in its own process (debugging), or a reader process under
a memory and time limit (device/worker.py), which the service survives whatever it does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from edge_runtime.predictor import Predictor

from .pause import Paused
from .triage import Triaged, triage_file, triage_photo


class ReaderCrashed(Exception):
    """The reader process died or hung on a file."""


class ReaderUnavailable(Paused):
    """The reader process cannot start (its bundle does not load): no file is to blame."""


class InProcessReader:
    """Reads in the service's own process (library use and tests)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def triage(self, mode: str, original: Path, dest: Path, heat: Path, source: str = "") -> Triaged:
        if mode == "film":
            return triage_photo(self.predictor, original, dest, heat)
        return triage_file(self.predictor, original, heat)

    def close(self) -> None:
        pass


class WorkerReader:
    """Reads in a separate process (device/worker.py) under a memory limit, with a time limit per
    file: a file that kills or hangs it costs that process, never the service."""

    def __init__(self, bundle_dir: Path, backend: str, threads: Optional[int], memory_mb: int = 512,
                 timeout_s: float = 120.0):
        self.args = [sys.executable, "-m", "device.worker", "--bundle", str(bundle_dir), "--backend", backend,
                     "--memory-mb", str(memory_mb)] + (["--threads", str(threads)] if threads else [])
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.proc: Optional[subprocess.Popen] = None

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=str(Path(__file__).resolve().parent.parent))
        ready = self._readline(60.0)
        if not ready or not json.loads(ready).get("ready"):
            self.close()
            raise ReaderUnavailable("the image reader did not start (its reason is in the service log)")

    def _readline(self, timeout: float) -> Optional[str]:
        """The reader's next line; "" when it closed its output (it died), None on a timeout."""
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
            return self.proc.stdout.readline()
        finally:
            sel.close()

    def _death(self) -> str:
        """Why the reader ended, from its exit status: out of memory (its own MemoryError, or
        the kernel's OOM killer, which kills with SIGKILL), another signal, or an exit status."""
        from .worker import OUT_OF_MEMORY
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # closed its output yet still running: as hung
            return "the reader stopped answering on this file"
        if code == OUT_OF_MEMORY:
            return f"the reader ran out of memory on this file (over the {self.memory_mb} MB it may use)"
        if code == -signal.SIGKILL:
            return ("the reader was killed (SIGKILL) on this file: on a device usually the kernel's "
                    "out-of-memory killer")
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the reader process died on this file ({name})"
        return f"the reader process died on this file (exit status {code})"

    def triage(self, mode: str, original: Path, dest: Path, heat: Path, source: str = "") -> Triaged:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps({"mode": mode, "original": str(original), "dest": str(dest),
                                              "heat": str(heat), "source": source}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            raise ReaderCrashed("the reader process had died") from None
        line = self._readline(self.timeout_s)
        if not line:
            why = (f"the reader hung on this file (no answer in {self.timeout_s:g} s)" if line is None
                   else self._death())
            self.close()
            raise ReaderCrashed(why)
        return Triaged.from_dict(json.loads(line))

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None
