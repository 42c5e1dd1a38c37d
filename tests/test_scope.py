"""The out-of-scope gate and the calibrated probability, in the runtime (fast: no TensorFlow).

The gate's arrays, its manifest section and its arithmetic are tested here on numbers built for
the purpose; a real exported gate is tested in tests/test_fracture_map.py (the tiny map bundle)
and against the web app in tests/test_webapp.py."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime import scope
from edge_runtime.manifest import Calibration, ManifestError, ScopeInfo
from edge_runtime.scope import COLOUR, UNFAMILIAR, ScopeGate, colour_fraction


# ------------------------------------------------------------------------------------ colour

def _gray_rgb(h=200, w=160, seed=0):
    g = np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)
    return np.stack([g, g, g], -1)


def test_gray_stored_as_rgb_is_not_colour_and_a_tint_does_not_make_it_colour():
    rgb = _gray_rgb()
    assert colour_fraction(rgb) == 0.0
    tinted = np.clip(rgb.astype(int) + np.array([-20, 0, 35]), 0, 255).astype(np.uint8)  # a blue film base
    assert colour_fraction(tinted) < 0.02


def test_a_red_arrow_on_a_radiograph_is_too_few_pixels_to_count_but_a_colour_photo_is_refused():
    rgb = _gray_rgb()
    rgb[20:40, 20:60] = (230, 20, 20)  # 800 of 32,000 pixels: 2.5%
    assert 0.02 < colour_fraction(rgb) < scope.COLOUR_LIMIT
    from fracdata.ood import generate

    photos = [np.asarray(im.convert("RGB")) for _, im in generate("colour_photo", 6, seed=5)]
    assert sum(colour_fraction(p) > scope.COLOUR_LIMIT for p in photos) >= 5


def test_the_decoder_measures_colour_files_only(tmp_path):
    from edge_runtime.imageio import read_grayscale

    Image.fromarray(_gray_rgb()[..., 0]).save(tmp_path / "g.png")
    rgb = _gray_rgb()
    rgb[:, :80] = (40, 160, 60)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_grayscale(tmp_path / "g.png").colour is None
    assert read_grayscale(tmp_path / "c.png").colour > 0.4


# -------------------------------------------------------------------------------------- gate

def _gate(thresholds=(3.0, 3.0)):
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    precisions = np.stack([np.eye(2), np.diag([1.0, 0.25])])  # group 1 spreads twice as far along y
    return ScopeGate(("a", "b"), means, precisions, None if thresholds is None else np.array(thresholds))


def _pooled(f):
    """Pooled outputs whose square roots (what the gate measures) are `f` (non-negative)."""
    return np.asarray(f, np.float64) ** 2


def test_the_gate_refuses_only_what_lies_beyond_every_group():
    g = _gate()
    assert g.check(_pooled([0.5, 0.5]), None) == {"in_scope": True, "score": pytest.approx(math.hypot(0.5, 0.5) / 3, abs=1e-4)}
    far = g.check(_pooled([5.0, 5.0]), None)
    assert far["in_scope"] is False and far["code"] == UNFAMILIAR and far["score"] > 1
    # 5 along y from group b is 2.5 of its own spread: inside b, though 5 > 3 in plain distance
    assert g.check(_pooled([10.0, 5.0]), None)["in_scope"] is True
    assert g.distances(_pooled([10.0, 5.0]))[1] == pytest.approx(2.5)


def test_the_score_is_compared_at_one_with_the_thresholds_of_each_group():
    g = _gate((2.0, 4.0))
    assert g.score(_pooled([2.0, 0.0])) == pytest.approx(1.0)
    assert g.check(_pooled([2.0, 0.0]), None)["in_scope"] is True  # at the bound: kept
    assert g.check(_pooled([2.02, 0.0]), None)["in_scope"] is False


def test_a_gate_without_thresholds_measures_but_never_refuses():
    g = _gate(None)
    assert g.check(_pooled([100.0, 100.0]), None) == {"in_scope": True}
    assert g.distances(_pooled([100.0, 100.0])).min() > 50


def test_colour_is_refused_before_the_features_are_read():
    g = _gate()
    out = g.check(None, 0.5)
    assert out["in_scope"] is False and out["code"] == COLOUR and out["colour"] == 0.5
    assert g.check(_pooled([0.0, 0.0]), 0.01)["in_scope"] is True


def test_a_film_group_counts_for_flattened_films_only():
    # Group b photographs group a's radiographs: a photo's features sit farther out (here at x=10).
    g = ScopeGate(("a", "film/a"), np.array([[0.0, 0.0], [10.0, 0.0]]), np.stack([np.eye(2), np.eye(2)]),
                  np.array([3.0, 3.0]), film_groups=("film/a",))
    assert g.covers_film and list(g.applies(False)) == [True, False] and list(g.applies(True)) == [True, True]
    photo = _pooled([10.0, 1.0])
    assert g.check(photo, None, film=True)["in_scope"] is True
    assert g.check(photo, None)["in_scope"] is False, "a file is not measured against the film groups"
    near_a = _pooled([1.0, 0.0])
    assert g.check(near_a, None)["in_scope"] is True and g.check(near_a, None, film=True)["in_scope"] is True
    assert not _gate().covers_film and _gate().applies(True).all()


def _directed(file_t=0.0, film_t=2.0):
    """_gate() with an outlier direction along y: P(outside) = sigmoid(2 * sqrt-feature_y - 4)."""
    import dataclasses

    return dataclasses.replace(_gate(), outlier=np.array([0.0, 2.0, -4.0]), outlier_thresholds=(file_t, film_t))


def test_the_outlier_direction_refuses_past_its_threshold_whatever_the_distance():
    g = _directed()
    inside = _pooled([0.5, 1.0])  # logit 2 * 1 - 4 = -2: below the file threshold 0; distance 1.1 / 3
    rec = g.check(inside, None)
    assert rec["in_scope"] is True and rec["outlier_logit"] == pytest.approx(-2.0, abs=1e-4)
    assert rec["score"] == pytest.approx(math.hypot(0.5, 1.0) / 3, abs=1e-4), "the distance is the larger ratio here"
    # Within group a's distance (2.5 / 3 < 1) yet past the direction (logit 1 > 0): refused.
    past = _pooled([0.0, 2.5])
    assert g.distances(past).min() / 3 < 1
    out = g.check(past, None)
    assert out["in_scope"] is False and out["code"] == UNFAMILIAR
    assert out["score"] == pytest.approx(math.e, abs=1e-4), "e^(logit - threshold) = e^(1 - 0)"
    # At the threshold exactly the ratio is 1: kept, as the distance is at its bound.
    assert g.score(_pooled([0.0, 2.0])) == pytest.approx(1.0) and g.check(_pooled([0.0, 2.0]), None)["in_scope"]


def test_the_directions_ratio_refuses_past_a_high_threshold_and_stays_finite():
    """A ratio of probabilities would flatten out near 1 above a logit threshold of about 10 and
    stop refusing once rounded; the odds ratio does not, and a far input's score stays finite."""
    import dataclasses

    g = dataclasses.replace(_directed(file_t=30.0, film_t=30.0), thresholds=np.array([100.0, 100.0]))  # groups keep all
    assert g.check(_pooled([0.0, 16.0]), None)["in_scope"] is True  # logit 28
    out = g.check(_pooled([0.0, 17.5]), None)  # logit 31: past 30
    assert out["in_scope"] is False and out["score"] == pytest.approx(math.e, rel=1e-4)
    far = g.check(_pooled([0.0, 1e6]), None)
    assert far["in_scope"] is False and far["score"] == pytest.approx(math.exp(scope.RATIO_LOG_BOUND), rel=1e-6)
    json.dumps(far, allow_nan=False)  # a record stays valid JSON


