"""Training beyond one process, without starting a cluster: TF_CONFIG, how batches are shared by
replicas, resumable run records, backups and the decoded-image cache. The real multi-worker runs
are tests/test_multiworker.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from train.distribute import ClusterError, check_batch, parse_tf_config, replica_slice, task_for


def _config(cluster, task):
    return json.dumps({"cluster": cluster, "task": task})


def test_tf_config_names_the_chief_and_the_workers():
    two = {"worker": ["a:1", "b:2"]}
    assert parse_tf_config(_config(two, {"type": "worker", "index": 0})).chief
    t = parse_tf_config(_config(two, {"type": "worker", "index": 1}))
    assert (t.index, t.workers, t.chief) == (1, 2, False)
    assert "worker 1 of 2" in t.describe() and "chief" not in t.describe()
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:2"]}
    assert parse_tf_config(_config(with_chief, {"type": "chief", "index": 0})).chief
    w0 = parse_tf_config(_config(with_chief, {"type": "worker", "index": 0}))
    assert (w0.index, w0.workers, w0.chief) == (1, 3, False)  # worker 0 is not the chief when there is one


@pytest.mark.parametrize("text, says", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not JSON"),
    ("[]", "JSON object"),
    (_config({"worker": ["a:1"]}, None), "'task' object"),
    (_config({"ps": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 0}), "job(s) ps"),
    (_config({"worker": []}, {"type": "worker", "index": 0}), "non-empty list"),
    (_config({"worker": ["no-port"]}, {"type": "worker", "index": 0}), "host:port"),
    (_config({"chief": ["a:1", "b:1"]}, {"type": "chief", "index": 0}), "one chief"),
    (_config({"worker": ["a:1"]}, {"type": "evaluator", "index": 0}), "not a job"),
    (_config({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 2}), "within 0..1"),
])
def test_a_wrong_tf_config_is_refused_with_the_reason(text, says):
    with pytest.raises(ClusterError, match=None) as err:
        parse_tf_config(text)
    assert says in str(err.value)


def test_the_strategy_names_are_checked():
    assert task_for("default").chief and task_for("mirrored").strategy == "mirrored"
    with pytest.raises(ClusterError, match="one of"):
        task_for("parameter-server")
    with pytest.raises(ClusterError, match="TF_CONFIG"):
        task_for("multiworker", environ={})


def test_replicas_share_each_global_batch_exactly_once():
    batch = np.arange(12)
    for n in (1, 2, 3, 4, 6):
        parts = [replica_slice(batch, r, n) for r in range(n)]
        assert sorted(np.concatenate(parts).tolist()) == batch.tolist()
        assert len({len(p) for p in parts}) == 1
    assert check_batch(16, 4) == 4
    with pytest.raises(ClusterError, match="multiple of 3"):
        check_batch(16, 3)


def test_training_batches_depend_on_the_step_not_on_the_process():
    """A resumed run, and replicas together, draw what one uninterrupted run draws."""
    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.images import LoadedSplit
    from train.dataset import evaluation_batches, training_batch

    rng = np.random.default_rng(0)
    split = LoadedSplit([], rng.uniform(0, 1, (10, 32, 32)).astype(np.float32), np.arange(10) % 2,
                        PreprocessSpec(size=32, views="single"))
    batch_of, steps = training_batch(split, 4, seed=3, photo=False)
    assert steps == 3
    x5, y5 = batch_of(5)  # epoch 1, step 2: the last, partial batch on one device
    again, _ = training_batch(split, 4, seed=3, photo=False)[0](5)
    np.testing.assert_array_equal(x5, again)
    assert len(y5) == 2
    many_of, many_steps = training_batch(split, 4, seed=3, photo=False, n_replicas=2, class_weight={0: 1.0, 1: 3.0})
    assert many_steps == 2  # several replicas: the partial batch is left out
    halves = [many_of(4, r, 2) for r in range(2)]  # epoch 2, step 0, as each of 2 replicas draws it
    whole = training_batch(split, 4, seed=3, photo=False, n_replicas=2)[0](4)  # and as one device draws it
    joined = np.empty_like(whole[0])
    joined[0::2], joined[1::2] = halves[0][0], halves[1][0]
    np.testing.assert_array_equal(joined, whole[0])
    labels = np.concatenate([h[1] for h in halves])
    weights = np.concatenate([h[2] for h in halves])
    np.testing.assert_array_equal(weights, np.where(labels == 1, 3.0, 1.0))
    assert [len(b) for b in evaluation_batches(9, 4, 2)] == [4, 5]  # no replica is handed an empty batch
    assert [len(b) for b in evaluation_batches(9, 4, 1)] == [4, 5]  # and one device's batches are the same
    assert [len(b) for b in evaluation_batches(8, 4, 2)] == [4, 4]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        training_batch(split, 16, seed=3, n_replicas=2)


def test_a_run_is_resumed_only_with_its_own_command_code_and_data(tmp_path):
    from train.job import ResumeError, check_resumable, read_record, start_record

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ResumeError, match="no run.json"):
        read_record(run)
    sums = {"code": "c" * 64, "data": "d" * 64}
    argv = ["--model", "fracture_map", "--out", str(run)]
    (run / "run.json").write_text(json.dumps(start_record(argv, sums, ["fracture_map"])))
    record = read_record(run)
    check_resumable(run, record, argv + ["--overwrite"], sums)  # --overwrite does not make another command
    with pytest.raises(ResumeError, match="not with these arguments"):
        check_resumable(run, record, argv + ["--epochs", "3"], sums)
    with pytest.raises(ResumeError, match="training code .* changed"):
        check_resumable(run, record, argv, {**sums, "code": "e" * 64})
    with pytest.raises(ResumeError, match="the data .* changed"):
        check_resumable(run, record, argv, {**sums, "data": "e" * 64})
    with pytest.raises(ResumeError, match="complete"):
        check_resumable(run, {**record, "status": "complete"}, argv, sums)
    (run / "run.json").write_text(json.dumps({"title": "made before run records had arguments"}))
    with pytest.raises(ResumeError, match="older python -m train"):
        read_record(run)


def test_the_data_checksum_follows_every_image_byte_label_and_box(tmp_path):
    from fracdata.data import Record
    from train.job import checksums, code_digest

    files = []
    for k in range(3):
        f = tmp_path / f"{k}.png"
        f.write_bytes(bytes([k]) * 100)
        files.append(Record(f"{k}", f, k % 2, "hand", "frontal", 0, 0, boxes=((0.1, 0.1, 0.2, 0.2),) if k else ()))
    base = checksums(files, tmp_path)
    assert base["code"] == code_digest() and len(base["data"]) == 64
    files[1].path.write_bytes(b"\x01" * 99 + b"\x02")
    changed = checksums(files, tmp_path)
    assert changed["data"] != base["data"] and changed["code"] == base["code"]
    files[1].path.write_bytes(b"\x01" * 100)
    assert checksums(files, tmp_path)["data"] == base["data"]
    from dataclasses import replace

    relabelled = [replace(files[0], label=1)] + files[1:]
    assert checksums(relabelled, tmp_path)["data"] != base["data"]


def test_a_backup_is_never_half_written(tmp_path):
    """`latest` names the newest complete backup folder: a folder without its state is ignored."""
    from train.backup import latest, start_epoch, trim_history

    backup = tmp_path / "backup"
    assert start_epoch(backup) == 0
    (backup / "epoch-0002").mkdir(parents=True)
    (backup / "epoch-0002" / "state.json").write_text(json.dumps({"epoch": 2}))
    (backup / "latest").write_text(json.dumps({"folder": "epoch-0002"}))
    assert start_epoch(backup) == 2 and latest(backup).name == "epoch-0002"
    (backup / "epoch-0003").mkdir()  # killed while writing epoch 3: latest still names epoch 2
    assert start_epoch(backup) == 2
    (backup / "latest").write_text("{torn")
    assert start_epoch(backup) == 0 and latest(backup) is None
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    trim_history(history, 2)
    assert history.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"


def test_the_decoded_image_cache_is_keyed_by_spec_and_bytes(tmp_path, capsys):
    from PIL import Image

    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.data import Record
    from fracdata.images import load_images
    from train.job import file_hashes

    records = []
    for k in range(4):
        f = tmp_path / f"img{k}.png"
        Image.fromarray((np.random.default_rng(k).uniform(0, 255, (40, 50))).astype(np.uint8)).save(f)
        records.append(Record(f"{k}", f, k % 2, "hand", "frontal", 0, 0))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records.append(Record("b", tmp_path / "broken.png", 0, "hand", "frontal", 0, 0))
    spec = PreprocessSpec(size=32, views="single")
    cache = tmp_path / "cache"
    plain = load_images(records, spec, progress=False, max_skip_fraction=0.5, workers=3)
    assert len(plain.records) == 4 and len(plain.skipped) == 1 and "broken.png" in plain.skipped[0]
    first = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                        hashes=file_hashes(records))
    assert len(list(cache.glob("*.npz"))) == 1
    hit = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                      hashes=file_hashes(records))
    for a in (first, hit):
        np.testing.assert_array_equal(a.resized, plain.resized)
        assert [r.image_id for r in a.records] == ["0", "1", "2", "3"] and a.shapes == plain.shapes
        assert a.skipped == plain.skipped
    load_images(records, PreprocessSpec(size=48, views="single"), progress=False, max_skip_fraction=0.5,
                cache_dir=cache, hashes=file_hashes(records))
    assert len(list(cache.glob("*.npz"))) == 2  # another spec, another entry
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(records[0].path)  # an image changed
    fresh = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                        hashes=file_hashes(records))
    assert fresh.resized[0].max() == 0 and len(list(cache.glob("*.npz"))) == 3
    for f in cache.glob("*.npz"):
        f.write_bytes(b"damaged")
    again = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                        hashes=file_hashes(records))
    np.testing.assert_array_equal(again.resized, fresh.resized)  # a damaged entry is decoded again
    with pytest.raises(ValueError, match="sha256"):
        load_images(records, spec, progress=False, cache_dir=cache)


def test_the_cli_refuses_a_multiworker_run_without_a_shared_out(monkeypatch, capsys):
    from train.cli import main

    monkeypatch.setenv("TF_CONFIG", _config({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, {"type": "worker", "index": 0}))
    assert main(["--strategy", "multiworker", "--data", "phantom"]) == 2
    assert "needs --out" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", "{")
    assert main(["--strategy", "multiworker", "--out", "x"]) == 2
    assert "TF_CONFIG is not JSON" in capsys.readouterr().err


def test_resume_refuses_what_is_not_an_interrupted_run(tmp_path, capsys):
    from train.cli import main

    assert main(["--resume", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"status": "complete", "argv": [], "checksums": {}}))
    assert main(["--resume", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_an_interrupted_run_of_another_command_is_not_overwritten_silently(tmp_path, capsys):
    from train.cli import _prepare_out
    from train.job import start_record

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps(start_record(["--epochs", "2"], {}, ["m"])))
    (out / "backup").mkdir()
    assert _prepare_out(out, False, ["--epochs", "2"])["argv"] == ["--epochs", "2"]  # same command: resumed
    with pytest.raises(FileExistsError, match="interrupted run of another command"):
        _prepare_out(out, False, ["--epochs", "3"])
    assert _prepare_out(out, True, ["--epochs", "3"]) is None  # --overwrite starts afresh ...
    assert not (out / "backup").exists() and not (out / "run.json").exists()  # ... without the old backup


def test_one_command_whatever_its_spelling_and_overwrite_starts_afresh(tmp_path, monkeypatch):
    from train.cli import _check_out, _prepare_out, same_command
    from train.job import start_record

    monkeypatch.chdir(tmp_path)
    assert same_command(["--out", "runs/x", "--epochs", "2"], ["--epochs", "2", "--out", str(tmp_path / "runs/x")])
    assert same_command(["--out", "r", "--json"], ["--out", "r", "--verbose", "--overwrite"])  # output-only flags
    assert not same_command(["--out", "r", "--epochs", "2"], ["--out", "r", "--epochs", "3"])
    out = tmp_path / "job"
    (out / "m1" / "backup").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(start_record(["--out", str(out)], {}, ["m1", "m2"])))
    (out / "m1" / "run.json").write_text(json.dumps({"status": "complete"}))
    (out / "m1" / "metrics.json").write_text("{}")
    assert _check_out(out, False, ["--out", str(out)]) is not None  # the same command: resumed
    assert _prepare_out(out, True, ["--out", str(out)]) is None  # --overwrite: a fresh start, even so ...
    assert not (out / "m1" / "run.json").exists() and not (out / "m1" / "metrics.json").exists()  # ... of all
    assert not (out / "m1" / "backup").exists() and not (out / "run.json").exists()


def test_two_trainings_never_write_one_folder(tmp_path):
    from train.cli import _lock_out

    import os

    fd = _lock_out(tmp_path)
    try:
        with pytest.raises(FileExistsError, match=f"pid {os.getpid()}"):
            _lock_out(tmp_path)
    finally:
        os.close(fd)
    os.close(_lock_out(tmp_path))  # free again once the first run ends


def test_the_backup_keeps_dropout_state_the_checkpoint_and_an_early_stop(tmp_path):
    """What a killed run needs back: the masks dropout would draw next, the best checkpoint, and
    whether EarlyStopping had ended it (a resumed early-stopped run must not train on)."""
    import keras

    from train.backup import backup_callback, restored_state

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")

    def model():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5),
                              keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer="adam", loss="binary_crossentropy")
        return m

    ckpt = tmp_path / "best.weights.h5"
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)  # stops after epoch 2
    callbacks = [stop, keras.callbacks.ModelCheckpoint(ckpt, monitor="loss", save_best_only=True,
                                                       save_weights_only=True)]
    m = model()
    m.fit(x, y, epochs=5, verbose=0, callbacks=[*callbacks, backup_callback(tmp_path / "backup", True, callbacks, ckpt)])
    state = restored_state(tmp_path / "backup")
    assert state == {"epoch": 2, "stopped": True}
    seeds = [np.asarray(sg.state.value) for sg in m.layers[1]._seed_generators]
    ckpt.unlink()
    again = model()
    cb = backup_callback(tmp_path / "backup", True, callbacks, ckpt)
    cb.set_model(again)
    cb._load_model()
    assert [np.asarray(sg.state.value).tolist() for sg in again.layers[1]._seed_generators] == \
        [s.tolist() for s in seeds]
    assert ckpt.is_file() and again._initial_epoch == 2
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), m.get_weights()))


def test_a_damaged_cache_entry_is_decoded_again_and_a_hit_still_counts_skipped_files(tmp_path):
    from PIL import Image

    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.data import DataError, Record
    from fracdata.images import load_images
    from train.job import file_hashes

    records = []
    for k in range(4):
        f = tmp_path / f"img{k}.png"
        Image.fromarray(np.full((30, 30), 40 * k, np.uint8)).save(f)
        records.append(Record(f"{k}", f, 0, "hand", "frontal", 0, 0))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    records.append(Record("b", tmp_path / "bad.png", 0, "hand", "frontal", 0, 0))
    spec, cache = PreprocessSpec(size=16, views="single"), tmp_path / "cache"
    first = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                        hashes=file_hashes(records))
    entry = next(cache.glob("*.npz"))
    with pytest.raises(DataError, match="1 of 5"):  # a hit is held to the same limit as a decode
        load_images(records, spec, progress=False, max_skip_fraction=0.1, cache_dir=cache, hashes=file_hashes(records))
    whole = entry.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", whole[:-40] + bytes(40)):  # torn, empty, a bad tail
        entry.write_bytes(damaged)
        again = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                            hashes=file_hashes(records))
        np.testing.assert_array_equal(again.resized, first.resized)
    pixels = next(cache.glob("*.pixels.npy"))
    hit = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                      hashes=file_hashes(records))
    assert isinstance(hit.resized, np.memmap) and not hit.resized.flags.writeable  # paged in, never written
    body = pixels.read_bytes()
    for damaged in (body[:-100], body[:-64] + bytes(64)):  # the pixels torn, or their tail zeroed
        pixels.write_bytes(damaged)
        again = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                            hashes=file_hashes(records))
        np.testing.assert_array_equal(np.asarray(again.resized), first.resized)
    pixels.unlink()
    again = load_images(records, spec, progress=False, max_skip_fraction=0.5, cache_dir=cache,
                        hashes=file_hashes(records))
    np.testing.assert_array_equal(np.asarray(again.resized), first.resized)


@pytest.mark.slow
def test_training_from_the_cache_gives_the_same_model(tmp_path):
    """Decoded once into --cache, then trained from the memory-mapped arrays: the same weights."""
    import re
    import subprocess
    import sys

    args = ["--model", "fracture_map", "--data", "phantom", "--phantom-images", "60", "--size", "64", "--epochs", "1",
            "--steps-per-epoch", "3", "--batch-size", "4", "--bootstrap", "20", "--dropout", "0"]
    digests = []
    for name, extra in (("plain", []), ("cold", ["--cache", str(tmp_path / "c")]), ("warm", ["--cache", str(tmp_path / "c")])):
        done = subprocess.run([sys.executable, "-m", "train", *args, *extra, "--out", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(re.findall(r"weights sha256 ([0-9a-f]{64})", done.stderr)[-1])
    assert len(set(digests)) == 1
    assert len(list((tmp_path / "c").glob("*.pixels.npy"))) == 3  # train, val, test
