"""What a run folder records before training starts, so an interrupted run can be resumed safely.

`run.json` is written when the run starts, with `"status": "running"`, the command's arguments
and three checksums: the training code (train/, fracdata/, edge_runtime/), the data (each image's
path, label, boxes and sha256) and the split file. At the end it is replaced by the full record,
which keeps the checksums and says `"status": "complete"`.

`python -m train --resume RUN` re-runs the recorded command into RUN; the same command with the
same `--out` does the same (that is how a restarted multi-worker job picks up). Either is refused
when the code or the data differ from the recorded ones: weights trained half by one code and
half by another are nobody's model.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fracdata.data import Record
from fracdata.provenance import sha256_file

CODE_PACKAGES = ("train", "fracdata", "edge_runtime")
RUN_JSON = "run.json"


class ResumeError(ValueError):
    """The run folder cannot be continued; the message says why."""


def code_digest(root: Optional[Path] = None) -> str:
    """sha256 over the training code's Python files (path and bytes, in a fixed order)."""
    root = root or Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def file_hashes(records: Sequence[Record], workers: int = 8) -> Dict[str, str]:
    """path -> sha256 of each record's file (read in parallel; a missing file hashes as '')."""
    def one(r: Record) -> str:
        try:
            return sha256_file(r.path)
        except OSError:
            return ""

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {str(r.path): h for r, h in zip(records, pool.map(one, records))}


def data_digest(records: Sequence[Record], hashes: Dict[str, str], root: Path) -> str:
    """sha256 over what training reads of each image: where it is (relative to the data's root),
    its label and boxes, and its bytes."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: str(r.path)):
        try:
            where = str(Path(r.path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            where = str(r.path)
        h.update(json.dumps([where, r.label, r.boxes, r.source, hashes.get(str(r.path), "")]).encode())
    return h.hexdigest()


def checksums(records: Sequence[Record], root: Path, hashes: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    hashes = hashes if hashes is not None else file_hashes(records)
    return {"code": code_digest(), "data": data_digest(records, hashes, root)}


def start_record(argv: List[str], sums: Dict[str, str], models: Sequence[str]) -> Dict:
    return {"status": "running", "argv": list(argv), "models": list(models), "checksums": sums}


def read_record(run_dir: Path) -> Dict:
    path = Path(run_dir) / RUN_JSON
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResumeError(f"{run_dir}: no {RUN_JSON}; not a run folder made by python -m train") from None
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or "checksums" not in record or "argv" not in record:
        raise ResumeError(f"{path}: records no arguments and checksums; it was made by an older python -m train "
                          "and cannot be resumed")
    return record


def check_resumable(run_dir: Path, record: Dict, argv: List[str], sums: Dict[str, str]) -> None:
    """Refuse to continue `run_dir` with other arguments, code or data than it started with."""
    if record.get("status") == "complete":
        raise ResumeError(f"{run_dir}: the run is complete; there is nothing to resume")
    from .cli import same_command

    if not same_command(record["argv"], argv):
        raise ResumeError(f"{run_dir}: was started as `python -m train {' '.join(record['argv'])}`, not with these "
                          "arguments; use --resume to re-run its own command, or a new --out")
    for key, what in (("code", "the training code (train/, fracdata/, edge_runtime/)"),
                      ("data", "the data (its images, labels or boxes)")):
        if record["checksums"].get(key) != sums.get(key):
            raise ResumeError(f"{run_dir}: {what} changed since the run started (sha256 {record['checksums'].get(key, '?')[:12]} "
                              f"then, {sums.get(key, '?')[:12]} now); resuming would mix two trainings. Start a new run")


def interrupted(run_dir: Path) -> bool:
    """True when `run_dir` holds a run that started and did not complete."""
    try:
        record = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("status") == "running"
