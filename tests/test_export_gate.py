"""export.check's gate, criterion by criterion, on answers built by hand (no model, no artifact).

Each refusal test makes exactly one criterion fail while every other passes, so a check that was
switched off (or that fired on everything) is seen; the metrics are measured by `compare`, the
module's own arithmetic. Boundaries: every limit is inclusive (`>`/`<` in `failures`), so a value
exactly at the limit passes and the next float beyond it is refused.

Scores are multiples of 1/512 and AUCs multiples of 1/1024, so the figures below are exact.
"""

import numpy as np
import pytest

from export.check import GRADCAM_FLOAT_TOLERANCE, MAP_FLOAT_TOLERANCE, Tolerances, classification, compare, failures

T = 0.5  # the decision threshold
HIGH = 0.75 + np.arange(16) / 256  # fractures the model sees: 0.75 .. 0.809
LOW = (2 * np.arange(1, 17) + 1) / 512  # fractures it misses: (k + 1/2)/256, each between two negatives
NEG = np.arange(32) / 256  # non-fractured: 0 .. 0.121
Y = np.r_[np.ones(32, int), np.zeros(32, int)]
P = np.r_[HIGH, LOW, NEG]
LOW_AT = slice(16, 32)  # where LOW sits in P
N = len(Y)
DEFAULT = Tolerances()


def refused(m, tol=DEFAULT, precision="int8"):
    return failures(m, tol, precision)


def just_inside(limit, direction):
    """The next float past `limit` towards `direction` (a tolerance the measured value just breaks)."""
    return float(np.nextafter(limit, direction))


def test_the_hand_made_reference_is_what_the_comments_say():
    m = compare(Y, P, P.copy(), T)
    # HIGH beats all 32 negatives (512 pairs); the k-th LOW beats negatives 0..k (sum k+1, k=1..16 = 152).
    assert m["auc"] == (512 + 152) / 1024 and m["delta_auc"] == 0
    assert m["agreement"] == 1.0 and m["mean_abs_diff"] == 0.0 and m["max_abs_diff"] == 0.0
    assert m["sensitivity"] == 0.5 and m["specificity"] == 1.0 and m["n"] == N


# --- a faithful copy ------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["float32", "int8"])
@pytest.mark.parametrize("kind", ["gradcam", "map"])
def test_a_faithful_copy_is_accepted(precision, kind):
    rng = np.random.default_rng(0)
    maps = rng.random((N, 4, 4))
    real = np.arange(N) % 2 == 0
    sources = np.where(real, "fracatlas", "phantom")
    m = compare(Y, P, P.copy(), T, maps, maps.copy(), kind, real, sources)
    assert set(m["by_source"]) == {"fracatlas", "phantom"}
    if kind == "map":
        assert m["map_correlation_real_mean"] == pytest.approx(1) and m["map_max_abs_diff"] == 0
    else:
        assert m["gradcam_correlation_mean"] == pytest.approx(1) and m["gradcam_max_abs_diff"] == 0
    assert refused(m, precision=precision) == []


# --- |ΔAUC|, agreement, mean |Δp|, max |Δp| -------------------------------------------------------

@pytest.mark.parametrize("step", [+1 / 256, -1 / 256], ids=["AUC rises", "AUC falls"])
def test_auc_change_alone_is_refused_in_either_direction(step):
    """Each missed fracture moves past one negative, never across the threshold: 16 of 1024 pairs."""
    p_art = P.copy()
    p_art[LOW_AT] += step
    m = compare(Y, P, p_art, T)
    assert m["delta_auc"] == np.sign(step) * 16 / 1024  # 0.0156 > 0.01
    assert m["agreement"] == 1.0 and m["max_abs_diff"] == 1 / 256 and m["mean_abs_diff"] == 16 / 256 / N
    bad = refused(m)
    assert len(bad) == 1 and bad[0].startswith("|ΔAUC| ") and "0.0156 > 0.01" in bad[0]
    assert refused(m, Tolerances(max_auc_drop=16 / 1024)) == []  # exactly at the limit: passes
    assert len(refused(m, Tolerances(max_auc_drop=just_inside(16 / 1024, 0)))) == 1


def test_agreement_alone_is_refused():
    """Three negatives sit just below the threshold; the copy lifts them just above it."""
    p, p_art = P.copy(), P.copy()
    near = [32, 33, 34]  # negatives: above every missed fracture, below every seen one, in both
    p[near], p_art[near] = 126 / 256, 130 / 256
    m = compare(Y, p, p_art, T)
    assert m["agreement"] == 61 / 64 and m["delta_auc"] == 0
    assert m["max_abs_diff"] == 4 / 256 and m["mean_abs_diff"] < DEFAULT.max_mean_abs_diff
    bad = refused(m)
    assert len(bad) == 1 and bad[0].startswith("agreement ") and "0.9531 < 0.98" in bad[0]
    assert refused(m, Tolerances(min_agreement=61 / 64)) == []  # exactly at the limit: passes
    assert len(refused(m, Tolerances(min_agreement=just_inside(61 / 64, 1)))) == 1


