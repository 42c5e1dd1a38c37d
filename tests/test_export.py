"""export.quantize on a one-epoch phantom model: artifacts, manifest, the fidelity gate, calibration."""

import csv
import json
import shutil

import numpy as np
import pytest

from edge_runtime.bundle import BundleError, load_bundle, sha256_file
from export.quantize import main as export_main
from tests.conftest import OPEN_TOLERANCES

pytestmark = pytest.mark.slow


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_every_artifact_is_written_loads_and_is_checksummed(tiny_bundle):
    m = _manifest(tiny_bundle)
    # a classifier's bundle is version 2 (what runtimes before the fracture map read), unless its
    # probability is calibrated: then 4, which runtimes that would ignore the calibration refuse (5,
    # the gate's outlier direction: this fixture is exported without a gate)
    calibrated = "calibration" in m["decision"]
    assert m["format_version"] == (4 if calibrated else 2) and m["status"] == "accepted"
    assert calibrated or "calibration_unavailable" in m["decision"]
    assert set(m["artifacts"]) == {"tflite_int8", "onnx_float", "onnx_int8", "tflite_float"}
    for name, sha in m["files"].items():
        assert sha256_file(tiny_bundle / name) == sha
    assert {"model_int8.tflite", "model_int8.onnx", "model_float.onnx", "gradcam_head.f32", "report.md"} <= set(m["files"])
    b = load_bundle(tiny_bundle)  # verifies every checksum
    assert b.default_artifact("tflite").key == "tflite_int8" and b.default_artifact("onnx").key == "onnx_int8"
    io = m["artifacts"]["tflite_int8"]["io"]
    assert io["input"]["dtype"] == "int8" and io["input"]["scale"] > 0
    assert m["demonstration_only"] is True and m["data"]["phantom"] is True
    assert m["preprocess"]["size"] == 128 and m["decision"]["chosen_on"] == "validation split"
    assert m["gradcam"]["needs"] == ["features"] and m["model"]["export_rewrite"]["applied"] is True
    for a in m["artifacts"].values():
        assert a["check"]["passed"] and 0 <= a["metrics"]["agreement"] <= 1 and a["metrics"]["n"] > 0
    report = (tiny_bundle / "report.md").read_text()
    assert "float Keras (reference)" in report and "tflite_int8" in report and "PHANTOM" in report


def test_float_artifacts_reproduce_the_float_model_and_its_gradcam(tiny_bundle):
    m = _manifest(tiny_bundle)
    for key in ("onnx_float", "tflite_float"):
        a = m["artifacts"][key]["metrics"]
        assert a["max_abs_diff"] < 1e-4 and a["agreement"] == 1.0
        assert a["gradcam_max_abs_diff"] is None or a["gradcam_max_abs_diff"] < 1e-3


def test_calibration_comes_from_the_training_split_only(tiny_bundle, tiny_run):
    m = _manifest(tiny_bundle)
    with open(tiny_run / "split.csv") as fh:
        split_of = {r["image_id"]: r["split"] for r in csv.DictReader(fh)}
    ids = m["data"]["calibration"]["ids"]
    assert len(ids) == m["data"]["calibration"]["n"] == 20
    assert {split_of[i] for i in ids} == {"train"}
    assert m["data"]["split_sha256"] == sha256_file(tiny_run / "split.csv")


@pytest.mark.heavy
def test_rerun_writes_the_same_metrics(tiny_bundle, tiny_run, tmp_path):
    out = tmp_path / "again"
    assert export_main([str(tiny_run), "--out", str(out), "--calibration-size", "20", "--scope-size", "0",
                        "--artifacts", "tflite_int8,onnx_float,onnx_int8,tflite_float", *OPEN_TOLERANCES]) == 0
    a, b = _manifest(tiny_bundle), _manifest(out)
    for key in a["artifacts"]:
        assert a["artifacts"][key]["metrics"] == b["artifacts"][key]["metrics"], key
        if key.startswith("tflite"):  # tf2onnx numbers its nodes per process, so ONNX bytes may differ
            assert a["artifacts"][key]["sha256"] == b["artifacts"][key]["sha256"], key
    assert a["data"]["calibration"] == b["data"]["calibration"]


