"""Localisation scores (pointing game, energy in boxes), overlays with boxes, colour scale and
probability, and `python -m train.evaluate --bundle` through the edge runtime: on a tiny bundle with
int8 artifacts (phantoms with boxes) and on the released bundle with real radiographs when present."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime.preprocess import PreprocessSpec
from train.localisation import box_mask, heat_on_image, score, summarise

FOREARM = Path(__file__).resolve().parents[2] / "shared" / "data" / "forearm-fractures"
REFERENCE = Path(__file__).resolve().parents[1] / "models" / "reference-bundle"


def test_pointing_game_and_energy_in_boxes():
    heat = np.zeros((100, 100))
    heat[20:30, 60:70] = 1.0  # peak region, inside the box below
    heat[80:90, 10:20] = 0.5
    s = score(heat, [(0.55, 0.15, 0.75, 0.35)])
    assert s["peak_in_box"] is True and s["energy_in_boxes"] == pytest.approx(100 / 150)
    assert s["box_area"] == pytest.approx(0.04) and s["centre_in_box"] is False
    miss = score(heat, [(0.05, 0.75, 0.12, 0.85)])
    assert miss["peak_in_box"] is False and 0 < miss["energy_in_boxes"] < 0.5
    blank = score(np.zeros((10, 10)), [(0.0, 0.0, 0.5, 0.5)])
    assert blank["blank"] and blank["peak_in_box"] is False and blank["energy_in_boxes"] == 0.0
    assert box_mask([(0.501, 0.501, 0.502, 0.502)], (8, 8)).sum() == 1  # thinner than a cell: its cell


def test_summary_reports_chance_per_region_and_a_wilson_interval():
    heat = np.zeros((10, 10))
    heat[1, 1] = 1
    hit, miss = score(heat, [(0.0, 0.0, 0.3, 0.3)]), score(heat, [(0.6, 0.6, 0.9, 0.9)])
    s = summarise([hit, hit, miss], ["hand", "leg", "leg"])
    assert s["n"] == 3 and s["pointing_game"] == pytest.approx(2 / 3)
    lo, hi = s["pointing_game_ci95"]
    assert 0.1 < lo < 2 / 3 < hi < 1
    assert s["chance"]["box_share_of_image"] == pytest.approx(0.09)
    assert s["per_region"]["leg"]["n"] == 2 and s["per_region"]["hand"]["pointing_game"] == 1.0


def test_heat_is_mapped_onto_the_image_also_when_letterboxed():
    raw = np.zeros((4, 4), np.float32)
    raw[0, 3] = 1.0
    up = heat_on_image(raw, PreprocessSpec(size=32))
    assert up.shape == (32, 32) and np.unravel_index(np.argmax(up), up.shape)[1] >= 24
    lb = PreprocessSpec(size=32, resize="letterbox")
    on_image = heat_on_image(raw, lb, (100, 50))  # a tall image fills the middle half
    assert on_image.shape == (32, 16)
    with pytest.raises(ValueError, match="needs the image's shape"):
        heat_on_image(raw, lb)


def test_overlay_draws_boxes_colour_scale_and_probability(tmp_path):
    from edge_runtime.overlay import BOX_COLOUR, save_overlay

    gray = np.full((200, 160), 0.3, np.float32)
    heat = np.zeros((8, 8), np.float32)
    heat[2, 2] = 1.0
    plain = Image.open(save_overlay(tmp_path / "plain.png", gray, heat, legend=False))
    assert plain.size == (160, 200)  # the old overlay, unchanged when asked
    full = Image.open(save_overlay(tmp_path / "full.png", gray, heat, boxes=[(0.5, 0.5, 0.9, 0.9)],
                                   probability=0.873, threshold=0.591))
    assert full.width > 160 and full.height > 200  # colour bar at the right, caption below
    px = np.asarray(full)
    assert tuple(px[100, 80]) == BOX_COLOUR  # the box's top-left corner (0.5 of 159, 0.5 of 199)
    bar = px[20:180, 160:full.width]
    assert (bar[..., 0] > 180).any() and (bar[..., 2] > 100).any()  # red at the top, blue at the bottom
    caption = px[205:, :150]
    assert (caption > 200).any()  # text was written
    no_caption = Image.open(save_overlay(tmp_path / "n.png", gray, heat))
    assert no_caption.height == 200 and no_caption.width == full.width  # nothing to say: bar only


def test_overlay_banner_and_disclaimer_travel_with_the_image_and_wrap_to_its_width(tmp_path):
    from edge_runtime.labels import OVERLAY_BANNER, OVERLAY_DISCLAIMER
    from edge_runtime.overlay import BANNER_COLOUR, save_overlay

    heat = np.zeros((8, 8), np.float32)
    sizes = {}
    for w in (120, 600):
        gray = np.full((300, w), 0.3, np.float32)
        plain = Image.open(save_overlay(tmp_path / f"p{w}.png", gray, heat, probability=0.2, threshold=0.5))
        marked = Image.open(save_overlay(tmp_path / f"m{w}.png", gray, heat, probability=0.2, threshold=0.5,
                                         banner=OVERLAY_BANNER, footer=OVERLAY_DISCLAIMER))
        px = np.asarray(marked)
        assert marked.width == plain.width and marked.height > plain.height
        assert tuple(px[1, 1]) == BANNER_COLOUR and tuple(np.asarray(plain)[1, 1]) != BANNER_COLOUR
        strip = px[: int(np.argmin((px[:, 1] == BANNER_COLOUR).all(axis=-1)))]
        assert (strip.max(axis=-1) < 60).any()  # dark banner text on the strip
        sizes[w] = marked.height - plain.height
    assert sizes[120] > sizes[600]  # a narrow image wraps the banner and the disclaimer onto more lines


@pytest.mark.parametrize("size", [(16, 16), (768, 64), (768, 128), (40, 300)])
def test_every_overlay_text_wraps_inside_the_overlay_however_narrow(tmp_path, size):
    """Nothing is shrunk away or cut off: each line fits the overlay's width, and the lines hold
    every character of the probability, the threshold, the banner and the disclaimer."""
    from PIL import ImageDraw

    from edge_runtime.labels import OVERLAY_BANNER, OVERLAY_DISCLAIMER
    from edge_runtime.overlay import _font, _wrap, caption_lines, save_overlay

    h, w = size
    img = Image.open(save_overlay(tmp_path / "o.png", np.full((h, w), 0.3, np.float32), np.zeros((4, 4), np.float32),
                                  probability=0.4321, threshold=0.3456, banner=OVERLAY_BANNER,
                                  footer=OVERLAY_DISCLAIMER, absolute=True))
    assert img.width > w and img.height > h
    draw = ImageDraw.Draw(img)
    font = _font(9)
    for text in (*caption_lines(0.4321, 0.3456, False), OVERLAY_BANNER, OVERLAY_DISCLAIMER):
        lines = _wrap(draw, text, font, 30)
        assert all(draw.textbbox((0, 0), t, font=font)[2] <= 30 or len(t) == 1 for t in lines)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")


@pytest.mark.slow
def test_training_metrics_and_export_report_score_localisation(tiny_run, tiny_bundle):
    """Phantoms carry their fracture boxes (Annotations/YOLO): the run's metrics and export's check
    score the float Grad-CAM, and every artifact's (int8 included) beside it."""
    m = json.loads((tiny_run / "metrics.json").read_text())
    loc = m["test"]["localisation"]["reference_float_gradcam"]
    assert loc["n"] >= 1 and 0 <= loc["pointing_game"] <= 1 and "chance" in loc
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["split"]["duplicates"]["across_splits"] == 0
    assert run["data"]["provenance"]["annotations"] == "Annotations/YOLO"
    man = json.loads((tiny_bundle / "manifest.json").read_text())
    assert man["reference"]["float_keras"]["localisation"]["n"] == loc["n"]
    for key in ("tflite_int8", "onnx_int8", "tflite_float", "onnx_float"):
        a = man["artifacts"][key]["metrics"]["localisation"]
        assert a["n"] == loc["n"] and 0 <= a["vs_float_keras"]["same_pointing_verdict"] <= 1
    assert man["artifacts"]["tflite_float"]["metrics"]["localisation"]["vs_float_keras"]["same_pointing_verdict"] == 1.0
    report = (tiny_bundle / "report.md").read_text()
    assert "peak in a box" in report and "tflite_int8 (edge runtime)" in report


