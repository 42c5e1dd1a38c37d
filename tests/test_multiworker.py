"""Multi-worker training for real: worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy,
killed and restarted, against single-process runs of the same global batch (train/distribute.py,
train/backup.py). Every process is ours, started here and ended by its PID.

Tolerances: the runs use --dropout 0, since each replica draws its own dropout masks. The
gradients are then the same sums taken in another order, and the two runs agree: validation loss
within 1e-3 relative (1.3e-4 measured), test probabilities within 1e-3 (8.5e-5 measured), and the
logged training loss, which averages each replica's running mean, within 1e-2 (2.0e-3 measured). A run resumed from a backup ends with exactly the weights
of an uninterrupted run (sha256 of the weights).
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train import launch

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

ARGS = ["--model", "fracture_map", "--data", "phantom", "--phantom-images", "60", "--size", "64", "--epochs", "4",
        "--steps-per-epoch", "4", "--batch-size", "4", "--bootstrap", "20", "--dropout", "0", "--decode-workers", "2"]
TIMEOUT = 150


def _digests(text: str):
    return re.findall(r"weights sha256 ([0-9a-f]{64})", text)


def _single(out: Path, extra=()):
    proc = subprocess.run([sys.executable, "-m", "train", *ARGS, *extra, "--out", str(out)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cluster(out: Path, logs: Path, extra=()):
    procs = launch.start([*ARGS, *extra, "--out", str(out)], 2, logs)
    codes = launch.wait(procs, TIMEOUT)
    texts = [(logs / f"worker-{k}.log").read_text(errors="replace") for k in range(2)]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    return texts


def _history(run: Path):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _probabilities(run: Path):
    with open(run / "predictions.csv") as f:
        return {r["image_id"]: float(r["probability"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 2-worker run and one single-process run of the same global batch."""
    root = tmp_path_factory.mktemp("multiworker")
    texts = _cluster(root / "two", root / "logs-two")
    single = _single(root / "one")
    return {"root": root, "two": root / "two", "one": root / "one", "texts": texts,
            "single_digest": _digests(single.stderr)[-1]}


def test_two_workers_hold_identical_weights_and_the_loss_falls(reference):
    chief, worker = (_digests(t) for t in reference["texts"])
    assert len(chief) == len(worker) == 1 and chief == worker
    run = json.loads((reference["two"] / "run.json").read_text())
    assert run["status"] == "complete" and run["last_epoch_weights_sha256"] == chief[0]
    assert run["devices"]["strategy"] == "multiworker: worker 0 of 2 (chief)"
    assert run["devices"]["replicas_in_sync"] == 2 and run["training"]["batch_per_replica"] == 2
    val = [float(r["val_loss"]) for r in _history(reference["two"])]
    assert len(val) == 4 and val[-1] < val[0]
    assert "the chief writes" in reference["texts"][1]
    assert not (reference["two"] / "backup").exists()  # removed once the run is complete


def test_the_chiefs_run_folder_matches_a_single_process_run(reference):
    one, two = reference["one"], reference["two"]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert (one / "split.csv").read_bytes() == (two / "split.csv").read_bytes()
    h1, h2 = _history(one), _history(two)
    assert len(h1) == len(h2)
    for a, b in zip(h1, h2):
        for key, rel in (("loss", 1e-2), ("val_loss", 1e-3)):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=rel), (key, a["epoch"])
    p1, p2 = _probabilities(one), _probabilities(two)
    assert p1.keys() == p2.keys() and max(abs(p1[k] - p2[k]) for k in p1) <= 1e-3


def _kill_when_backed_up(procs, out: Path, victim: int, timeout: float = 90.0):
    """Kill worker `victim` (SIGKILL, by PID) once the first epoch's backup exists; the survivor
    stops by itself when its collectives fail (else it is ended too, as a cluster manager would)."""
    deadline = time.monotonic() + timeout
    while not (out / "backup" / "latest").exists():
        assert all(p.poll() is None for p in procs), "a worker stopped before the first backup"
        assert time.monotonic() < deadline, "no backup appeared"
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    codes = launch.wait(procs, 60)
    assert codes[victim] == -signal.SIGKILL
    assert codes[1 - victim] != 0  # it did not finish on its own: the run really was interrupted
    assert json.loads((out / "run.json").read_text())["status"] == "running"


@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "chief"])
def test_a_killed_worker_restarts_from_the_backup_and_ends_as_if_never_interrupted(reference, victim):
    root = reference["root"]
    out, logs = root / f"killed-{victim}", root / f"logs-killed-{victim}"
    _kill_when_backed_up(launch.start([*ARGS, "--out", str(out)], 2, logs), out, victim)
    texts = _cluster(out, logs)  # the same command again, as a restarted job would run it
    assert all("resuming fracture_map from the backup after epoch" in t for t in texts)
    assert "resuming the interrupted run" in texts[0]
    expected = _digests(reference["texts"][0])[0]
    assert [d[-1] for d in (_digests(t) for t in texts)] == [expected, expected]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["resumed_from_epoch"] >= 1
    assert [r["epoch"] for r in _history(out)] == ["0", "1", "2", "3"]