@pytest.mark.heavy
def test_zero_tolerance_rejects_and_ships_nothing(tiny_run, tmp_path, capsys):
    out = tmp_path / "strict"
    rc = export_main([str(tiny_run), "--out", str(out), "--calibration-size", "20", "--scope-size", "0",
                      "--artifacts", "tflite_int8", "--max-mean-abs-diff", "0"])
    assert rc == 1
    assert not out.exists()
    rejected = tmp_path / "strict.rejected"
    m = _manifest(rejected)
    assert m["status"] == "rejected"
    assert any("mean |Δp|" in f for f in m["artifacts"]["tflite_int8"]["check"]["failures"])
    assert "REJECTED" in capsys.readouterr().out
    with pytest.raises(BundleError, match="did not accept"):
        load_bundle(rejected)


@pytest.mark.heavy
def test_a_planted_wrong_calibration_is_caught(tiny_run, phantom_dir, tmp_path):
    """The committed demonstration model (it separates phantom fractures well), calibrated on blank
    film: int8 ranges collapse, and the check must see the drift the right calibration avoids."""
    import dataclasses

    from export.check import Tolerances
    from export.pipeline import Settings, export_prepared, prepare
    from export.sources import MODELS_DIR, resolve_sources

    model = tmp_path / "custom_cnn_gap.keras"
    shutil.copy(MODELS_DIR / "phantom-demo" / "custom_cnn_gap_film" / "model.keras", model)
    source = resolve_sources([model], split=tiny_run / "split.csv")[0]
    settings = Settings(data=str(phantom_dir), artifacts=["tflite_int8"], calibration_size=20, progress=False)
    prepared = prepare(source, settings)
    # The test split is a few phantoms: one (fractured, not) pair changing order moves the AUC by
    # 1/(pos x neg), far over the default 0.01 (sized for ~600 images), and the right calibration
    # does tie one pair. |ΔAUC| is opened to one such pair; agreement, mean and max |Δp| keep their
    # defaults.
    y = prepared.test.labels
    pairs = int(y.sum()) * int(len(y) - y.sum())
    settings = dataclasses.replace(settings, tolerances=Tolerances(max_auc_drop=1 / pairs))
    right = export_prepared(prepared, tmp_path / "right", settings)
    dark = np.full_like(prepared.calibration, 0.02)  # the steps' seam is where a fault is planted
    wrong = export_prepared(dataclasses.replace(prepared, calibration=dark), tmp_path / "wrong", settings)
    r, w = right["artifacts"]["tflite_int8"], wrong["artifacts"]["tflite_int8"]
    # The same pipeline and tolerances with the right calibration: accepted (a gate that refused
    # every artifact would pass the rejection below, not this).
    assert right["status"] == "accepted" and r["check"]["passed"] and r["check"]["failures"] == [], (r, pairs)
    assert (tmp_path / "right").is_dir() and not (tmp_path / "right.rejected").exists()
    assert wrong["status"] == "rejected" and not w["check"]["passed"]
    assert w["metrics"]["mean_abs_diff"] > 5 * r["metrics"]["mean_abs_diff"]
    assert any(f.startswith("mean |Δp|") for f in w["check"]["failures"])
    assert not (tmp_path / "wrong").exists() and (tmp_path / "wrong.rejected").is_dir()