@pytest.mark.slow
def test_bundle_evaluation_with_int8_artifacts_beside_float(tiny_bundle, phantom_dir, tmp_path, capsys):
    from train.evaluate import main as evaluate_main

    out = tmp_path / "ev"
    assert evaluate_main(["--bundle", str(tiny_bundle), "--data", str(phantom_dir), "--out", str(out),
                          "--limit", "30", "--overlays", "3", "--bootstrap", "50", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["data"]["evaluated"] == 30 and r["data"]["includes_the_bundles_training_data"] is True
    assert "PHANTOM" in r["label"]
    ref = r["bundle"]["gradcam_reference"]
    assert r["artifacts"][ref]["precision"] == "float32"
    for key in ("tflite_int8", "onnx_int8"):
        a = r["artifacts"][key]
        assert a["classification"]["roc_auc"]["auc"] is not None  # both classes among phantoms
        assert a["localisation"]["n"] >= 1
        v = a["vs_reference"]
        assert v["reference"] == ref and v["heatmap_correlation_mean"] > 0.5 and v["localisation"]["n"] >= 1
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 30 and "peak_in_box_tflite_int8" in rows[0]
    assert 1 <= len(r["overlays"]) <= 3 and all((out / o).is_file() for o in r["overlays"])


@pytest.mark.real_data
@pytest.mark.skipif(not FOREARM.is_dir(), reason="../shared/data/forearm-fractures is not present here")
def test_reference_bundle_on_real_radiographs_without_tensorflow(tmp_path):
    """The issue's command on a few real radiographs (read in place, never copied): positives
    only, so no AUC but sensitivity, the distribution and localisation; no TensorFlow imported."""
    out = tmp_path / "forearm"
    code = ("import sys, json; from train.evaluate import main; "
            f"rc = main(['--bundle', {str(REFERENCE)!r}, '--data', {str(FOREARM)!r}, '--limit', '12', "
            f"'--overlays', '2', '--out', {str(out)!r}, '--json']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(res.stdout)
    assert "PHANTOM" in r["label"] and "real radiographs" in r["label"]
    a = r["artifacts"]["tflite_float"] if "tflite_float" in r["artifacts"] else next(iter(r["artifacts"].values()))
    c = a["classification"]
    assert c["roc_auc"] is None and "no non-fractured" in c["why_no_auc"]
    assert 0 <= c["sensitivity"] <= 1 and c["fractured"] == a["localisation"]["n"]
    assert a["probabilities"]["fractured"]["n"] == c["fractured"]
    g = a["out_of_scope"]  # the reference bundle's gate, applied as the device applies it
    key = next(k for k, v in r["artifacts"].items() if v is a)
    verdicts = [row[f"scope_{key}"] for row in csv.DictReader(open(out / "predictions.csv"))]
    assert g["n"] == r["data"]["evaluated"] == len(verdicts) and g["refused"] == sum(v != "in" for v in verdicts)
    assert len(r["overlays"]) == 2 and all(Image.open(out / o).size[0] > 100 for o in r["overlays"])