def test_a_flattened_film_is_held_to_the_directions_film_threshold():
    g = _directed(file_t=0.0, film_t=2.0)
    photo = _pooled([0.0, 2.5])  # logit 1: past the file threshold, short of the film one
    assert g.check(photo, None)["in_scope"] is False and g.check(photo, None, film=True)["in_scope"] is True
    assert g.check(_pooled([0.0, 2.9]), None, film=True)["in_scope"] is True
    assert g.check(_pooled([0.0, 3.1]), None, film=True)["in_scope"] is False


def test_a_direction_without_thresholds_measures_but_never_refuses_and_nan_is_refused():
    import dataclasses

    g = dataclasses.replace(_directed(), outlier_thresholds=None)
    rec = g.check(_pooled([0.0, 2.5]), None)
    assert rec["in_scope"] is True and rec["outlier_logit"] == pytest.approx(1.0, abs=1e-4)
    bad = dataclasses.replace(_directed(), outlier=np.array([0.0, np.nan, 0.0]))
    assert bad.check(_pooled([0.1, 0.1]), None)["in_scope"] is False, "NaN is not in scope"


def test_the_web_apps_gate_scores_as_the_runtime_does(tmp_path):
    """scope.js's scopeScore and outlierLogit against ScopeGate, on random gates with and
    without a direction, for files and films."""
    from tests.node_port import run_node

    rng = np.random.default_rng(5)
    cases, gates = [], []
    for k in range(6):
        d, n = 5, 3
        a = rng.normal(size=(n, d, d))
        precisions = np.einsum("gij,gkj->gik", a, a) + np.eye(d)
        g = ScopeGate(("a", "b", "film/a"), rng.normal(1, 0.5, (n, d)), precisions, rng.uniform(1, 4, n),
                      film_groups=("film/a",),
                      outlier=None if k == 0 else rng.normal(0, 1, d + 1),
                      outlier_thresholds=None if k == 0 else tuple(rng.normal(0, 1, 2)))
        for _ in range(5):
            pooled = rng.uniform(0, 3, d) ** 2
            for film in (False, True):
                gates.append((g, pooled, film))
                cases.append({"pooled": pooled.tolist(), "film": film, "gate": {
                    "groups": n, "dim": d, "means": g.means.ravel().tolist(), "precisions": g.precisions.ravel().tolist(),
                    "thresholds": g.thresholds.tolist(), "filmOnly": [False, False, True],
                    "outlier": None if g.outlier is None else g.outlier.tolist(),
                    "outlierThresholds": None if g.outlier_thresholds is None else list(g.outlier_thresholds)}})
    got = run_node(tmp_path, "scope.js", ["scopeScore", "outlierLogit"],
                   "(c) => [scopeScore(Float64Array.from(c.pooled), c.gate, c.film), "
                   "outlierLogit(Float64Array.from(c.pooled), c.gate)]", cases)
    direction_decides = 0
    for (g, pooled, film), (score, z) in zip(gates, got):
        assert score == pytest.approx(g.score(pooled, film), rel=1e-9)
        want = g.outlier_logit(pooled)
        assert (z is None) == (want is None) and (want is None or z == pytest.approx(want, rel=1e-9, abs=1e-12))
        if want is not None and g.score(pooled, film) > np.min((g.distances(pooled) / g.thresholds)[g.applies(film)]):
            direction_decides += 1
    assert direction_decides >= 5, "the cases must exercise the direction's half of the score"


