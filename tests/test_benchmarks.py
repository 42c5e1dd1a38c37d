"""The benchmark's quick mode on a bundle made on the fly: every field present, numbers sane."""

import json

import numpy as np

import pytest

from benchmarks.cli import main as bench_main

pytestmark = pytest.mark.slow


@pytest.mark.heavy
def test_quick_benchmark_writes_complete_sane_json(tiny_bundle, tiny_run, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_main(["--quick", "--bundle", str(tiny_bundle), "--keras", str(tiny_run / "model.keras"),
                       "--out", str(out), "--image-size", "600x750", "--json"]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert json.loads(capsys.readouterr().out)["model"] == res["model"] == "custom_cnn_gap"
    for key in ("cpu", "cores", "python", "numpy", "interpreters", "peak"):
        assert key in res["device"]
    rows = res["backends"]
    assert {r["backend"] for r in rows} >= {"keras", "onnx"} and any(r["artifact"] == "tflite_int8" for r in rows)
    for r in rows:
        assert "error" not in r, r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["peak_rss_mb"] > 0 and r["cold_start_s"] > 0 and r["file_mb"] > 0
        assert r["throughput_images_per_s"] > 0 and r["achieved_gops"] > 0 and r["runs"] == 20
    for kind in ("jpeg", "png"):
        e = res["end_to_end"][kind]
        assert all(e[k] > 0 for k in ("decode_full_ms", "decode_fast_ms", "inference_ms", "gradcam_ms",
                                      "predict_file_total_ms"))
        assert e["predict_file_total_ms"] >= e["inference_ms"]
        assert e["with_heatmap_total_ms"] > 0 and e["heatmap_ratio"] > 0  # the overlay's cost, measured
        assert e["decision"] in ("fractured", "non-fractured") and "heatmap_not_timed" not in e
    film = res["film_path"]["12MP"]
    assert film["pixels"] == [4000, 3000] and film["answered"] == film["runs"] >= 3
    assert film["total_ms"] >= film["decode_ms"] + film["film_ms"] > 0 and film["peak_rss_mb"] > 0
    names = [t["target"] for t in res["targets"]]
    assert len(names) == 9 and all(t["met"] in (True, False) for t in res["targets"])
    assert any("--heatmap" in n for n in names)
    md = (out / "benchmark.md").read_text()
    assert "| litert | tflite_int8 | 1 |" in md or "| tflite | tflite_int8 | 1 |" in md
    assert "Targets" in md and "quick mode" in md and "## Film path" in md


def test_page_benchmark_runs_on_a_small_log():
    from benchmarks.page import measure
    res = measure(2000, requests=10, clients=2)
    assert res["records"] == 2000 and res["concurrent_requests"] == 4
    assert 0 < res["sequential_p50_ms"] <= res["sequential_p95_ms"] and res["server_peak_rss_mb"] > 0
    assert set(res["targets"]) == {"GET / <= 100 ms", "peak <= 150 MB with 10 clients"}


def test_the_size_benchmark_counts_what_a_larger_input_costs(tmp_path):
    from benchmarks.sizes import main

    out = tmp_path / "sizes.json"
    assert main(["--sizes", "64,32", "--runs", "3", "--warmup", "1", "--calibration-images", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["size"] for r in rows] == [32, 64]
    # a fully convolutional map: four times the pixels, four times the multiply-adds, same weights
    assert rows[1]["macs_per_image"] == 4 * rows[0]["macs_per_image"] and rows[0]["params"] == rows[1]["params"]
    assert rows[0]["tflite_int8_vs_32"] == 1.0 and rows[1]["tflite_int8_p50_ms"] > 0
    assert rows[1]["tflite_int8_bytes"] < rows[1]["tflite_float32_bytes"]


def test_the_int8_accuracy_target_is_not_met_by_a_bundle_without_int8():
    from benchmarks.report import targets

    def res(artifacts):
        return {"backends": [], "end_to_end": {}, "film_path": {},
                "accuracy": {"artifacts": artifacts}}

    def int8_row(r):
        return next(t for t in targets(r) if t["target"].startswith("int8 within"))

    floats = {"tflite_float": {"delta_auc": 0.0}, "onnx_float": {"delta_auc": 0.0}}
    row = int8_row(res(floats))
    assert row["met"] is None and row["note"] == "not measured: the bundle has no int8 artifact"
    row = int8_row(res({**floats, "tflite_int8": {"delta_auc": -0.02}}))
    assert row["met"] is False and row["measured"] == 0.02
    assert int8_row(res({**floats, "onnx_int8": {"delta_auc": 0.004}}))["met"] is True


def test_an_input_answered_without_an_overlay_does_not_pass_for_the_heatmaps_cost(tiny_bundle, tmp_path):
    """An input the out-of-scope gate refuses (a generated skull) is answered without an overlay:
    the --heatmap target is then not measured, not met by a ratio of ~1; one refused before the
    model ran stops the benchmark."""
    from pathlib import Path

    from PIL import Image

    from benchmarks.cli import end_to_end
    from benchmarks.report import targets
    from edge_runtime.bundle import load_bundle
    from fracdata.ood import render_skull

    bundle = load_bundle(Path(__file__).resolve().parents[1] / "models" / "reference-bundle")
    skull = tmp_path / "skull.png"
    render_skull(np.random.default_rng(0)).convert("L").save(skull)
    e = end_to_end(bundle, {"jpeg": skull}, 2)["jpeg"]
    assert e["decision"] == "out-of-scope"
    assert e["heatmap_ratio"] is None and "without an overlay" in e["heatmap_not_timed"]
    row = next(t for t in targets({"backends": [], "end_to_end": {"jpeg": {**e, "gradcam_ms": 0.0, "inference_ms": 1.0}},
                                   "film_path": {}, "accuracy": {"artifacts": {}}}) if "--heatmap" in t["target"])
    assert row["met"] is None and "without an overlay" in row["note"]
    flat = tmp_path / "flat.png"  # the tiny bundle's content check refuses it before its model runs
    Image.fromarray(np.full((300, 240), 128, np.uint8)).save(flat)
    with pytest.raises(SystemExit, match="before the model ran"):
        end_to_end(load_bundle(tiny_bundle), {"jpeg": flat}, 1)


def test_the_benchmarks_radiograph_is_one_the_reference_bundle_answers(tmp_path):
    from pathlib import Path

    from benchmarks.inputs import synthetic_radiograph, write_inputs
    from edge_runtime.bundle import load_bundle
    from edge_runtime.predictor import Predictor

    a = synthetic_radiograph((300, 375), seed=1)
    assert a.shape == (375, 300) and a.dtype == np.uint8 and a.std() > 10
    assert not np.array_equal(a, synthetic_radiograph((300, 375), seed=2))
    paths = write_inputs(tmp_path, (800, 1000))
    pred = Predictor(load_bundle(Path(__file__).resolve().parents[1] / "models" / "reference-bundle"), threads=1)
    for path in paths.values():  # through its out-of-scope gate, with an overlay
        rec = pred.predict_file(path, tmp_path / "overlay.jpg")
        assert rec.decision in ("fractured", "non-fractured"), rec.to_dict()
    assert (tmp_path / "overlay.jpg").is_file()


@pytest.mark.heavy
def test_the_training_benchmark_measures_every_stage_and_both_worker_counts(tmp_path, capsys):
    from benchmarks.training import main

    out = tmp_path / "bench"
    assert main(["--phantom-images", "60", "--size", "64", "--batch-size", "4", "--steps", "3", "--epochs", "2",
                 "--out", str(out)]) == 0
    res = json.loads((out / "training.json").read_text())
    rates = [res["decode"][k] for k in ("decode_1_thread", "decode_all_threads", "cache_cold_decode_and_write",
                                        "cache_warm_read")]
    rates += [res["augment_and_step"][k] for k in ("augment_serial", "augment_tf_data_parallel", "training_step_only")]
    rates += [res["training"][k]["images_per_second"] for k in ("one_worker", "two_workers")]
    assert all(0 < r < float("inf") for r in rates)
    assert len(res["training"]["two_workers"]["epoch_seconds"]) == 2
    assert res["training"]["two_over_one"] == pytest.approx(
        res["training"]["two_workers"]["images_per_second"] / res["training"]["one_worker"]["images_per_second"],
        rel=1e-2)
    md = (out / "training.md").read_text()
    assert "| training, 2 local workers |" in md and md.strip() in capsys.readouterr().out


@pytest.mark.slow
def test_onnx_formats_times_every_int8_format_against_the_float_file(tiny_bundle, tmp_path, capsys):
    from benchmarks.onnx_formats import main

    assert main([str(tiny_bundle), "--runs", "2", "--warmup", "0", "--calibration-images", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ms_p50"]) == {"float", "qdq_s8s8", "qdq_u8s8", "qdq_u8s8_reduced", "qoperator_u8s8", "bundle_int8"}
    assert all(v > 0 for v in result["ms_p50"].values()) and result["speed_vs_float"]["float"] == 1.0
    (tmp_path / "manifest.json").write_text("{}")
    assert main([str(tmp_path)]) == 2 and "no float ONNX file" in capsys.readouterr().err