def test_at_the_default_agreement_limit_two_changed_decisions_in_a_hundred_pass_and_three_do_not():
    y = np.r_[np.ones(50, int), np.zeros(50, int)]
    p = np.r_[0.75 + np.arange(50) / 256, np.arange(50) / 256]
    p[50:53] = 126 / 256  # three negatives just below the threshold
    for flipped, verdict in ((2, []), (3, ["agreement 0.9700 < 0.98"])):
        p_art = p.copy()
        p_art[50:50 + flipped] = 130 / 256  # just above it: still below every positive
        m = compare(y, p, p_art, T)
        assert m["agreement"] == 1 - flipped / 100 and m["delta_auc"] == 0
        assert refused(m) == verdict


def test_a_score_exactly_at_the_threshold_is_a_positive_decision_for_agreement():
    p = P.copy()
    p[0] = T  # a seen fracture, exactly at the threshold: decided fractured
    same, below = p.copy(), p.copy()
    below[0] = just_inside(T, 0)  # one float below: decided not fractured
    assert compare(Y, p, same, T)["agreement"] == 1.0
    assert compare(Y, p, below, T)["agreement"] == 63 / 64


def test_a_score_exactly_at_the_threshold_is_called_fractured_in_the_figures():
    p = P.copy()
    p[0], p[32] = T, T  # a seen fracture and a non-fractured image, both exactly at the threshold
    c = classification(Y, p, T)
    assert c["sensitivity"] == 16 / 32 and c["specificity"] == 31 / 32 and c["accuracy"] == 47 / 64


def test_mean_abs_diff_alone_is_refused():
    """Every score moves up by 1/32: nothing crosses, nothing changes rank, no single jump is large."""
    p_art = P + 1 / 32
    m = compare(Y, P, p_art, T)
    assert m["mean_abs_diff"] == m["max_abs_diff"] == 1 / 32 and m["delta_auc"] == 0 and m["agreement"] == 1.0
    bad = refused(m)
    assert len(bad) == 1 and bad[0].startswith("mean |Δp| ") and "0.0312 > 0.02" in bad[0]
    assert refused(m, Tolerances(max_mean_abs_diff=1 / 32)) == []  # exactly at the limit: passes
    assert len(refused(m, Tolerances(max_mean_abs_diff=just_inside(1 / 32, 0)))) == 1


def test_max_abs_diff_alone_is_refused():
    """One seen fracture jumps from 0.75 to 1.0: still positive, still above every negative."""
    p_art = P.copy()
    p_art[0] += 0.25
    m = compare(Y, P, p_art, T)
    assert m["max_abs_diff"] == 0.25 and m["mean_abs_diff"] == 0.25 / N
    assert m["delta_auc"] == 0 and m["agreement"] == 1.0
    bad = refused(m)
    assert len(bad) == 1 and bad[0].startswith("max |Δp| ") and "0.2500 > 0.15" in bad[0]
    assert refused(m, Tolerances(max_abs_diff=0.25)) == []  # exactly at the limit: passes
    assert len(refused(m, Tolerances(max_abs_diff=just_inside(0.25, 0)))) == 1


def test_max_abs_diff_at_the_default_limit_passes():
    p_art = P.copy()
    p_art[32] = 0.15  # the negative at 0: |Δp| exactly 0.15 (it passes the missed fractures: widen ΔAUC)
    m = compare(Y, P, p_art, T)
    assert m["max_abs_diff"] == DEFAULT.max_abs_diff
    assert refused(m, Tolerances(max_auc_drop=1)) == []
    p_art[32] = just_inside(0.15, 1)
    assert refused(compare(Y, P, p_art, T), Tolerances(max_auc_drop=1)) == [
        f"max |Δp| {just_inside(0.15, 1):.4f} > 0.15"]


# --- per source -----------------------------------------------------------------------------------