def test_exports_direction_separates_what_it_was_shown_and_its_thresholds_keep_each_source():
    """export.scope_fit.fit_direction folds the standardisation into one dot product on the raw
    pooled outputs (the runtime square-roots them); direction_threshold keeps 99% of *each*
    source's validation images, so a source that sits nearer the outside sets it."""
    from export.scope_fit import direction_threshold, fit_direction

    rng = np.random.default_rng(0)
    inside = rng.normal(3.0, 0.3, (300, 6)) ** 2  # square roots around 3
    outside = rng.normal(4.0, 0.3, (200, 6)) ** 2
    w = fit_direction(inside, outside)
    assert w.shape == (7,)
    gate = dataclasses_replace(_gate(), means=np.zeros((2, 6)), precisions=np.stack([np.eye(6)] * 2),
                               outlier=w, outlier_thresholds=(0.0, 0.0))
    z_in = np.array([gate.outlier_logit(p) for p in inside])
    z_out = np.array([gate.outlier_logit(p) for p in outside])
    assert np.mean(z_in < 0) > 0.95 and np.mean(z_out > 0) > 0.95
    sources = np.array(["a"] * 100 + ["b"] * 100)
    logits = np.r_[rng.normal(0, 1, 100), rng.normal(3, 1, 100)]
    t = direction_threshold(logits, sources)
    assert np.mean(logits[sources == "b"] <= t) >= 0.99 and t == pytest.approx(logits[sources == "b"].max())


