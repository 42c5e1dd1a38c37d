"""python -m benchmarks.fsfuzz: seeded, bounded file-system fuzzing of what reads folders on a device.

Each case builds a random tree (folders up to 9 deep, images, garbage, text, empty and hidden
files, links inside and out, to folders and to /dev/zero, dangling links, loops of 1-3 links,
FIFOs, sockets, sparse files under and over the size limit, unreadable files and folders, folders
that can be listed but not entered), runs a target on it, changes the tree while the target works
(swaps between its steps), and checks what the target promised. A target is one entry in TARGETS
(`register`); "service" is `device serve`'s Service, which promises:

- no crash and no hang (each case runs under an alarm);
- nothing from outside the watched folder in the store (every outside file is a canary image);
- every answer belongs to its id: the stored copy hashes to the id, and the probability is the
  model's answer for those bytes;
- every entry of the final tree has a record naming it, or its content was answered (an
  identical copy), or it sits in a folder the service says it cannot read or enter (a banner);
- with the watched folder itself made unenterable (0644) for a scan, a banner naming it;
- no duplicate answer, earlier records never change, an idle scan records nothing new, and the
  data folder stays small (nothing huge was copied);
- with the data folder made read-only mid-case, a banner and a wait, then the work resumes.

"update" is `device update` on a bundle folder or zip with hazards in and beside it (its
promises: UpdateTarget below).

Read-only and unreadable places need a user that permissions apply to. Run as root, the fuzzer
re-runs itself through setpriv as `nobody`, or, where `nobody` cannot run this Python (an
interpreter under /root, 0700), as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, for
whom file permissions apply as for any owner. Where neither works it says so and runs as root,
where those cases read fine: the result's "permissions_apply" is false and "note" says why (the
test suite reports that as a skip). --as-root keeps root on purpose.
`--idle N` measures instead what an idle scan costs with N processed files left in the folder.

    python -m benchmarks.fsfuzz --target service --cases 300 --seed 1 --out runs/fsfuzz   # docs/robustness.md
    python -m benchmarks.fsfuzz --target service --cases 40 --seed 7      # what the test suite runs
    python -m benchmarks.fsfuzz --idle 10000 --scans 20                  # CPU per idle scan
    python -m benchmarks.fsfuzz --target update --cases 1000 --seed 1 --out runs/fsfuzz-update   # docs/robustness.md
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from edge_runtime.labels import OUT_OF_SCOPE

from .report import save

REPO = Path(__file__).resolve().parent.parent
REPORT = "FSFUZZ-REPORT "  # the child's last line, when the fuzzer re-ran itself as another user
CASE_SECONDS = 120  # one case, whole: a hang is an escape, not a stuck CI job
MAX_DATA_BYTES = 64 * 2 ** 20  # the data folder after a case: images are small, huge files refused


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


# --- targets ---------------------------------------------------------------------------------

@dataclass
class CaseResult:
    """One case: what was built and swapped, and each broken promise (an escape) in words."""

    case: int
    kinds: Dict[str, int] = field(default_factory=dict)
    swaps: List[str] = field(default_factory=list)
    records: int = 0
    answered: int = 0
    refused: int = 0
    escapes: List[str] = field(default_factory=list)
    seconds: float = 0.0


class Target:
    """What a target does: `setup` once (load what all cases share), `case` per seeded case in
    its own folder, `close` at the end. A case returns its CaseResult; it must not raise."""

    name = "?"

    def setup(self, work: Path) -> None:
        pass

    def case(self, rng: np.random.Generator, folder: Path, k: int) -> CaseResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


TARGETS: Dict[str, Callable[[], Target]] = {}


def register(name: str):
    """Add a target: `@register("update") class UpdateTarget(Target): ...`."""
    def deco(cls):
        cls.name = name
        TARGETS[name] = cls
        return cls
    return deco


# --- what a case is made of --------------------------------------------------------------------

def _encode(seed: int, fmt: str) -> bytes:
    from PIL import Image

    from .fuzz import _radiograph
    img = Image.fromarray((_radiograph(120 + 4 * seed, 150, seed) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def answer_of(rec) -> Optional[float]:
    """What identifies an image's answer: its probability, or for an input the out-of-scope gate
    refused (the drawn images are not the radiographs the model was trained on) the gate's score.
    Both are continuous per image, so another image's answer still shows as a mismatch."""
    get = rec.get if isinstance(rec, dict) else (lambda k: getattr(rec, k, None))
    if get("probability") is not None:
        return float(get("probability"))
    scope = get("scope") or {}
    return float(scope["score"]) if get("decision") == OUT_OF_SCOPE and "score" in scope else None


class Pool:
    """Images every case draws from, and their answers: a known answer per content hash."""

    def __init__(self, predictor, n: int = 8):
        self.images = [_encode(k, "PNG" if k % 2 else "JPEG") for k in range(n)]
        self.fresh = _encode(50, "PNG")  # dropped while the data folder is read-only: new content
        self.secrets = [_encode(100 + k, "PNG") for k in range(2)]  # outside the folder: never copied
        self.answers: Dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="fsfuzz-pool-") as tmp:
            for k, data in enumerate(self.images + [self.fresh]):
                p = Path(tmp) / f"{k}.img"
                p.write_bytes(data)
                self.answers[_sha(data)] = answer_of(predictor.predict_file(p))


KINDS = ["image", "image", "image", "garbage", "text", "empty", "hidden", "truncated", "link_inside",
         "link_inside_dir", "link_outside", "link_outside_dir", "link_dev_zero", "dangling", "loop_self", "loop_pair",
         "loop_triple", "link_to_loop", "link_up", "fifo", "socket", "sparse", "sparse_huge", "unreadable_file",
         "unreadable_dir", "listonly_dir", "listonly_rw_dir", "readonly_dir"]