def test_bare_keras_model_needs_its_split_and_refuses_overwrite(tiny_run, tiny_bundle, tmp_path, capsys):
    assert export_main([str(tiny_run / "model.keras"), "--out", str(tmp_path / "x")]) == 2
    assert "needs --split" in capsys.readouterr().err
    assert export_main([str(tiny_run), "--out", str(tiny_bundle)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bare_keras_model_with_split_chooses_threshold_on_validation(tiny_run, phantom_dir, tmp_path):
    model = tmp_path / "custom_cnn_gap.keras"
    shutil.copy(tiny_run / "model.keras", model)
    out = tmp_path / "bare"
    assert export_main([str(model), "--split", str(tiny_run / "split.csv"), "--data", str(phantom_dir),
                        "--out", str(out), "--calibration-size", "10", "--artifacts", "onnx_float",
                        "--scope-size", "0", *OPEN_TOLERANCES]) == 0
    m = _manifest(out)
    assert m["decision"]["rule"] == "youden" and "at export" in m["decision"]["chosen_on"]
    assert m["demonstration_only"] is True


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        export_main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--split", "--data", "--out", "--overwrite", "--artifacts", "--calibration-size",
                 "--seed", "--max-auc-drop", "--min-agreement", "--max-mean-abs-diff", "--max-abs-diff", "--json"):
        assert flag in text


@pytest.mark.parametrize("name", ["custom_cnn", "custom_cnn_gmp", "custom_cnn_gap"])
def test_bn_folding_and_gradcam_head_are_exact_for_every_head(name):
    """Flatten+Dense, global max and global average heads: the rewritten model gives the same
    probabilities, and the folded Grad-CAM head gives the GradientTape reference map."""
    import keras

    from edge_runtime.gradcam import GradCamHead
    from export.gradcam_head import derive_head
    from export.rewrite import check_equivalent, fold_batchnorm_after_relu
    from export.sources import MODELS_DIR
    from train.gradcam import gradcam

    from export.rewrite import equalize_ranges

    model = keras.models.load_model(MODELS_DIR / "phantom-demo" / name / "model.keras", compile=False)
    x = np.random.default_rng(3).random((4, 128, 128, 1)).astype(np.float32)
    folded = fold_batchnorm_after_relu(model)
    assert check_equivalent(model, folded, x, tol=1e-5) < 1e-5
    # Range equalisation changes the weights, not the function (checked the same way).
    folded = equalize_ranges(folded, x)
    assert check_equivalent(model, folded, x, tol=1e-5) < 1e-5
    assert not np.allclose(folded.get_layer("block2_conv").get_weights()[0],
                           fold_batchnorm_after_relu(model).get_layer("block2_conv").get_weights()[0])
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in folded.layers)
    _, ref, _ = gradcam(model, x, "block3_conv")
    spec = derive_head(folded, "block3_conv")
    assert (spec.hidden_layer is not None) == (name == "custom_cnn")
    outs = [folded.get_layer("block3_conv").output] + ([folded.get_layer(spec.hidden_layer).output]
                                                       if spec.hidden_layer else [])
    feats = keras.Model(folded.inputs, outs).predict(x, verbose=0)
    feats = feats if isinstance(feats, list) else [feats]
    head = GradCamHead("block3_conv", spec.arrays.get("alpha"), spec.arrays.get("mix"), spec.arrays.get("w_out"))
    ours = np.stack([head.cam(feats[0][i], feats[1][i] if spec.hidden_layer else None)[1] for i in range(4)])
    assert np.abs(ours - ref).max() < 1e-4


def test_one_table_of_artifacts_and_a_suggestion_for_a_typo(capsys):
    from export.convert import ARTIFACTS, DEFAULT_ARTIFACTS, parse_artifacts

    assert set(DEFAULT_ARTIFACTS) <= set(ARTIFACTS)
    assert len({a.file for a in ARTIFACTS.values()}) == len(ARTIFACTS)
    assert all(a.file.endswith("." + a.format) for a in ARTIFACTS.values())
    assert parse_artifacts(" tflite_int8, onnx_float ") == ["tflite_int8", "onnx_float"]
    with pytest.raises(ValueError, match="did you mean 'tflite_int8'"):
        parse_artifacts("tflite_int8,tflite_in8")
    assert export_main(["--artifacts", "onnx_int", "--out", "unused"]) == 2
    assert "did you mean 'onnx_int8'" in capsys.readouterr().err


def test_the_reference_bundle_would_be_made_again_with_the_same_preprocessing_and_decision():
    """The committed bundle's preprocess and decision sections are what export derives from its
    committed source run today (its run.json's PreprocessSpec, its metrics.json's threshold), and
    that run is the first reference export picks when its data is present."""
    from export.pipeline import decision_section, preprocess_section, recorded_threshold, source_spec
    from export.sources import MODELS_DIR, REFERENCE_CANDIDATES, resolve_sources

    m = json.loads((MODELS_DIR / "reference-bundle" / "manifest.json").read_text())
    run_dir = MODELS_DIR.parent / m["model"]["source"].split("run directory ", 1)[1]
    assert run_dir.resolve() == next(d for d in REFERENCE_CANDIDATES if (d / "run.json").is_file()).resolve()
    source = resolve_sources([run_dir])[0]
    assert preprocess_section(source_spec(source)) == m["preprocess"]
    cal = m["decision"].get("calibration")
    made = decision_section(recorded_threshold(source), bool(m.get("fracture_map")),
                            {"a": cal["a"], "b": cal["b"]} if cal else None)
    committed = {**m["decision"], **({"calibration": {k: v for k, v in cal.items() if k != "ece"}} if cal else {})}
    assert made == committed  # the fit itself (a, b) is export's measurement on validation; the rest is derived