def test_the_arrays_file_round_trips_through_the_bundle_format(tmp_path):
    means = np.random.default_rng(0).normal(size=(3, 4))
    precisions = np.stack([np.eye(4) * k for k in (1.0, 2.0, 3.0)])
    from edge_runtime.bundle import pack_arrays

    blob, index = pack_arrays({"means": means, "precisions": precisions})
    assert len(blob) == 4 * (12 + 48) and index["precisions"] == {"offset": 12, "shape": [3, 4, 4]}
    data = np.frombuffer(blob, "<f4")
    np.testing.assert_allclose(data[12:].reshape(3, 4, 4), precisions)
    np.testing.assert_allclose(data[:12].reshape(3, 4), means, rtol=1e-6)


# ------------------------------------------------------------------------------- the manifest

class _Model:
    outputs = {"map": (1, 8, 8, 1), "pooled": (1, 4)}


def _section():
    return {"method": "mahalanobis", "file": "scope.f32", "groups": ["a", "b"], "colour_limit": 0.05,
            "arrays": {"means": {"offset": 0, "shape": [2, 4]}, "precisions": {"offset": 8, "shape": [2, 4, 4]}},
            "thresholds": {"onnx_int8": [3.0, 4.0]}}


def test_the_scope_section_is_checked_field_by_field():
    arts = {"onnx_int8": object()}
    info = ScopeInfo.from_dict(_section(), _Model, arts, "accepted")
    assert info.thresholds == {"onnx_int8": (3.0, 4.0)} and info.groups == ("a", "b") and info.film_groups == ()
    filmed = {**_section(), "groups": ["a", "film/a"], "film_groups": ["film/a"]}
    assert ScopeInfo.from_dict(filmed, _Model, arts, "accepted").film_groups == ("film/a",)
    for film_groups in (["film/b"], ["film/a", "film/a"], ["a"]):  # no such file group; repeated; a file group
        with pytest.raises(ManifestError, match=r"scope\.film_groups"):
            ScopeInfo.from_dict({**filmed, "film_groups": film_groups}, _Model, arts, "accepted")
    for mutate, field in (
            (lambda s: s["arrays"]["precisions"].update(shape=[2, 4, 3]), "scope.arrays.precisions.shape"),
            (lambda s: s["arrays"]["means"].update(shape=[3, 4]), "scope.arrays.means.shape"),
            (lambda s: s["thresholds"].update(onnx_int8=[3.0]), "scope.thresholds.onnx_int8"),
            (lambda s: s["thresholds"].update(onnx_int8=[3.0, -1.0]), "scope.thresholds.onnx_int8"),
            (lambda s: s["thresholds"].update(tflite_int8=[1.0, 1.0]), "scope.thresholds.tflite_int8"),
            (lambda s: s.update(file="../scope.f32"), "scope.file"),
            (lambda s: s.update(method="energy"), "scope.method"),
            (lambda s: s.update(groups=["a", "a"]), "scope.groups"),
            (lambda s: s.update(film_groups=["c"]), "scope.film_groups"),
            (lambda s: s.update(film_groups=["b", "b"]), "scope.film_groups"),
            (lambda s: s.update(film_groups=["a", "b"]), "scope.film_groups"),  # a file needs a group too
            (lambda s: s.update(film_groups="b"), "scope.film_groups")):
        bad = copy.deepcopy(_section())
        mutate(bad)
        with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
            ScopeInfo.from_dict(bad, _Model, arts, "accepted")


def _with_outlier(section=None):
    s = section or _section()
    s["arrays"]["outlier"] = {"offset": 40, "shape": [5]}
    s["outlier"] = {"method": "logistic", "thresholds": {"onnx_int8": {"file": 0.5, "film": 1.0}}}
    return s