def _mixed(criterion):
    """Real radiographs (the base set) and as many phantoms (a copy of it); the artifact drifts on
    the real ones only, by a change that fails there and passes pooled."""
    p_real, p_art_real = P.copy(), P.copy()
    if criterion == "|ΔAUC|":
        p_art_real[LOW_AT] += 1 / 256  # 16 of 1024 real pairs; pooled 32 of 4096
    elif criterion == "agreement":
        p_real[[32, 33]], p_art_real[[32, 33]] = 126 / 256, 130 / 256  # 62/64 real; pooled 126/128
    else:
        p_art_real += 1 / 32  # mean 1/32 on the real ones, 1/64 pooled
    y = np.r_[Y, Y]
    sources = np.array(["fracatlas"] * N + ["phantom"] * N)
    return y, np.r_[p_real, P], np.r_[p_art_real, P], sources


@pytest.mark.parametrize("criterion", ["|ΔAUC|", "agreement", "mean |Δp|"])
def test_a_source_that_fails_alone_is_refused_though_the_pooled_figures_pass(criterion):
    y, p, p_art, sources = _mixed(criterion)
    pooled = compare(y, p, p_art, T)
    assert "by_source" not in pooled and refused(pooled) == []
    m = compare(y, p, p_art, T, sources=sources)
    assert refused(m["by_source"]["phantom"]) == []
    bad = refused(m)
    assert len(bad) == 1 and bad[0].startswith(f"{criterion} on fracatlas ")
    assert "phantom" not in bad[0]


def test_one_source_is_no_mixture():
    y, p, p_art, _ = _mixed("mean |Δp|")
    m = compare(y, p, p_art, T, sources=np.array(["fracatlas"] * (2 * N)))
    assert "by_source" not in m and refused(m) == []  # pooled: 1/64 ≤ 0.02


# --- Grad-CAM on a float artifact -----------------------------------------------------------------

def _cams(seed=1):
    cams = np.random.default_rng(seed).random((N, 4, 4))
    cams[:, 0, 0], cams[:, 0, 1] = 0.0, 1.0  # each map's peak exactly 1, one cell exactly 0
    return cams


def test_float_gradcam_that_differs_from_the_reference_is_refused_and_int8_is_not_gated_on_it():
    ref = _cams()
    art = ref.copy()
    art[7, 0, 0] = 2e-3  # 2e-3 of that map's peak
    m = compare(Y, P, P.copy(), T, ref, art, "gradcam")
    assert m["gradcam_max_abs_diff"] == 2e-3 and m["gradcam_correlation_min"] > 0.99
    bad = refused(m, precision="float32")
    assert len(bad) == 1 and bad[0].startswith("Grad-CAM differs from the GradientTape reference")
    assert refused(m, precision="int8") == []  # on int8 it is reported, not gated


def test_float_gradcam_exactly_at_its_tolerance_passes():
    ref = _cams()
    art = ref.copy()
    art[7, 0, 0] = GRADCAM_FLOAT_TOLERANCE
    m = compare(Y, P, P.copy(), T, ref, art, "gradcam")
    assert m["gradcam_max_abs_diff"] == GRADCAM_FLOAT_TOLERANCE
    assert refused(m, precision="float32") == []
    art[7, 0, 0] = just_inside(GRADCAM_FLOAT_TOLERANCE, 1)
    assert len(refused(compare(Y, P, P.copy(), T, ref, art, "gradcam"), precision="float32")) == 1


def test_float_gradcam_difference_is_relative_to_each_maps_peak():
    ref = _cams() * 10  # peaks of 10: an absolute gap of 5e-3 is 5e-4 of the peak
    art = ref.copy()
    art[7, 0, 0] = 5e-3
    m = compare(Y, P, P.copy(), T, ref, art, "gradcam")
    assert m["gradcam_max_abs_diff"] == pytest.approx(5e-4)
    assert refused(m, precision="float32") == []


# --- fracture maps --------------------------------------------------------------------------------

def test_float_fracture_map_that_differs_from_the_float_model_is_refused():
    ref = _cams()
    art = ref.copy()
    art[3, 0, 0] = 2e-3  # one cell's P(fracture), on one image
    m = compare(Y, P, P.copy(), T, ref, art, "map")
    assert m["map_max_abs_diff"] == 2e-3 and m["map_correlation_min"] > 0.99
    bad = refused(m, precision="float32")
    assert len(bad) == 1 and bad[0].startswith("fracture map differs from the float model's")
    assert refused(m, precision="int8") == []  # on int8 the maps' correlation is what is gated


def test_float_fracture_map_exactly_at_its_tolerance_passes():
    ref = _cams()
    art = ref.copy()
    art[3, 0, 0] = MAP_FLOAT_TOLERANCE
    m = compare(Y, P, P.copy(), T, ref, art, "map")
    assert m["map_max_abs_diff"] == MAP_FLOAT_TOLERANCE and refused(m, precision="float32") == []
    art[3, 0, 0] = just_inside(MAP_FLOAT_TOLERANCE, 1)
    assert len(refused(compare(Y, P, P.copy(), T, ref, art, "map"), precision="float32")) == 1