# Folder modes: no permission at all; r and x (a read-only share); r without x (0444) and rw without x
# (0644): listed, but nothing in them can be looked at or opened.
DIR_MODES = {"unreadable_dir": 0, "listonly_dir": 0o444, "listonly_rw_dir": 0o644, "readonly_dir": 0o555}
SWAPS = ["link_out", "fifo", "rewrite_in_place", "rename_over", "delete", "folder_to_link", "unreadable",
         "loop", "append"]
STEPS = ["scanned", "opened", "hashed", "copied", "answered"]


class Tree:
    """A random tree under `watch`, with its outside world (`outside`: canaries only)."""

    def __init__(self, rng: np.random.Generator, root: Path, pool: Pool):
        self.rng, self.pool = rng, pool
        self.watch, self.outside = root / "watch", root / "outside"
        self.watch.mkdir(parents=True)
        (self.outside / "dir").mkdir(parents=True)
        for k, data in enumerate(pool.secrets):
            (self.outside / f"secret{k}.png").write_bytes(data)
            (self.outside / "dir" / f"secret{k}.png").write_bytes(data)
        self.kinds: Dict[str, int] = {}
        self.dirs = [self.watch]
        self.files: List[Path] = []
        self.contents = set()  # the hash of every content this case put in the folder

    def _write(self, p: Path, data: bytes) -> None:
        p.write_bytes(data)
        self.contents.add(_sha(data))

    def _name(self, stem: str) -> str:
        return f"{stem}{len(self.files) + len(self.dirs)}{self.rng.choice(['.png', '.jpg', '.dcm', ''])}"

    def build(self) -> None:
        rng = self.rng
        for _ in range(int(rng.integers(1, 7))):
            parent = self.dirs[int(rng.integers(len(self.dirs)))]
            if len(parent.relative_to(self.watch).parts) < 9:
                d = parent / f"d{len(self.dirs)}"
                d.mkdir()
                self.dirs.append(d)
        if rng.random() < 0.5:  # a per-date tree deeper than the service reads
            d = self.watch.joinpath(*[f"deep{k}" for k in range(int(rng.integers(5, 10)))])
            d.mkdir(parents=True)
            self.dirs.append(d)
            self.add("image", d)
        for _ in range(int(rng.integers(4, 15))):
            self.add(str(rng.choice(KINDS)), self.dirs[int(rng.integers(len(self.dirs)))])
        for k, f in enumerate(self.files):  # the order the service takes them in: the build order, every run
            try:
                os.utime(f, (1_700_000_000 + k, 1_700_000_000 + k), follow_symlinks=False)
            except OSError:
                pass

    def add(self, kind: str, d: Path, image: Optional[bytes] = None) -> None:
        rng, p = self.rng, d / self._name(kind.split("_")[0])
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        image = image or self.pool.images[int(rng.integers(len(self.pool.images)))]
        if kind == "hidden":
            (d / f".{p.name}").write_bytes(image)
            return
        if kind.startswith(("link_", "loop_")) or kind == "dangling":
            self._add_link(kind, d, p, image)
        elif kind in ("fifo", "socket") or kind in DIR_MODES:
            self._add_special(kind, p, image)
        else:
            self._add_file(kind, p, image)
        self.files.append(p)

    def _add_file(self, kind: str, p: Path, image: bytes) -> None:
        rng = self.rng
        if kind == "image":
            self._write(p, image)
        elif kind == "garbage":
            self._write(p, rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
        elif kind == "text":  # an export's report, a note: not an image, whatever its name
            self._write(p, b"Patient list exported 2026-12-05\n" * int(rng.integers(1, 200)))
        elif kind == "empty":
            self._write(p, b"")
        elif kind == "truncated":
            self._write(p, image[:int(rng.integers(1, len(image)))])
        elif kind == "sparse_huge":
            with open(p, "wb") as fh:
                fh.truncate(int(rng.integers(257, 8192)) * 2 ** 20)  # 257 MB - 8 GB, no blocks
        elif kind == "sparse":  # under the size limit: an image's header, then holes
            with open(p, "wb") as fh:
                fh.write(image[:64])
                fh.truncate(int(rng.integers(2, 200)) * 2 ** 20)
        elif kind == "unreadable_file":
            self._write(p, image)
            p.chmod(0)

    def _add_link(self, kind: str, d: Path, p: Path, image: bytes) -> None:
        rng = self.rng
        if kind == "link_inside":
            target = next((f for f in self.files if f.is_file() and not f.is_symlink()), None)
            if target is None:
                self._write(p, image)
            else:
                p.symlink_to(os.path.relpath(target, d))
        elif kind == "link_inside_dir":
            p.symlink_to(self.dirs[int(rng.integers(len(self.dirs)))])
        elif kind == "link_outside":
            p.symlink_to(self.outside / "secret0.png")
        elif kind == "link_outside_dir":
            p.symlink_to(self.outside / "dir")
        elif kind == "link_dev_zero":
            p.symlink_to(str(rng.choice(["/dev/zero", "/dev/urandom", "/proc/self/mem"])))
        elif kind == "dangling":
            p.symlink_to(d / "nothing-here")
        elif kind == "loop_self":
            p.symlink_to(p.name)
        elif kind == "loop_pair":
            q = d / f"{p.name}-b"
            p.symlink_to(q.name)
            q.symlink_to(p.name)
            self.files.append(q)
        elif kind == "loop_triple":
            q, r = d / f"{p.name}-b", d / f"{p.name}-c"
            p.symlink_to(q.name)
            q.symlink_to(r.name)
            r.symlink_to(p.name)
            self.files += [q, r]
        elif kind == "link_to_loop":
            loop = self.outside / f"loop{len(self.files)}"
            loop.symlink_to(loop.name)
            p.symlink_to(loop)
        elif kind == "link_up":
            p.symlink_to("..")

    def _add_special(self, kind: str, p: Path, image: bytes) -> None:
        if kind == "fifo":
            os.mkfifo(p)
        elif kind == "socket":
            _socket_or_fifo(p)
        else:  # a folder with an image in it, at one of DIR_MODES (readonly_dir: read as any other)
            p.mkdir()
            self._write(p / "inside.png", image)
            p.chmod(DIR_MODES[kind])

    def swap(self, how: str, path: Path) -> str:
        """Change the file the target is working on (or the folder above it), as a careless or
        hostile share would between two of the target's steps. "" when it cannot be done (the
        file is gone or no longer a file: an earlier swap)."""
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return ""
            return self._swap(how, path)
        except OSError:
            return ""

    def _swap(self, how: str, path: Path) -> str:
        rng = self.rng
        other = self.pool.images[int(rng.integers(len(self.pool.images)))]
        if how == "link_out":
            path.unlink()
            path.symlink_to(self.outside / "secret1.png")
        elif how == "fifo":
            path.unlink()
            os.mkfifo(path)
        elif how == "rewrite_in_place":
            with open(path, "r+b") as fh:
                fh.truncate(0)
                fh.write(other)
            self.contents.add(_sha(other))
        elif how == "rename_over":
            tmp = path.with_name(".swap")
            tmp.write_bytes(other)
            os.replace(tmp, path)
            self.contents.add(_sha(other))
        elif how == "delete":
            path.unlink()
        elif how == "folder_to_link" and path.parent != self.watch:
            moved = self.watch.parent / f"moved{len(self.files)}"  # not a canary: it was inside
            path.parent.rename(moved)
            path.parent.symlink_to(self.outside / "dir")
        elif how == "unreadable":
            path.chmod(0)
        elif how == "loop":
            path.unlink()
            path.symlink_to(path.name)
        elif how == "append":
            with open(path, "ab") as fh:
                fh.write(b"\0" * 100)
            self.contents.add(_sha(path.read_bytes()))
        else:
            return ""
        return how


# --- the service -------------------------------------------------------------------------------

class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def _walk(watch: Path):
    """(path, lstat, depth) of every entry the service should account for, and the folders it
    cannot read or enter; dot-names skipped, no link followed."""
    out, unreadable = [], []
    stack = [(watch, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            unreadable.append(d)
            continue
        denied = False
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                st = os.lstat(e.path)
            except FileNotFoundError:
                continue
            except OSError:  # listed, not enterable (r without x): the folder needs a banner
                denied = True
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(e.path), depth + 1))
            else:
                out.append((Path(e.path), st, depth))
        if denied:
            unreadable.append(d)
    return out, unreadable


def _content(path: Path) -> Optional[bytes]:
    """The bytes the service would read for this entry (a link inside followed), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 256 * 2 ** 20:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


@register("service")
class ServiceTarget(Target):
    """`device serve`'s Service on a random tree, in process (the model loaded once for all
    cases: the same reader code, answering in this process), with swaps between its steps."""

    def setup(self, work: Path) -> None:
        from edge_runtime.bundle import REPO_BUNDLE
        from edge_runtime.predictor import Predictor
        self.bundle = REPO_BUNDLE
        self.predictor = Predictor(REPO_BUNDLE)
        self.pool = Pool(self.predictor)
        self.answers = dict(self.pool.answers)  # content hash -> the model's answer
        self.can_deny = permissions_apply()  # read-only and unreadable places are real for this user

    def _service(self, data: Path, watch: Path):
        from device.service import InProcessReader, Service

        predictor = self.predictor

        class Fuzzed(Service):
            def _load(self):  # the model of every case is the one loaded in setup
                self.predictor, self.bundle = predictor, predictor.bundle
                self.reader = InProcessReader(predictor)
                self._bundle_real = str(self.bundle.root)
        return Fuzzed(data, [watch], self.bundle, settle_s=0)

    def case(self, rng: np.random.Generator, folder: Path, k: int) -> CaseResult:
        from edge_runtime.cli import printable
        res = CaseResult(k)
        tree = Tree(rng, folder, self.pool)
        tree.build()
        res.kinds = dict(tree.kinds)
        data = folder / "data"
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(CASE_SECONDS)
        service = None
        try:
            service = self._service(data, tree.watch)
            self._rounds(service, tree, res, rng, data, printable)
            service.between = None
            for _ in range(3):  # let the swapped files settle, then an idle scan must record nothing
                if service.run_once() == 0:
                    break
            n = len(service.ledger.records())
            service.run_once()
            if len(service.ledger.records()) != n:
                res.escapes.append("an idle scan recorded something")
            self._check(service, tree, res, printable)
        except _Alarm:
            res.escapes.append(f"hang: the case took over {CASE_SECONDS} s")
        except Exception as exc:  # noqa: BLE001 - a crash is what we count
            import traceback
            res.escapes.append(f"crash: {type(exc).__name__}: {exc} | " + traceback.format_exc(limit=-3)
                               .replace("\n", " ")[:600])
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            if service is not None:
                service.close()
        du = sum(f.stat().st_blocks * 512 for f in data.rglob("*") if f.is_file() and not f.is_symlink()) \
            if data.exists() else 0
        if du > MAX_DATA_BYTES:
            res.escapes.append(f"the data folder holds {du / 2 ** 20:.0f} MB after the case")
        return res

    def _rounds(self, service, tree: Tree, res: CaseResult, rng: np.random.Generator, data: Path,
                printable) -> None:
        """Three scans, with files changed between the service's steps, and in some cases the
        watched folder unenterable or the data folder read-only for a scan; the log only grows."""
        budget = {"swaps": int(rng.integers(0, 4))}

        def between(step: str, path: Path) -> None:
            if budget["swaps"] <= 0 or rng.random() > 0.3:
                return
            how = tree.swap(str(rng.choice(SWAPS)), path)
            if how:
                budget["swaps"] -= 1
                res.swaps.append(f"{how}@{step}")
        service.between = between
        ro_at = int(rng.integers(0, 3)) if self.can_deny and rng.random() < 0.4 else -1
        shut_at = int(rng.integers(0, 3)) if self.can_deny and rng.random() < 0.25 else -1
        log_before = b""
        for r in range(3):
            if r == shut_at:  # the watched folder itself: listed, not enterable (0644), for one scan
                self._shut_root(service, tree, res, printable)
            if r == ro_at:
                self._read_only_scan(service, tree, res, rng, data)
            service.between = between
            service.run_once()
            log = (data / "results.jsonl").read_bytes() if (data / "results.jsonl").exists() else b""
            if not log.startswith(log_before):
                res.escapes.append("an earlier record changed or was lost")
            log_before = log

    def _read_only_scan(self, service, tree: Tree, res: CaseResult, rng: np.random.Generator, data: Path) -> None:
        """The data folder (or its store) read-only for a scan, a new image meanwhile: it waits."""
        place = data if rng.random() < 0.5 else data / "store"
        place.chmod(0o500)
        tree.add("image", tree.watch, self.pool.fresh)
        service.between = None  # nothing else changes meanwhile: the new image must wait
        try:
            got = service.run_once()
        finally:
            place.chmod(0o700)
        if got != 0 or "data" not in service.status:
            res.escapes.append(f"read-only {place.name}: run_once gave {got}, status {service.status}")
        res.swaps.append(f"read_only:{place.name}")

    @staticmethod
    def _shut_root(service, tree: Tree, res: CaseResult, printable) -> None:
        mode = stat.S_IMODE(os.stat(tree.watch).st_mode)
        service.between = None
        n = len(service.ledger.records())
        tree.watch.chmod(0o644)
        try:
            service.run_once()
        finally:
            tree.watch.chmod(mode)
        banners = " ".join(service.status.values())
        if printable(str(tree.watch)) not in banners:
            res.escapes.append(f"the watched folder at 0644 gave no banner naming it: {service.status}")
        if len(service.ledger.records()) != n:
            res.escapes.append("the watched folder at 0644: something was recorded")
        res.swaps.append("watched_root:0644")

    def _check(self, service, tree: Tree, res: CaseResult, printable) -> None:
        recs = service.ledger.records()
        res.records = len(recs)
        # answered: a probability, or the out-of-scope gate's refusal (the fuzzer's drawn images are
        # not radiographs the model was trained on); either way the file was read and stored
        answered = [r for r in recs if answer_of(r) is not None]
        res.answered, res.refused = len(answered), len(recs) - len(answered)
        for f in service.store.rglob("original*"):
            if f.read_bytes() in self.pool.secrets:
                res.escapes.append(f"a file from outside the watched folder was copied: {f}")
        ids = [r["id"] for r in answered]
        if len(ids) != len(set(ids)):
            res.escapes.append("the same content was answered twice")
        for r in answered:
            stored = Path(r["original"]).read_bytes() if Path(r["original"]).is_file() else b""
            if _sha(stored) != r["id"]:
                res.escapes.append(f"record {r['id']} ({r['source']}): the stored copy is not its bytes")
                continue
            if r["id"] not in tree.contents:
                res.escapes.append(f"record {r['id']} ({r['source']}): an answer for bytes never in the folder")
                continue
            if r["id"] not in self.answers:  # a truncated image that still decodes: ask the model
                self.answers[r["id"]] = answer_of(self.predictor.predict_file(Path(r["original"])))
            if self.answers[r["id"]] is None or abs(self.answers[r["id"]] - answer_of(r)) > 1e-6:
                res.escapes.append(f"record {r['id']} ({r['source']}): another image's answer")
        by_source = {r.get("source") for r in recs}
        known = {r.get("id") for r in recs}
        entries, unreadable = _walk(tree.watch)
        banners = " ".join(service.status.values())
        for d in unreadable:
            if printable(str(d)) not in banners:
                res.escapes.append(f"an unreadable folder without a banner: {d}")
        for path, st, depth in entries:
            if printable(str(path)) in by_source:
                continue
            content = _content(path) if depth <= 4 else None
            if content is not None and _sha(content) in known:
                continue  # the same content was recorded under another name (or this one, earlier)
            if stat.S_ISLNK(st.st_mode) and os.path.isdir(path) and \
                    os.path.commonpath([os.path.realpath(path), os.path.realpath(tree.watch)]) \
                    == os.path.realpath(tree.watch):
                continue  # a link to a folder inside: its files are read where they are
            res.escapes.append(f"no record and no answer for {path.relative_to(tree.watch)} "
                               f"({stat.filemode(st.st_mode)}, {st.st_size} B, {depth} deep)")


# --- device update ---------------------------------------------------------------------------------

UPDATE_LISTED = ["link_out", "link_dev_zero", "fifo", "socket", "hardlink", "folder", "sparse_huge", "missing",
                 "damaged"]  # a file the manifest lists made into this: the update must be refused
UPDATE_UNLISTED = ["link_dev_zero", "link_out", "link_out_dir", "loop_self", "loop_pair", "link_up", "fifo",
                   "socket", "sparse_huge", "folder", "file", "hidden"]  # beside the listed files: never copied
UPDATE_ZIP_FATAL = ["encrypted", "deflate64", "bzip2", "member_symlink", "bomb", "unlisted_bomb", "many",
                    "traversal", "absolute", "duplicate", "two_manifests", "corrupt", "lying_size"]
UPDATE_ZIP_BENIGN = ["unlisted_symlink", "unlisted_file", "unlisted_nested", "top_level", "dir_entries"]


def _zip_patch(path: Path, name: str, flag: int = 0, method: Optional[int] = None,
               size: Optional[int] = None) -> None:
    """Set a member's flag bits, method or declared size in both its headers: what other zip tools
    write (7-Zip's encrypted or Deflate64 members) or a forger would, which zipfile cannot."""
    import struct
    data = bytearray(path.read_bytes())
    raw = name.encode()
    for sig, flag_at, name_at, size_at in ((b"PK\x03\x04", 6, 30, 22), (b"PK\x01\x02", 8, 46, 24)):
        at = data.find(sig)
        while at >= 0:
            if data[at + name_at:at + name_at + len(raw)] == raw:
                struct.pack_into("<H", data, at + flag_at, struct.unpack_from("<H", data, at + flag_at)[0] | flag)
                if method is not None:
                    struct.pack_into("<H", data, at + flag_at + 2, method)
                if size is not None:
                    struct.pack_into("<L", data, at + size_at, size)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


def bundle_variant(dest: Path, threshold: float) -> Path:
    """The reference bundle with another threshold: a valid, unsigned bundle with its own digest
    (what an update installs; the tests of `device update` use it too)."""
    from edge_runtime.bundle import REPO_BUNDLE, seal

    shutil.copytree(REPO_BUNDLE, dest)
    (dest / "signature.json").unlink(missing_ok=True)
    m = json.loads((dest / "manifest.json").read_text())
    m["decision"]["threshold"] = threshold
    (dest / "manifest.json").write_text(json.dumps(seal(m), indent=2))
    return dest


def _socket_or_fifo(path: Path) -> None:
    """A UNIX socket at `path` (a FIFO where the name is too long for one)."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
    except OSError:
        os.mkfifo(path)
    finally:
        s.close()


@register("update")
class UpdateTarget(Target):
    """`device update` from a bundle folder or zip carrying 1-4 random hazards (links out, to
    /dev/zero and in loops, FIFOs, sockets, hard links, sparse giants, files the manifest does not
    list; zips with an encrypted, Deflate64 or bzip2 member, bombs, too many members, traversal,
    lying sizes). Promises: a hazard to a listed file or a hostile zip (any member encrypted,
    of another method, a bomb, a path out) is refused with an UpdateError naming the source;
    anything else (links, FIFOs, stray files beside the listed ones) installs exactly the listed
    files; no crash or hang; no staging left; nothing
    from outside (canaries) under the install root, which stays small; the current bundle always
    loads. The self-test is skipped (it checks the model's answers, not the files)."""

    def setup(self, work: Path) -> None:
        from device.update import install
        self.root = work / "opt"
        self.outside = work / "outside"
        self.outside.mkdir()
        self.canary = b"canary: outside the bundle " + os.urandom(8).hex().encode()
        (self.outside / "secret.md").write_bytes(self.canary)
        (self.outside / "dir").mkdir()
        (self.outside / "dir" / "report.md").write_bytes(self.canary)
        install(self._bundle(work / "first", 0.41), self.root, self_test=False)

    @staticmethod
    def _bundle(dest: Path, threshold: float) -> Path:
        return bundle_variant(dest, threshold)

    def _listed(self, how: str, victim: Path, rng: np.random.Generator) -> None:
        if victim.is_symlink() or victim.is_file() or stat.S_ISFIFO(os.lstat(victim).st_mode) \
                if os.path.lexists(victim) else False:
            victim.unlink()
        elif os.path.lexists(victim):  # a folder from an earlier hazard stays one
            return
        if how == "link_out":
            victim.symlink_to(self.outside / "secret.md")
        elif how == "link_dev_zero":
            victim.symlink_to(str(rng.choice(["/dev/zero", "/dev/urandom", "/proc/self/mem"])))
        elif how == "fifo":
            os.mkfifo(victim)
        elif how == "socket":
            _socket_or_fifo(victim)
        elif how == "hardlink":
            os.link(self.outside / "secret.md", victim)
        elif how == "folder":
            victim.mkdir()
        elif how == "sparse_huge":
            with open(victim, "wb") as fh:
                fh.truncate(int(rng.integers(513, 8192)) * 2 ** 20)
        elif how == "damaged":
            victim.write_bytes(self.canary)

    def _unlisted(self, how: str, p: Path) -> None:
        if how == "link_dev_zero":
            p.symlink_to("/dev/zero")
        elif how == "link_out":
            p.symlink_to(self.outside / "secret.md")
        elif how == "link_out_dir":
            p.symlink_to(self.outside / "dir")
        elif how == "loop_self":
            p.symlink_to(p.name)
        elif how == "loop_pair":
            p.symlink_to(".")
            p.with_name(p.name + "-b").symlink_to(".")
        elif how == "link_up":
            p.symlink_to("..")
        elif how == "fifo":
            os.mkfifo(p)
        elif how == "socket":
            _socket_or_fifo(p)
        elif how == "sparse_huge":
            with open(p, "wb") as fh:
                fh.truncate(8 * 2 ** 30)
        elif how == "folder":
            p.mkdir()
            (p / "report.md").write_bytes(self.canary)
        elif how == "hidden":
            p.with_name("." + p.name).write_bytes(self.canary)
        else:
            p.write_bytes(self.canary)

    def _zip(self, src: Path, hazards: List[str], rng: np.random.Generator, listed: List[str]) -> Path:
        import zipfile
        path = src.parent / "bundle.zip"
        prefix = "" if "top_level" in hazards else "bundle/"
        extra: List[tuple] = []  # (name or ZipInfo, data, compress_type)
        for h in hazards:
            victim = str(rng.choice(listed))
            if h == "member_symlink":
                (src / victim).unlink(missing_ok=True)
                info = zipfile.ZipInfo(prefix + victim)
                info.external_attr = 0o120777 << 16
                extra.append((info, str(self.outside / "secret.md")))
            elif h == "bomb":
                (src / victim).unlink(missing_ok=True)
                (src / victim).write_bytes(b"\0" * int(rng.integers(2, 40)) * 2 ** 20)
            elif h == "many":
                extra += [(f"{prefix}junk{i}", b"") for i in range(int(rng.integers(60, 3000)))]
            elif h == "traversal":
                extra.append((str(rng.choice(["../../escaped.md", f"{prefix}../../escaped.md", "..\\escaped.md"])),
                              self.canary))
            elif h == "absolute":
                extra.append((str(rng.choice(["/tmp/escaped.md", "C:/escaped.md"])), self.canary))
            elif h == "duplicate":
                extra.append((prefix + victim, self.canary))
            elif h == "two_manifests":
                extra.append(("other/manifest.json", (src / "manifest.json").read_bytes()))
            elif h == "unlisted_symlink":
                info = zipfile.ZipInfo(prefix + "notes.txt")
                info.external_attr = 0o120777 << 16
                extra.append((info, "/dev/zero"))
            elif h == "unlisted_bomb":
                info = zipfile.ZipInfo(prefix + "zeros.bin")
                info.compress_type = zipfile.ZIP_DEFLATED
                extra.append((info, b"\0" * 30 * 2 ** 20))
            elif h == "unlisted_file":
                extra.append((prefix + "README.md", self.canary))
            elif h == "unlisted_nested":
                extra.append((prefix + "docs/report.md", self.canary))
            elif h == "dir_entries":
                extra.append((zipfile.ZipInfo(prefix + "docs/"), b""))
        import warnings
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            warnings.simplefilter("ignore")  # a duplicate name is the point of one hazard
            for f in sorted(src.iterdir()):
                if f.is_file() and not f.is_symlink():
                    zf.write(f, prefix + f.name)
            for info, data in extra:
                zf.writestr(info, data)
        members = [prefix + n for n in listed]
        for h in hazards:
            name = str(rng.choice(members))
            if h in ("encrypted", "deflate64", "bzip2") and "unlisted_file" in hazards and rng.random() < 0.5:
                name = prefix + "README.md"  # not unpacked, yet the zip is refused whole
            if h == "encrypted":
                _zip_patch(path, name, flag=1)
            elif h in ("deflate64", "bzip2"):
                _zip_patch(path, name, method=9 if h == "deflate64" else 12)
            elif h == "lying_size":  # declares a small size, inflates to more: cut at what it declared
                _zip_patch(path, name, size=int(rng.integers(1, 64)))
            elif h == "corrupt":
                data = bytearray(path.read_bytes())
                at = int(rng.integers(len(data) // 4, len(data) // 2))
                data[at:at + 64] = bytes(64)
                path.write_bytes(bytes(data))
        return path

    def case(self, rng: np.random.Generator, folder: Path, k: int) -> CaseResult:
        from device.update import CURRENT, STORE, UpdateError, install
        from edge_runtime.bundle import BundleError, load_bundle

        res = CaseResult(k)
        folder.mkdir(parents=True)
        src = self._bundle(folder / "bundle", round(float(rng.uniform(0.2, 0.8)), 5))
        listed = sorted(json.loads((src / "manifest.json").read_text())["files"])
        as_zip = rng.random() < 0.45
        kinds = ([f"zip:{h}" for h in UPDATE_ZIP_FATAL + UPDATE_ZIP_BENIGN] + ["listed:damaged", "listed:missing"]
                 if as_zip else [f"listed:{h}" for h in UPDATE_LISTED] + [f"unlisted:{h}" for h in UPDATE_UNLISTED])
        hazards = [str(h) for h in rng.choice(kinds, size=int(rng.integers(1, 5)), replace=False)]
        for i, h in enumerate(hazards):
            res.kinds[h] = res.kinds.get(h, 0) + 1
            where, how = h.split(":")
            if where == "listed":
                self._listed(how, src / str(rng.choice(listed)), rng)
            elif where == "unlisted":
                self._unlisted(how, src / f"extra{i}-{how}")
        fatal = any(h.startswith("listed:") or h[4:] in UPDATE_ZIP_FATAL for h in hazards)
        given = self._zip(src, [h[4:] for h in hazards if h.startswith("zip:")], rng, listed) if as_zip else src
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(CASE_SECONDS)
        try:
            try:
                out = install(given, self.root, self_test=False, allow_older=True)
                res.answered = 1
                if fatal:
                    res.escapes.append(f"installed despite {hazards}")
                stored = {p.name for p in (self.root / CURRENT).iterdir()}
                if out["switched"] and stored != {"manifest.json", *listed}:
                    res.escapes.append(f"{hazards}: the store holds {sorted(stored)}, not the listed files")
            except UpdateError as exc:
                res.refused = 1
                if not fatal:
                    res.escapes.append(f"refused although harmless ({hazards}): {exc}")
                elif str(given) not in str(exc) or ".incoming-" in str(exc):
                    res.escapes.append(f"{hazards}: the refusal does not name the source: {exc}")
            res.records = 1
            leftovers = [p.name for p in (self.root / STORE).iterdir() if p.name.startswith(".")]
            if leftovers:
                res.escapes.append(f"{hazards}: staging left behind: {leftovers}")
            size = 0
            for p in self.root.rglob("*"):
                if p.is_symlink() or not p.is_file():
                    continue
                size += p.stat().st_size
                if p.stat().st_size == len(self.canary) and p.read_bytes() == self.canary:
                    res.escapes.append(f"{hazards}: a file from outside the bundle was copied: {p}")
            if size > MAX_DATA_BYTES:
                res.escapes.append(f"{hazards}: the install root holds {size / 2 ** 20:.0f} MB")
            try:
                load_bundle(self.root / CURRENT)
            except BundleError as exc:
                res.escapes.append(f"{hazards}: the current bundle no longer loads: {exc}")
        except _Alarm:
            res.escapes.append(f"hang: {hazards} took over {CASE_SECONDS} s")
        except Exception as exc:  # noqa: BLE001 - a crash is what we count
            res.escapes.append(f"crash on {hazards}: {type(exc).__name__}: {exc}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        return res


# --- running -----------------------------------------------------------------------------------

def _unlock(root: Path) -> None:
    """Give back every permission a case took away, so that the tree can be removed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):  # folders that were unreadable
        for name in dirnames:
            try:
                os.chmod(os.path.join(dirpath, name), 0o700)
            except OSError:
                pass


def fuzz(target: str = "service", cases: int = 50, seed: int = 0, seconds: Optional[float] = None,
         only: Optional[int] = None, progress: bool = False) -> Dict:
    t0 = time.time()
    tgt = TARGETS[target]()
    results: List[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="fsfuzz-") as tmp:
        work = Path(tmp)
        tgt.setup(work)
        try:
            for k in ([only] if only is not None else range(cases)):
                if seconds is not None and time.time() - t0 > seconds:
                    break
                folder = work / f"case{k}"
                c0 = time.time()
                r = tgt.case(np.random.default_rng([seed, k]), folder, k)
                r.seconds = round(time.time() - c0, 2)
                results.append(r)
                _unlock(folder)
                shutil.rmtree(folder, ignore_errors=True)
                if progress:
                    print(f"\rcase {k}: {len(r.escapes)} escape(s)", end="", file=sys.stderr, flush=True)
        finally:
            tgt.close()
            _unlock(work)
    kinds: Dict[str, int] = {}
    swaps: Dict[str, int] = {}
    for r in results:
        for kd, n in r.kinds.items():
            kinds[kd] = kinds.get(kd, 0) + n
        for s in r.swaps:
            swaps[s] = swaps.get(s, 0) + 1
    escapes = [f"case {r.case} (--seed {seed} --only {r.case}): {e}" for r in results for e in r.escapes]
    return {"target": target, "seed": seed, "cases": len(results), "user": _user(),
            "permissions_apply": permissions_apply(), "note": "",
            "seconds": round(time.time() - t0, 1), "records": sum(r.records for r in results),
            "answered": sum(r.answered for r in results), "refused": sum(r.refused for r in results),
            "kinds": dict(sorted(kinds.items())), "swaps": dict(sorted(swaps.items())),
            "escapes": escapes, "slowest_case_s": max((r.seconds for r in results), default=0.0)}


def _user() -> str:
    import pwd
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    if os.geteuid() == 0 and permissions_apply():
        name += " without CAP_DAC_OVERRIDE"
    return name


def permissions_apply() -> bool:
    """Whether file permissions bind this process: a file it made with mode 0 cannot be opened
    (false for root with its usual capabilities: unreadable places then read fine)."""
    fd, probe = tempfile.mkstemp(prefix="fsfuzz-perm-")
    os.close(fd)
    try:
        os.chmod(probe, 0)
        try:
            os.close(os.open(probe, os.O_RDONLY))
        except PermissionError:
            return True
        return False
    finally:
        os.unlink(probe)


def markdown(res: Dict) -> str:
    lines = [f"**{res['cases']} cases ({res['target']}, seed {res['seed']}, as {res['user']}, {res['seconds']} s): "
             f"{len(res['escapes'])} escapes.** {res['records']} records: {res['answered']} answers, "
             f"{res['refused']} refusals or errors; slowest case {res['slowest_case_s']} s.", ""]
    if not res.get("permissions_apply", True):
        lines += [f"Not covered: file permissions did not apply ({res.get('note') or 'run as root'}), so unreadable, "
                  "unenterable and read-only places read fine in this run.", ""]
    lines += ["| entry kind | made |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in res["kinds"].items()]
    found = {k.split("@", 1)[1] for k in res["swaps"] if "@" in k}
    steps = [st for st in STEPS if st in found] + sorted(found - set(STEPS))
    whats = sorted({k.split("@")[0] for k in res["swaps"] if "@" in k})
    if whats:
        lines += ["", "| changed during a batch, between the target's steps | " + " | ".join(steps) + " |",
                  "|---|" + "---:|" * len(steps)]
        lines += [f"| {w} | " + " | ".join(str(res["swaps"].get(f"{w}@{st}", 0)) for st in steps) + " |"
                  for w in whats]
    other = {k: n for k, n in res["swaps"].items() if "@" not in k}
    if other:
        lines += ["", "Other changes: " + ", ".join(f"{k} {n}" for k, n in other.items()) + "."]
    if res["escapes"]:
        lines += ["", "Escapes:"] + [f"- {e}" for e in res["escapes"][:50]]
    return "\n".join(lines) + "\n"


# --- idle cost -----------------------------------------------------------------------------------

def idle(files: int = 10_000, scans: int = 20) -> Dict:
    """CPU seconds and index connections per scan when `files` processed files stay in the
    watched folder and nothing new arrives (the service's public API only, so the same function
    measures an older version of the service)."""
    import sqlite3

    from device.service import Ledger, Service
    from edge_runtime.bundle import REPO_BUNDLE
    from edge_runtime.cli import printable
    with tempfile.TemporaryDirectory(prefix="fsfuzz-idle-") as tmp:
        data, watch = Path(tmp) / "data", Path(tmp) / "cr"
        rng = np.random.default_rng(0)
        data.mkdir(parents=True)
        with open(data / "results.jsonl", "w") as log:  # processed before: one record each, as the service writes
            for k in range(files):
                d = watch / f"2026-{k % 12 + 1:02d}"
                d.mkdir(parents=True, exist_ok=True)
                p = d / f"IMG_{k:06d}.dcm"
                body = b"\x08\x00\x05\x00" + rng.integers(0, 256, 4092, dtype=np.uint8).tobytes()  # raw DICOM's start
                p.write_bytes(body)
                log.write(json.dumps({"id": _sha(body), "source": printable(str(p)), "probability": 0.1}) + "\n")
        Ledger(data / "results.jsonl")  # indexed, as years of results are
        service = Service(data, [watch], REPO_BUNDLE, settle_s=0)
        c0 = time.process_time()
        first = service.run_once()
        first_s = time.process_time() - c0
        connects = []
        real = sqlite3.connect
        sqlite3.connect = lambda *a, **k: connects.append(1) or real(*a, **k)
        try:
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(scans):
                service.run_once()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        finally:
            sqlite3.connect = real
        service.close()
    return {"files": files, "scans": scans, "new_in_first_scan": first, "first_scan_cpu_s": round(first_s, 2),
            "cpu_s_per_idle_scan": round(cpu / scans, 4), "wall_s_per_idle_scan": round(wall / scans, 4),
            "index_connections_per_idle_scan": len(connects) / scans,
            "core_share_at_2s_interval": round(cpu / scans / (2.0 + wall / scans), 3)}


# --- command line --------------------------------------------------------------------------------

# How root re-runs the fuzzer so that permissions apply, in order: as nobody; else (nobody cannot
# run this Python, e.g. one under /root, 0700) as root without the two capabilities that let root
# read and enter anything, so that permissions apply to it as to any owner.
UNPRIVILEGED = (
    ("nobody", ["--reuid=65534", "--regid=65534", "--clear-groups"]),
    ("root without CAP_DAC_OVERRIDE", ["--inh-caps=-dac_override,-dac_read_search",
                                       "--bounding-set=-dac_override,-dac_read_search"]),
)


def _unprivileged(argv: List[str]) -> Tuple[Optional[int], str]:
    """Run as root: run again where permissions apply (UNPRIVILEGED). (exit code, "") from the
    first way that works, or (None, why none did): then the caller fuzzes as root and says so."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return None, ""
    if setpriv is None:
        return None, "setpriv is not installed"
    tried = []
    for who, opts in UNPRIVILEGED:
        proc = subprocess.run([setpriv, *opts, "--", sys.executable, "-m", "benchmarks.fsfuzz", *argv, "--child"],
                              cwd=str(REPO), stdout=subprocess.PIPE, text=True)
        report = None
        for line in proc.stdout.splitlines():
            if line.startswith(REPORT):
                report = json.loads(line[len(REPORT):])
            else:
                print(line)
        if report is not None and report.get("permissions_apply"):
            report["note"] = "; ".join(tried)
            return _finish(report, argv), ""
        tried.append(f"as {who}: " + ("permissions did not apply" if report is not None
                                      else f"it could not run (exit {proc.returncode})"))
    return None, "; ".join(tried)


def _finish(result: Dict, argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    text = markdown(result)
    save(result, text, args.out, "fsfuzz")
    print(json.dumps(result, indent=2) if args.json else text)
    return 0 if not result["escapes"] else 1


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fsfuzz", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--target", default="service", choices=sorted(TARGETS), help="what is fuzzed (default: %(default)s)")
    ap.add_argument("--cases", type=int, default=50, help="random trees, one case each (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the same seed makes the same trees and swaps (default: %(default)s)")
    ap.add_argument("--only", type=int, help="run only this case number (to replay an escape)")
    ap.add_argument("--seconds", type=float, help="start no new case after this long")
    ap.add_argument("--out", type=Path, help="write fsfuzz.json and fsfuzz.md here")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--as-root", action="store_true", help="run as root even so (unreadable places then read fine)")
    ap.add_argument("--idle", type=int, metavar="N", help="instead: the cost of an idle scan with N processed files")
    ap.add_argument("--scans", type=int, default=20, help="with --idle: scans measured (default: %(default)s)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.idle:
        result = idle(args.idle, args.scans)
        print(json.dumps(result, indent=2))
        return 0
    why = ""
    if not args.child and not args.as_root:
        code, why = _unprivileged(argv)
        if code is not None:
            return code
        if why:
            print(f"note: the fuzzer could not re-run itself where permissions apply ({why}): fuzzing as root, "
                  "where unreadable, unenterable and read-only places read fine; those cases prove nothing here",
                  file=sys.stderr)
    result = fuzz(args.target, args.cases, args.seed, args.seconds, args.only, progress=sys.stderr.isatty())
    if why:
        result["note"] = why
    if args.child:
        print(REPORT + json.dumps(result), flush=True)
        return 0
    return _finish(result, [a for a in argv if a != "--child"])


if __name__ == "__main__":
    sys.exit(main())
