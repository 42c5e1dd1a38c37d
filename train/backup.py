"""Fault tolerance: back the training up at each epoch's end, and pick up from there after a kill.

`backup_callback` is Keras's `BackupAndRestore` with three changes a killed run needs:
- each backup is a folder of its own (`backup/epoch-0003/`: weights with the optimizer's state,
  the random state of every seeded layer (dropout), the best checkpoint so far, the counters of
  EarlyStopping, ReduceLROnPlateau and ModelCheckpoint, and whether EarlyStopping ended the run),
  and `backup/latest` names the newest complete one, replaced atomically: a kill while writing
  leaves the previous backup in force, never weights of one epoch with the counters or the
  checkpoint of another;
- under several workers only the chief writes; every worker reads the chief's backup (the run
  folder is on storage every worker sees, as Keras's own multi-worker backup requires);
- the input pipeline starts at the restored epoch (`start_epoch`), because its batches are a
  function of (seed, epoch, step) and not of how many batches a process has drawn.

Backups are made at epoch ends: Keras 3 resumes an interrupted epoch from its start, so a
mid-epoch backup would replay batches into weights that had already seen them. Resumed this way,
a run ends with the same weights as one never interrupted (tests/test_multiworker.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List, Optional

LATEST = "latest"
KEEP = 2  # backup folders kept: the newest and the one before it
STATE_FIELDS = {"EarlyStopping": ("wait", "best", "stopped_epoch", "best_epoch"),
                "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
                "ModelCheckpoint": ("best",)}


def latest(backup_dir: Path) -> Optional[Path]:
    """The newest complete backup folder, or None."""
    pointer = Path(backup_dir) / LATEST
    try:
        name = json.loads(pointer.read_text())["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    folder = Path(backup_dir) / name
    return folder if (folder / "state.json").is_file() else None


def start_epoch(backup_dir: Path) -> int:
    """The epoch a run restored from `backup_dir` begins with (0: nothing to restore)."""
    return restored_state(backup_dir)["epoch"]


def restored_state(backup_dir: Path) -> dict:
    """{"epoch": where a restored run begins, "stopped": whether EarlyStopping had ended it}."""
    folder = latest(backup_dir)
    if folder is None:
        return {"epoch": 0, "stopped": False}
    state = json.loads((folder / "state.json").read_text())
    return {"epoch": int(state["epoch"]), "stopped": bool(state.get("stopped", False))}


def _seed_generators(model) -> list:
    """Every seeded layer's generator (dropout's masks), in a fixed order."""
    return [sg for layer in model._flatten_layers(include_self=True, recursive=True)
            for sg in getattr(layer, "_seed_generators", [])]


def _plain(value):
    """A callback counter as JSON takes it (numpy scalars and tensors as Python numbers)."""
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value if isinstance(value, (int, float, type(None))) else float(value)


def backup_callback(backup_dir: Path, chief: bool, callbacks: List, checkpoint: Optional[Path] = None):
    """A BackupAndRestore for `backup_dir` that also saves and restores the random state of the
    seeded layers, the best checkpoint file `checkpoint` and the counters of the stopping and
    checkpoint callbacks among `callbacks` (put it after them in the list)."""
    import keras
    import numpy as np

    backup_dir = Path(backup_dir)

    class Backup(keras.callbacks.BackupAndRestore):
        def __init__(self):
            super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)

        def _load_model(self):  # called by on_train_begin
            folder = latest(backup_dir)
            if folder is None:
                return
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(str(folder / "model.weights.h5"))
            state = json.loads((folder / "state.json").read_text())
            seeds = state.get("seed_states", [])
            for sg, value in zip(_seed_generators(self.model), seeds):
                sg.state.assign(np.asarray(value, dtype=sg.state.dtype))
            if checkpoint is not None and chief and (folder / checkpoint.name).is_file():
                shutil.copyfile(folder / checkpoint.name, checkpoint)
            for cb in callbacks:
                for key, value in state.get("callbacks", {}).get(type(cb).__name__, {}).items():
                    setattr(cb, key, value)
            self.model._initial_epoch = int(state["epoch"])

        def _save_model(self):
            if not chief:
                return
            epoch = self._current_epoch
            folder = backup_dir / f"epoch-{epoch:04d}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.model.save_weights(str(folder / "model.weights.h5"))
            counters = {type(cb).__name__: {k: _plain(getattr(cb, k)) for k in STATE_FIELDS[type(cb).__name__]
                                            if hasattr(cb, k)}
                        for cb in callbacks if type(cb).__name__ in STATE_FIELDS}
            seeds = [np.asarray(sg.state.value).tolist() for sg in _seed_generators(self.model)]
            if checkpoint is not None and checkpoint.is_file():
                shutil.copyfile(checkpoint, folder / checkpoint.name)
            (folder / "state.json").write_text(json.dumps({
                "epoch": epoch, "callbacks": counters, "seed_states": seeds,
                "stopped": bool(getattr(self.model, "stop_training", False))}))
            _sync(folder)  # on disk before `latest` names it: a power cut leaves the previous backup
            tmp = backup_dir / (LATEST + ".tmp")
            tmp.write_text(json.dumps({"folder": folder.name}))
            _sync_file(tmp)
            os.replace(tmp, backup_dir / LATEST)
            _sync_file(backup_dir)
            for old in sorted(backup_dir.glob("epoch-*"))[:-KEEP]:
                shutil.rmtree(old, ignore_errors=True)

        def on_train_end(self, logs=None):
            pass  # the run folder's owner removes the backup once the run is complete

    return Backup()


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(folder: Path) -> None:
    for f in folder.iterdir():
        _sync_file(f)
    _sync_file(folder)


def remove(backup_dir: Path) -> None:
    shutil.rmtree(backup_dir, ignore_errors=True)


def trim_history(history_csv: Path, epoch: int) -> None:
    """Keep history.csv's rows of epochs before `epoch`: a resumed run writes the rest again."""
    if not history_csv.is_file():
        return
    lines = history_csv.read_text().splitlines()
    if not lines:
        return
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0].strip().isdigit()
                         and int(ln.split(",", 1)[0]) < epoch]
    history_csv.write_text("\n".join(kept) + "\n")