def _blurred(ref, noisy, seed=2, scale=0.12):
    """`ref` with noise added on the images `noisy` (a bool mask): their correlation with it drops."""
    art = ref.copy()
    art[noisy] += np.random.default_rng(seed).normal(0, scale, art[noisy].shape)
    return art


def test_int8_fracture_maps_that_drift_on_real_radiographs_are_refused_though_phantoms_hide_it():
    ref = _cams()
    real = np.arange(N) < 8  # 8 real radiographs, 56 phantoms
    art = _blurred(ref, real)
    m = compare(Y, P, P.copy(), T, ref, art, "map", real)
    assert m["map_correlation_real_n"] == 8
    assert m["map_correlation_real_mean"] < 0.95 <= m["map_correlation_mean"]  # pooled would pass
    bad = refused(m, precision="int8")
    assert len(bad) == 1 and bad[0].startswith("fracture map correlation with float on real radiographs")
    r = m["map_correlation_real_mean"]
    assert refused(m, Tolerances(min_map_correlation=r), "int8") == []  # exactly at the limit: passes
    assert len(refused(m, Tolerances(min_map_correlation=just_inside(r, 1)), "int8")) == 1
    # a float artifact is held to the cell-by-cell check instead (and this one fails only that)
    assert [b.split(" by ")[0] for b in refused(m, precision="float32")] == ["fracture map differs from the float model's"]


def test_int8_fracture_maps_are_judged_on_real_radiographs_when_there_are_any():
    ref = _cams()
    real = np.arange(N) < 8
    art = _blurred(ref, ~real)  # the phantoms drift, the real radiographs do not
    m = compare(Y, P, P.copy(), T, ref, art, "map", real)
    assert m["map_correlation_mean"] < 0.95 and m["map_correlation_real_mean"] == pytest.approx(1)
    assert refused(m, precision="int8") == []


@pytest.mark.parametrize("real", [None, np.zeros(N, bool)], ids=["no mask", "no real images"])
def test_int8_fracture_maps_are_judged_on_all_images_without_real_ones(real):
    ref = _cams()
    art = _blurred(ref, np.ones(N, bool))
    m = compare(Y, P, P.copy(), T, ref, art, "map", real)
    assert "map_correlation_real_mean" not in m and m["map_correlation_mean"] < 0.95
    bad = refused(m, precision="int8")
    assert len(bad) == 1 and bad[0].startswith("fracture map correlation with float on the test images")
    r = m["map_correlation_mean"]
    assert refused(m, Tolerances(min_map_correlation=r), "int8") == []
    assert len(refused(m, Tolerances(min_map_correlation=just_inside(r, 1)), "int8")) == 1


def test_an_int8_map_gone_flat_counts_as_no_agreement_not_as_unmeasured():
    """A flat artifact map beside a varying reference says nothing about where the fracture is:
    it counts as correlation 0, so a copy whose maps all went flat is refused, not waved through."""
    ref = _cams()
    flat = np.full_like(ref, 0.5)
    m = compare(Y, P, P.copy(), T, ref, flat, "map")
    assert m["map_correlation_mean"] == 0.0
    bad = refused(m, precision="int8")
    assert len(bad) == 1 and bad[0].startswith("fracture map correlation with float")
    both = compare(Y, P, P.copy(), T, flat, flat.copy(), "map")  # both flat: nothing to correlate
    assert both["map_correlation_mean"] is None and refused(both, precision="int8") == []


def test_a_flat_reference_map_beside_a_varying_int8_map_is_no_agreement_either():
    ref = _cams()
    flat_ref = np.full_like(ref, 0.25)
    m = compare(Y, P, P.copy(), T, flat_ref, ref, "map")  # the float model's maps flat, the copy's not
    assert m["map_correlation_mean"] == 0.0 and len(refused(m, precision="int8")) == 1


def test_a_blank_reference_gradcam_is_skipped_not_divided_by():
    """Grad-CAM differences are relative to each reference map's peak; a blank reference (peak 0)
    has no scale and is left out, never turned into inf or NaN (which would pass any limit)."""
    ref = _cams()
    ref[0] = 0.0
    art = ref.copy()
    art[0] = 0.3  # differs only where the reference is blank
    m = compare(Y, P, P.copy(), T, ref, art, "gradcam")
    assert m["gradcam_max_abs_diff"] == 0.0
    blank = np.zeros_like(ref)
    assert compare(Y, P, P.copy(), T, blank, blank + 0.1, "gradcam")["gradcam_max_abs_diff"] is None