def test_the_outlier_direction_is_checked_field_by_field():
    arts = {"onnx_int8": object()}
    info = ScopeInfo.from_dict(_with_outlier(), _Model, arts, "accepted")
    assert info.outlier_thresholds == {"onnx_int8": (0.5, 1.0)} and info.arrays["outlier"] == (40, (5,))
    assert ScopeInfo.from_dict(_section(), _Model, arts, "accepted").outlier_thresholds == {}
    for mutate, field in (
            (lambda s: s["arrays"]["outlier"].update(shape=[4]), "scope.arrays.outlier.shape"),
            (lambda s: s.pop("outlier"), "scope.outlier"),
            (lambda s: s["arrays"].pop("outlier"), "scope.outlier"),
            (lambda s: s["outlier"]["thresholds"].update(onnx_int8={"file": 0.5}), "scope.outlier.thresholds.onnx_int8.film"),
            (lambda s: s["outlier"]["thresholds"].update(onnx_int8={"file": float("nan"), "film": 1.0}),
             "scope.outlier.thresholds.onnx_int8.file"),
            (lambda s: s["outlier"]["thresholds"].update(tflite_int8={"file": 0.5, "film": 1.0}),
             "scope.outlier.thresholds.tflite_int8"),
            (lambda s: s["outlier"].update(thresholds={}), "scope.outlier.thresholds")):
        bad = _with_outlier()
        mutate(bad)
        with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
            ScopeInfo.from_dict(bad, _Model, arts, "accepted")
    # export is still choosing them: a pending bundle may lack them
    pending = _with_outlier()
    pending["outlier"]["thresholds"] = {}
    assert ScopeInfo.from_dict(pending, _Model, arts, "pending").outlier_thresholds == {}


def test_an_accepted_bundle_must_give_every_artifact_its_thresholds():
    arts = {"onnx_int8": object(), "tflite_int8": object()}
    with pytest.raises(ManifestError, match="no thresholds for tflite_int8"):
        ScopeInfo.from_dict(_section(), _Model, arts, "accepted")
    assert ScopeInfo.from_dict(_section(), _Model, arts, "pending").thresholds  # export is still choosing them

    class NoPooled:
        outputs = {"map": (1, 8, 8, 1)}

    with pytest.raises(ManifestError, match="no 'pooled' output"):
        ScopeInfo.from_dict(_section(), NoPooled, arts, "pending")


# ------------------------------------------------------------------------------- calibration

def test_platt_calibration_keeps_the_order_and_matches_exports_arithmetic():
    from export.probability import apply

    cal = Calibration.from_dict({"method": "platt", "a": 3.39, "b": 3.25})
    ps = np.array([1e-9, 0.01, 0.2, 0.34, 0.5, 0.9, 1 - 1e-9])
    got = np.array([cal.apply(p) for p in ps])
    assert np.all(np.diff(got) > 0)
    np.testing.assert_allclose(got, apply(ps, {"a": 3.39, "b": 3.25}), rtol=1e-12)
    assert cal.apply(0.5) == pytest.approx(1 / (1 + math.exp(-3.25)))
    for bad in ({"method": "platt", "a": 0.0, "b": 0.0}, {"method": "platt", "a": -1.0, "b": 0.0},
                {"method": "isotonic", "a": 1.0, "b": 0.0}, {"method": "platt", "a": 1.0, "b": float("nan")}):
        with pytest.raises(ManifestError, match="decision.calibration"):
            Calibration.from_dict(bad)


def test_ece_of_a_calibrated_sample_is_small_and_of_an_overconfident_one_large():
    from export.probability import ece, ece_ci, fit_platt

    rng = np.random.default_rng(1)
    p_true = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < p_true).astype(int)
    assert ece(p_true, y) < 0.03
    over = 1 / (1 + np.exp(-4 * np.log(p_true / (1 - p_true))))  # the same ranking, four times too sure
    assert ece(over, y) > 0.1
    cal = fit_platt(over, y)
    assert cal["a"] == pytest.approx(0.25, rel=0.15)
    from export.probability import apply

    assert ece(apply(over, cal), y) < 0.03
    ci = ece_ci(over, y, n_boot=200)
    assert ci["ci95"][0] <= ci["ece"] <= ci["ci95"][1]
    with pytest.raises(ValueError, match="both|fractured and non-fractured"):
        fit_platt(np.array([0.2, 0.7]), np.array([1, 1]))