def _kill_single_when(args, out: Path, ready, poll: float = 0.05):
    """Start `python -m train ARGS --out OUT`, and kill -9 it (by its PID) once `ready()` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "train", *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_a_killed_single_process_run_resumes_with_resume(reference):
    out = reference["root"] / "single-killed"
    _kill_single_when(ARGS, out, (out / "backup" / "latest").exists)
    extra = subprocess.run([sys.executable, "-m", "train", "--resume", str(out), "--epochs", "9"], capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert extra.returncode == 2 and "takes no other flags" in extra.stderr
    resumed = subprocess.run([sys.executable, "-m", "train", "--resume", str(out)], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming fracture_map from the backup after epoch" in resumed.stderr
    assert _digests(resumed.stderr)[-1] == reference["single_digest"]
    done = subprocess.run([sys.executable, "-m", "train", "--resume", str(out)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 2 and "complete; there is nothing to resume" in done.stderr


def test_a_resumed_run_with_dropout_ends_as_if_never_interrupted(tmp_path):
    """Dropout's random state is in the backup: with dropout on (the models' default), a run
    killed and resumed ends with the weights of one never interrupted."""
    args = ["--model", "custom_cnn_gap", "--data", "phantom", "--phantom-images", "60", "--size", "32", "--epochs",
            "4", "--batch-size", "8", "--bootstrap", "20", "--decode-workers", "2", "--patience", "10"]
    whole = subprocess.run([sys.executable, "-m", "train", *args, "--out", str(tmp_path / "whole")],
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    _kill_single_when(args, out, (out / "backup" / "latest").exists, poll=0.02)
    resumed = subprocess.run([sys.executable, "-m", "train", *args, "--out", str(out)], capture_output=True,
                             text=True, timeout=TIMEOUT)  # the same command again resumes it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming custom_cnn_gap from the backup after epoch" in resumed.stderr
    assert _digests(resumed.stderr)[-1] == _digests(whole.stderr)[-1]
    one, two = (json.loads((d / "run.json").read_text()) for d in (tmp_path / "whole", out))
    assert one["model_weights_sha256"] == two["model_weights_sha256"]  # and the model that ships is the same


def test_a_resumed_run_with_ema_ends_as_if_never_interrupted(tmp_path):
    """--ema: a backup is written after the epoch's swap (the average in the weights' place); the
    resumed run swaps them back first, so it ends with the weights of one never interrupted."""
    args = [*ARGS, "--ema", "0.5"]
    whole = subprocess.run([sys.executable, "-m", "train", *args, "--out", str(tmp_path / "whole")],
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    _kill_single_when(args, out, (out / "backup" / "latest").exists, poll=0.02)
    resumed = subprocess.run([sys.executable, "-m", "train", "--resume", str(out)], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming fracture_map from the backup after epoch" in resumed.stderr
    assert _digests(resumed.stderr)[-1] == _digests(whole.stderr)[-1]
    one, two = (_history(d) for d in (tmp_path / "whole", out))
    assert [r["val_loss"] for r in one] == [r["val_loss"] for r in two]  # validated on the same averages


def test_the_paper_path_trains_on_two_workers(tmp_path):
    """The classifiers' path (class weights carried in the batches, EarlyStopping, ReduceLROnPlateau)."""
    args = ["--model", "custom_cnn_gap", "--data", "phantom", "--phantom-images", "60", "--size", "32", "--epochs",
            "2", "--batch-size", "8", "--bootstrap", "20", "--decode-workers", "2", "--out", str(tmp_path / "run")]
    procs = launch.start(args, 2, tmp_path / "logs")
    codes = launch.wait(procs, TIMEOUT)
    texts = [(tmp_path / "logs" / f"worker-{k}.log").read_text(errors="replace") for k in range(2)]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    a, b = (_digests(t) for t in texts)
    assert a == b and len(a) == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["training"]["batch_per_replica"] == 4


def test_a_run_killed_during_its_evaluation_evaluates_on_resume(reference):
    """Trained to its end, killed while evaluating: --resume trains nothing and evaluates the same model."""
    out = reference["root"] / "killed-evaluating"
    # model.keras is saved once training is over, before the evaluation
    _kill_single_when(ARGS, out, (out / "model.keras").exists, poll=0.02)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    resumed = subprocess.run([sys.executable, "-m", "train", "--resume", str(out)], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training finished before the interruption; evaluating" in resumed.stderr
    assert "Epoch " not in resumed.stderr  # no epoch trained again
    assert _digests(resumed.stderr)[-1] == reference["single_digest"]
    run = json.loads((out / "run.json").read_text())
    single = json.loads((reference["one"] / "run.json").read_text())
    assert run["status"] == "complete" and run["model_weights_sha256"] == single["model_weights_sha256"]
    assert [r["epoch"] for r in _history(out)] == ["0", "1", "2", "3"]
    assert not (out / "best.weights.h5").exists() and not (out / "backup").exists()
