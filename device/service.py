"""The clinic service: watched folders and camera captures feed one queue; every image is
processed exactly once, also across a restart or a power cut; results go to an append-only log.

Durability, in order: the original is copied into store/<id>/ beside its result; only then is the
result appended to results.jsonl as one whole line in a single write, followed by fsync. A kill
at any point before that write leaves no record, and the image is processed again on restart
(the store folder is simply rewritten); a power cut *during* the write can leave a torn last line,
which the next start cuts off before appending. The id is the sha256 of the file's bytes, so a
file seen again (a rescan, a restart, a second copy) is never logged twice. Nothing is sent
anywhere, and records carry no DICOM tag values.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from PIL import Image

from edge_runtime.bundle import sha256_file
from edge_runtime.predictor import Predictor

from .triage import triage_file, triage_photo

LEDGER = "results.jsonl"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    """Append-only JSON lines with whole-line writes and fsync; repairs a torn tail on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    def records(self) -> List[Dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # only a torn line can fail, and _repair removes it
        return out

    def append(self, record: Dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)


class Spool:
    """The device's own inbox: captures land in inbox/film, files dropped by hand in inbox/files."""

    def __init__(self, data: Path):
        self.film = Path(data) / "inbox" / "film"
        self.files = Path(data) / "inbox" / "files"
        for d in (self.film, self.files):
            d.mkdir(parents=True, exist_ok=True)

    def add_photo(self, photo: Image.Image) -> Path:
        """Atomically: a half-written capture is never visible to the service."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{time.time_ns() % 1_000_000:06d}"
        final = self.film / f"capture-{stamp}.jpg"
        tmp = self.film / f".{final.name}.tmp"
        with open(tmp, "wb") as fh:
            photo.save(fh, format="JPEG", quality=95)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.film)
        return final


def file_id(path: Path) -> str:
    return sha256_file(path)[:32]


class Service:
    def __init__(self, data: Path, watch: Sequence[Path] = (), bundle=None, backend: str = "auto",
                 threads: Optional[int] = None, settle_s: float = 2.0):
        self.data = Path(data)
        self.spool = Spool(self.data)
        self.store = self.data / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.data / LEDGER)
        self._bundle_arg, self._backend, self._threads = bundle, backend, threads
        self.predictor = Predictor(bundle, backend, None, threads)
        self._bundle_real = os.path.realpath(self.predictor.bundle.path)
        self.sources: List[Tuple[Path, str]] = [(self.spool.film, "film"), (self.spool.files, "file")]
        self.sources += [(Path(w), "file") for w in watch]
        self.settle_s = settle_s
        self.done: Set[str] = {r["id"] for r in self.ledger.records() if "id" in r}
        self._ids: Dict[Tuple[str, int, int], str] = {}

    def pending(self) -> Iterator[Tuple[Path, str, str]]:
        now = time.time()
        for folder, mode in self.sources:
            if not folder.is_dir():
                continue
            files = [(p, p.stat()) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
            for p, st in sorted(files, key=lambda f: (f[1].st_mtime, f[0].name)):  # one stat per file per scan
                if now - st.st_mtime < self.settle_s:
                    continue  # a CR reader may still be writing it
                key = (str(p), st.st_size, st.st_mtime_ns)
                if key not in self._ids:
                    self._ids[key] = file_id(p)
                if self._ids[key] not in self.done:
                    yield p, mode, self._ids[key]

    def process(self, path: Path, mode: str, fid: str) -> Dict:
        dest = self.store / fid
        if dest.exists():
            shutil.rmtree(dest)  # left by an interrupted run: start this image again
        dest.mkdir(parents=True)
        original = dest / f"original{path.suffix.lower()}"
        shutil.copy2(path, original)
        heat = dest / "gradcam.jpg"
        try:
            if mode == "film":
                rec = triage_photo(self.predictor, original, dest, heat)
            else:
                rec = triage_file(self.predictor, original, heat)
        except Exception as exc:  # a bug on one image must not crash-loop the service on it
            rec = {"file": str(original), "mode": mode, "error": f"internal error ({type(exc).__name__}: {exc})",
                   "warnings": []}
        rec.update(id=fid, source=str(path), original=str(original), received_utc=time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), demonstration_only=self.predictor.bundle.demonstration_only,
            bundle_id=self.predictor.bundle.manifest.get("manifest_sha256", "")[:16])
        self.ledger.append(rec)
        self.done.add(fid)
        return rec

    def reload_if_switched(self) -> bool:
        """`device update` switches the bundle symlink atomically; pick the new one up between files.
        A bundle that does not load keeps the old one answering (and says so)."""
        real = os.path.realpath(self.predictor.bundle.path)
        if real == self._bundle_real:
            return False
        try:
            self.predictor = Predictor(self._bundle_arg, self._backend, None, self._threads)
        except Exception as exc:  # noqa: BLE001 - keep serving with the bundle that works
            print(f"warning: the switched bundle {real} does not load ({exc}); still using {self._bundle_real}",
                  file=sys.stderr)
            self._bundle_real = real  # do not retry on every scan; the next switch is tried again
            return False
        self._bundle_real = real
        print(f"bundle switched: now {real}", file=sys.stderr)
        return True

    def run_once(self) -> int:
        self.reload_if_switched()
        n = 0
        for path, mode, fid in list(self.pending()):
            if fid in self.done:
                continue  # the same bytes twice in one scan
            self.process(path, mode, fid)
            n += 1
        return n

    def run_forever(self, interval: float = 2.0) -> None:
        while True:
            self.run_once()
            time.sleep(interval)