def test_a_score_that_cannot_be_computed_is_refused_not_waved_through():
    g = ScopeGate(("a",), np.zeros((1, 2)), np.full((1, 2, 2), np.nan), np.array([3.0]))
    out = g.check(_pooled([0.1, 0.1]), None)
    assert out["in_scope"] is False and out["code"] == UNFAMILIAR


def test_a_direction_needs_format_version_5_and_an_older_runtime_refuses_it(tmp_path):
    """A bundle with an outlier direction is version 5; one that claims 4 is refused (a version-4
    runtime would run it without the direction), and so is a direction without its section."""
    import shutil

    from edge_runtime.bundle import REPO_BUNDLE, load_bundle, seal
    from edge_runtime.manifest import READABLE_VERSIONS

    folder = tmp_path / "b"
    shutil.copytree(REPO_BUNDLE, folder)
    m = json.loads((folder / "manifest.json").read_text())
    if "outlier" not in m["scope"]:
        pytest.skip("the reference bundle has no outlier direction")
    assert m["format_version"] == 5 and 5 in READABLE_VERSIONS
    load_bundle(folder)
    for mutate in (lambda d: d.update(format_version=4), lambda d: d["scope"].pop("outlier"),
                   lambda d: d["scope"]["arrays"].pop("outlier"), lambda d: d["scope"].update(outlier=None)):
        bad = copy.deepcopy(m)
        mutate(bad)
        (folder / "manifest.json").write_text(json.dumps(seal(bad)))
        with pytest.raises((ManifestError, ValueError), match="format version 5|scope.outlier"):
            load_bundle(folder)


def test_an_empty_scope_section_is_refused_not_read_as_no_gate(tmp_path):
    """A sealed manifest whose `scope` is {} must not load as a bundle without a gate."""
    import json
    import shutil

    from edge_runtime.bundle import REPO_BUNDLE, load_bundle, seal
    from edge_runtime.manifest import ManifestError

    copy = tmp_path / "b"
    shutil.copytree(REPO_BUNDLE, copy)
    m = json.loads((copy / "manifest.json").read_text())
    assert m.get("scope"), "the reference bundle ships a gate"
    for empty in ({}, []):
        m["scope"] = empty
        (copy / "manifest.json").write_text(json.dumps(seal(m)))
        with pytest.raises((ManifestError, ValueError), match="scope"):
            load_bundle(copy)


def test_a_colour_dicom_is_measured_like_a_colour_file(tmp_path):
    pytest.importorskip("pydicom")
    from dicom_factory import write_dicom_rgb
    from edge_runtime.dicom import read_dicom
    from fracdata.ood import generate

    rgb = np.asarray(generate("colour_photo", 1, seed=3)[0][1].convert("RGB"))
    path = write_dicom_rgb(tmp_path / "photo.dcm", rgb)
    got = read_dicom(path, draft_size=(256, 256))
    assert got.colour is not None and got.colour > scope.COLOUR_LIMIT
    assert got.colour == pytest.approx(colour_fraction(rgb[::got_factor(rgb), ::got_factor(rgb)]), abs=0.02)


def got_factor(rgb):
    from edge_runtime.imageio import reduce_factor

    return reduce_factor((rgb.shape[1], rgb.shape[0]), (256, 256))


