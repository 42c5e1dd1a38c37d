"""One short fit on phantom data writes every run artifact; evaluation reruns; bad data is handled."""

import csv
import json

import numpy as np
import pytest

from train.cli import main as train_main
from train.evaluate import main as evaluate_main

pytestmark = pytest.mark.slow

ARTIFACTS = ["model.keras", "split.csv", "history.csv", "curves.png", "roc.png", "confusion.png",
             "metrics.json", "predictions.csv", "run.json"]


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


def test_one_epoch_fit_writes_every_artifact(run_dir):
    for name in ARTIFACTS:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "gradcam").glob("*.png"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["data"]["phantom"] is True and run["training"]["epochs_run"] == 1
    assert run["versions"]["tensorflow"] and run["command"].startswith("python -m train")
    assert run["preprocess"]["resize"] == "stretch" and run["preprocess"]["size"] == 128
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["demonstration_only"] is True and m["split_sha256"] == run["split"]["sha256"]
    assert set(m["test"]["at_chosen_threshold"]["table"]["classes"]) == {"non-fractured", "fractured"}
    assert m["threshold"]["chosen_on"] == "validation split"


def test_no_image_in_two_splits_and_predictions_only_on_val_and_test(run_dir):
    with open(run_dir / "split.csv") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 60
    with open(run_dir / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    split_of = {r["image_id"]: r["split"] for r in rows}
    assert {p["split"] for p in preds} == {"val", "test"}
    assert all(split_of[p["image_id"]] == p["split"] for p in preds)


def test_evaluate_reruns_the_saved_run(run_dir, capsys):
    before = json.loads((run_dir / "metrics.json").read_text())
    assert evaluate_main([str(run_dir), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)["cnn"]
    assert after["test"]["roc_auc"]["auc"] == pytest.approx(before["test"]["roc_auc"]["auc"], abs=1e-6)
    assert after["threshold"]["value"] == pytest.approx(before["threshold"]["value"], abs=1e-6)


def test_evaluate_refuses_a_changed_split(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    lines = (copy / "split.csv").read_text().splitlines()
    lines[1], lines[2] = lines[1].replace(",train,", ",test,"), lines[2]
    (copy / "split.csv").write_text("\n".join(lines) + "\n")
    assert evaluate_main([str(copy)]) == 2


def test_augmentation_only_touches_training_batches(phantom_dir):
    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.data import read_fracatlas
    from fracdata.images import load_images
    from train.dataset import make_tf_dataset

    split = load_images(read_fracatlas(phantom_dir).records[:8], PreprocessSpec(size=64), progress=False)
    plain = np.concatenate([x.numpy() for x, _ in make_tf_dataset(split, 4, training=False, seed=0)])
    np.testing.assert_array_equal(plain, split.images)
    aug = np.concatenate([x.numpy() for x, _ in make_tf_dataset(split, 8, training=True, seed=0)])
    assert not np.allclose(np.sort(aug.ravel()), np.sort(split.images.ravel()), atol=1e-3)


def test_unreadable_images_are_skipped_counted_or_stop_the_run(phantom_dir, tmp_path, capsys):
    import shutil

    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.data import DataError, read_fracatlas
    from fracdata.images import load_images

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    recs = read_fracatlas(data).records
    recs[0].path.write_bytes(b"not a jpeg")
    recs[1].path.unlink()
    loaded = load_images(recs, PreprocessSpec(size=32), progress=False, max_skip_fraction=0.05)
    assert len(loaded.records) == len(recs) - 2 and len(loaded.skipped) == 2
    assert str(recs[0].path) in loaded.skipped[0] and "not an image" in loaded.skipped[0]
    assert "file not found" in loaded.skipped[1]
    with pytest.raises(DataError, match="unreadable"):
        load_images(recs, PreprocessSpec(size=32), progress=False, max_skip_fraction=0.01)


def test_cli_refuses_to_overwrite_and_reports_bad_input(run_dir, tmp_path, capsys):
    assert train_main(["--data", "phantom", "--out", str(run_dir), "--epochs", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert train_main(["--model", "resnet5", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'resnet50'" in capsys.readouterr().err
    assert train_main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "y")]) == 2
    assert "absent: --data folder not found" in capsys.readouterr().err
    assert train_main(["--threshold-rule", "f1", "--out", str(tmp_path / "z")]) == 2
    assert "unknown threshold rule 'f1'" in capsys.readouterr().err


def test_help_lists_the_data_policy(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--help"])
    assert e.value.code == 0
    assert "skipped" in capsys.readouterr().out


def test_report_copies_the_measured_numbers(run_dir):
    from train.report import render

    text = render([run_dir])
    m = json.loads((run_dir / "metrics.json").read_text())
    assert f"{m['test']['roc_auc']['auc']:.3f}" in text
    assert "PHANTOM" in text and "| fractured |" in text


@pytest.mark.heavy
def test_several_models_share_one_split_and_mixed_precision_saves_float32(phantom_dir, tmp_path, monkeypatch, capsys):
    import keras

    out = tmp_path / "two"
    rc = train_main(["--model", "custom_cnn_gap,custom_cnn_gmp", "--data", str(phantom_dir), "--out", str(out),
                     "--epochs", "1", "--batch-size", "16", "--bootstrap", "50",
                     "--resize", "letterbox", "--normalize", "clahe"])
    assert rc == 0
    shas = {json.loads((out / n / "run.json").read_text())["split"]["sha256"] for n in ("custom_cnn_gap", "custom_cnn_gmp")}
    for n in ("custom_cnn_gap", "custom_cnn_gmp"):  # the flags override the registry entry, recorded for export
        pre = json.loads((out / n / "run.json").read_text())["preprocess"]
        assert (pre["size"], pre["resize"], pre["normalize"], pre["views"]) == (128, "letterbox", "clahe", "dihedral")
    summary = (out / "summary.txt").read_text()
    assert len(shas) == 1 and summary.count("AUC") == 2 and summary.startswith("PHANTOM")
    # Mixed precision: refused where TensorFlow sees no GPU (float16 is emulated there, and slower) ...
    mixed = tmp_path / "mixed"
    assert train_main(["--model", "custom_cnn_gmp", "--data", str(phantom_dir), "--out", str(mixed), "--epochs",
                       "1", "--mixed-precision"]) == 2
    assert "--mixed-precision needs a GPU" in capsys.readouterr().err and not (mixed / "model.keras").exists()
    # ... and on a GPU it saves float32: the float16 path, run here on the CPU with a GPU pretended.
    import train.distribute

    monkeypatch.setattr(train.distribute, "gpus", lambda: ["/physical_device:GPU:0 (pretended by the test)"])
    try:
        assert train_main(["--model", "custom_cnn_gmp", "--data", str(phantom_dir), "--out", str(mixed), "--epochs",
                           "1", "--batch-size", "16", "--bootstrap", "50", "--mixed-precision", "--overwrite"]) == 0
        run = json.loads((mixed / "run.json").read_text())  # one model: the run is the folder itself
        assert run["training"]["mixed_precision"] is True
        model = keras.models.load_model(mixed / "model.keras", compile=False)
        assert {w.dtype for w in model.weights} == {"float32"}
        assert all(l.dtype_policy.name == "float32" for l in model.layers)
    finally:  # a failure above must not leave float16 to the tests after it
        keras.mixed_precision.set_global_policy("float32")


def test_missing_baseline_weights_stop_before_any_training(phantom_dir, tmp_path, capsys):
    out = tmp_path / "w"
    rc = train_main(["--model", "custom_cnn_gmp,mobilenetv2", "--data", str(phantom_dir), "--out", str(out),
                     "--weights", str(tmp_path / "no-such-weights"), "--epochs", "1"])
    assert rc == 2
    assert "weights file for mobilenetv2 not found" in capsys.readouterr().err
    assert not (out / "custom_cnn_gmp").exists()


def test_validation_batches_carry_the_training_class_weights(phantom_dir):
    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.data import read_fracatlas
    from fracdata.images import load_images
    from train.dataset import make_tf_dataset

    split = load_images(read_fracatlas(phantom_dir).records[:12], PreprocessSpec(size=32), progress=False)
    x, y, w = next(iter(make_tf_dataset(split, 12, training=False, seed=0, class_weight={0: 0.5, 1: 3.0})))
    np.testing.assert_array_equal(w.numpy(), np.where(y.numpy() == 1, 3.0, 0.5))


def test_same_seed_same_model(phantom_dir, tmp_path):
    """Seeds are fixed for real: two runs with one --seed give the same history and weights."""
    import keras

    for name in ("a", "b"):
        assert train_main(["--model", "custom_cnn_gmp", "--data", str(phantom_dir), "--out", str(tmp_path / name),
                           "--epochs", "2", "--batch-size", "16", "--bootstrap", "20"]) == 0
    import csv

    def history(name):  # every column but the wall time
        with open(tmp_path / name / "history.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and all(float(r.pop("epoch_seconds")) > 0 for r in rows)
        return rows

    assert history("a") == history("b")
    wa = keras.models.load_model(tmp_path / "a" / "model.keras").get_weights()
    wb = keras.models.load_model(tmp_path / "b" / "model.keras").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))


def test_seed_table_lists_each_run(run_dir):
    from train.report import seed_table

    rows = seed_table([run_dir, run_dir])
    assert len(rows) == 4 and rows[2].startswith("| custom_cnn_gap |") and "(0.000)" in rows[2]