def test_the_cli_exits_1_when_an_input_is_out_of_scope(tmp_path):
    import subprocess
    import sys

    from fracdata.ood import generate

    generate("colour_photo", 1, seed=2)[0][1].convert("RGB").save(tmp_path / "photo.png")
    run = subprocess.run([sys.executable, "-m", "edge_runtime", "predict", "--json", str(tmp_path / "photo.png")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    import json

    rec = json.loads(run.stdout.splitlines()[0])
    assert rec["decision"] == "out-of-scope" and rec["scope"]["code"] == "colour" and "probability" not in rec


def test_a_model_file_without_the_pooled_output_is_refused_when_the_bundle_has_a_gate(monkeypatch):
    """Without its features the gate could not refuse anything: the bundle is refused instead."""
    from edge_runtime import backends
    from edge_runtime.bundle import BundleError
    from edge_runtime.predictor import Predictor

    assert "pooled" in Predictor(gradcam=False).session.roles()
    for cls in (backends.TFLiteSession, backends.OnnxSession):
        monkeypatch.setattr(cls, "roles", lambda self: {"map"})
    with pytest.raises(BundleError, match="'pooled' output"):
        Predictor(gradcam=False)


def test_the_web_apps_film_group_prefix_is_the_runtimes():
    """bundle.js checks a manifest's film groups with its own FILM_PREFIX (it parses the manifest
    before any config arrives): it must be edge_runtime.scope's, or one runtime refuses a bundle
    the other accepts."""
    import re

    from edge_runtime.scope import FILM_PREFIX

    src = (Path(__file__).resolve().parents[1] / "webapp" / "src" / "lib" / "scope.js").read_text()
    found = re.findall(r'export const FILM_PREFIX = "([^"]*)";', src)
    assert found == [FILM_PREFIX]


def test_exports_thresholds_count_training_images_scored_without_their_fold():
    """A distance is smaller on the images it was fitted on, and a few validation images put a 99% tail
    at their largest: cross_fits refits the gate without each fold, held_out scores each training
    image under the fit that never saw it, and thresholds from validation and those keep about 99%
    of new images of the group, where validation alone keeps fewer."""
    from export.scope_fit import FOLDS, cross_fits, held_out, thresholds

    rng = np.random.default_rng(5)
    dim = 6
    mix = rng.normal(0, 1, (dim, dim))

    def draw(n):  # heavy-tailed features, >= 0 as pooled ReLU averages are; the gate square-roots them
        x = rng.standard_t(4, (n, dim)) @ mix + 12.0
        return np.maximum(x, 0.0) ** 2

    train, val, new = draw(300), draw(12), draw(4000)
    folds = rng.integers(0, FOLDS, len(train))
    outside = draw(100) * 3.0
    fits = cross_fits(train, ["a"] * len(train), folds, ["a"], outside)
    assert len(fits) == FOLDS and all("direction" in f for f in fits)
    for k, fit in enumerate(fits):  # fold k's fit never saw fold k
        np.testing.assert_allclose(fit["means"][0], np.sqrt(train[folds != k]).mean(0), rtol=1e-9)
    held_d, held_z = held_out(fits, train, ["a"] * len(train), folds, ["a"])
    assert np.isfinite(held_d).all() and np.isfinite(held_z).all()
    full = cross_fits(train, ["a"] * len(train), np.full(len(train), FOLDS), ["a"])[0]  # every row in the fit
    in_sample, _ = held_out([full] * FOLDS, train, ["a"] * len(train), folds, ["a"])
    assert np.median(held_d) > np.median(in_sample)
    gate = ScopeGate(("a",), full["means"], full["precisions"], None)
    val_d = np.stack([gate.distances(p) for p in val])
    new_d = np.array([gate.distances(p)[0] for p in new])
    t_val = thresholds(val_d, ["a"] * len(val), ["a"])[0]
    t_both = thresholds(val_d, ["a"] * len(val), ["a"], held=held_d, held_groups=["a"] * len(train))[0]
    kept_val, kept_both = np.mean(new_d <= t_val), np.mean(new_d <= t_both)
    assert kept_both >= 0.97 and kept_both > kept_val, (kept_val, kept_both)
    # an image of a group the gate has no distance for counts for nothing
    d, _ = held_out(fits, train[:2], ["a", "tiny"], folds[:2], ["a"])
    assert np.isfinite(d[0]) and np.isnan(d[1])


@pytest.mark.heavy
@pytest.mark.slow
def test_a_classifier_bundle_gets_the_gate_on_its_blocks_features(tiny_run, phantom_dir, tmp_path):
    """The paper's CNN family ships the gate too: its three blocks' features, averaged over the
    bundle's eight views as the runtime averages them, fitted, thresholded and self-tested."""
    from conftest import OPEN_TOLERANCES
    from edge_runtime import selftest
    from edge_runtime.bundle import load_bundle
    from edge_runtime.predictor import Predictor
    from export.quantize import main as export_main
    from fracdata.ood import write_ood_set

    out = tmp_path / "bundle"
    assert export_main([str(tiny_run), "--out", str(out), "--calibration-size", "16", "--scope-size", "60",
                        "--scope-photos", "0", "--scope-outliers", "4", "--artifacts", "onnx_float,tflite_int8",
                        *OPEN_TOLERANCES]) == 0
    bundle = load_bundle(out)
    m = bundle.manifest
    assert bundle.spec.n_views == 8 and m["gradcam"] is not None  # a classifier: Grad-CAM, and now a gate
    assert m["scope"]["features"]["layers"] == ["block1_conv", "block2_conv", "block3_conv"]
    assert m["model"]["outputs"]["pooled"]["shape"] == [1, 32 + 64 + 128]
    assert set(m["scope"]["thresholds"]) == set(m["artifacts"]) and m["scope"]["outlier"]["thresholds"]
    for key in m["artifacts"]:
        assert 0.9 <= m["artifacts"][key]["metrics"]["scope"]["training_out_of_fold_kept"] <= 1.0
        st = selftest.run(bundle, artifact=key)
        assert st["passed"] is True and st["scope_max_diff"] <= st["scope_tolerance"], st
    # what the gate scores: radiographs of the kind it was fitted on kept, drawn text pages and CT
    # slices refused
    pred = Predictor(bundle, artifact="onnx_float")
    near = [pred.predict_file(p) for p in sorted((phantom_dir / "images").rglob("*.jpg"))[:16]]
    assert near and sum(r.scope["in_scope"] for r in near) >= 0.75 * len(near), [r.scope for r in near]
    ood = write_ood_set(tmp_path / "ood", 3, 5, kinds=("text_page", "ct_slice"), progress=False)
    far = [pred.predict_file(p) for p in sorted(ood.rglob("*")) if p.suffix in (".png", ".jpg")]
    assert len(far) == 6 and sum(not r.scope["in_scope"] for r in far) >= 4, [r.scope for r in far]
    # and the measuring tool reads a classifier bundle too (its alternatives: the two-class energy and max-logit)
    from train.scope_evaluate import evaluate

    result = evaluate(tiny_run, out, ood, None, progress=False)
    assert result["sets"]["ood/text_page"]["n"] == 3 and result["sets"]["ood/text_page"]["gate"] is not None
    assert all(e["energy"] is not None for e in result["sets"].values())
    # each out-of-scope image's verdict by name (a real set holds a handful), agreeing with the rate
    files = result["sets"]["ood/text_page"]["files"]
    assert sorted(files) == sorted(f"text_page/{p.name}" for p in (ood / "text_page").iterdir())
    assert sum(v != "answered" for v in files.values()) == round(3 * result["sets"]["ood/text_page"]["gate"])
    assert "files" not in result["sets"]["val/phantom"]


def test_the_gate_is_fitted_on_features_averaged_over_the_views_as_the_runtime_averages_them():
    from edge_runtime.predictor import _mean_pooled
    from edge_runtime.preprocess import PreprocessSpec, views
    from export.scope_fit import pooled_features

    class Serving:  # 'pooled': a feature that a turn or a mirror changes (the mean of the top-left quarter)
        def predict(self, x, batch_size=32, verbose=0):
            q = x[:, : x.shape[1] // 2, : x.shape[2] // 2, 0]
            return {"pooled": np.stack([q.mean(axis=(1, 2)), x[..., 0].mean(axis=(1, 2))], axis=1)}

    rng = np.random.default_rng(0)
    images = rng.random((70, 16, 16, 1)).astype(np.float32)  # more than one chunk of 64
    for mode in ("single", "dihedral"):
        spec = PreprocessSpec(size=16, resize="letterbox", normalize="window", views=mode)
        got = pooled_features(Serving(), spec, images)
        want = [_mean_pooled([{"pooled": Serving().predict(v[None])["pooled"]} for v in views(x, spec)])
                for x in images]
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-6)
        if mode == "dihedral":  # the views matter: one view alone is not what the runtime measures
            assert not np.allclose(got[:, 0], Serving().predict(images)["pooled"][:, 0])
