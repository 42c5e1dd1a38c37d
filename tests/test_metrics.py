"""Metric code against values computed by hand."""

import numpy as np
import pytest

from train import metrics as M

# 4 fractured, 6 not; probabilities chosen so every number below is countable by eye.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.55, 0.3, 0.6, 0.4, 0.35, 0.2, 0.1, 0.05])


def test_confusion_and_sens_spec_at_half():
    r = M.at_threshold(Y, P, 0.5)
    assert r["confusion"] == {"tp": 3, "fn": 1, "fp": 1, "tn": 5}
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(5 / 6)
    t = r["table"]
    assert t["accuracy"] == pytest.approx(8 / 10)
    assert t["classes"]["fractured"]["precision"] == pytest.approx(3 / 4)
    assert t["classes"]["fractured"]["recall"] == pytest.approx(3 / 4)
    assert t["classes"]["non-fractured"]["precision"] == pytest.approx(5 / 6)
    assert t["classes"]["non-fractured"]["f1"] == pytest.approx(5 / 6)
    assert t["classes"]["fractured"]["support"] == 4 and t["classes"]["non-fractured"]["support"] == 6


def test_auc_by_pair_counting():
    # Pairs (fractured, non-fractured) ranked correctly: 0.9,0.8 beat all 6 (12); 0.55 beats 5;
    # 0.3 beats 0.2, 0.1, 0.05 (3): 20 of 24.
    assert M.auc(Y, P) == pytest.approx(20 / 24)
    assert M.auc(np.ones(3), np.ones(3)) is None


def test_youden_threshold():
    # J = TPR - FPR: 0.9->0.25, 0.8->0.5, 0.6->0.33, 0.55->0.583, 0.4->0.417, 0.3->0.5: best 0.55.
    assert M.choose_threshold(Y, P, "youden") == pytest.approx(0.55)


def test_sensitivity_rule_threshold():
    assert M.choose_threshold(Y, P, "sensitivity=1.0") == pytest.approx(0.3)
    assert M.choose_threshold(Y, P, "sensitivity=0.5") == pytest.approx(0.8)
    with pytest.raises(ValueError):
        M.parse_rule("f1")


def test_bootstrap_ci_brackets_the_point_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    a = M.bootstrap_auc_ci(y, p, n_boot=300, seed=1)
    b = M.bootstrap_auc_ci(y, p, n_boot=300, seed=1)
    assert a == b
    assert a["ci_low"] < a["auc"] < a["ci_high"]
    assert a["ci_high"] - a["ci_low"] < 0.2


def test_a_clustered_auc_draws_each_owner_with_all_its_values():
    """Each of 30 owners gives one positive and 10 negatives that share a level of their own (30
    independent negatives, in effect, not 300): drawn by owner, the interval is wider than the
    one that treats the 330 values as independent."""
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1, 30), np.repeat(rng.normal(0, 1, 30), 10) + rng.normal(0, 0.05, 300)
    owner_pos, owner_neg = np.arange(30), np.repeat(np.arange(30), 10)
    c = M.clustered_auc_ci(pos, owner_pos, neg, owner_neg, n_boot=200, seed=1)
    assert c == M.clustered_auc_ci(pos, owner_pos, neg, owner_neg, n_boot=200, seed=1)
    flat = M.bootstrap_auc_ci(np.r_[np.ones(30), np.zeros(300)], np.r_[pos, neg], n_boot=200, seed=1)
    assert c["auc"] == pytest.approx(flat["auc"]) and c["ci_low"] < c["auc"] < c["ci_high"]
    assert c["ci_high"] - c["ci_low"] > flat["ci_high"] - flat["ci_low"]
    assert M.clustered_auc_ci([0.9], [0], [], [], n_boot=10)["auc"] is None


def test_per_region_metrics():
    regions = ["hand"] * 5 + ["leg"] * 5
    out = M.per_group(Y, P, regions, 0.5)
    assert out["hand"]["n"] == 5 and out["hand"]["fractured"] == 4
    assert out["hand"]["sensitivity"] == pytest.approx(3 / 4)
    assert out["leg"]["auc"] is None and out["leg"]["specificity"] == pytest.approx(1.0)


def test_threshold_is_chosen_on_validation_not_test():
    y_val, p_val = Y, P
    y_test, p_test = 1 - Y, P  # a test set where the best cut would be very different
    r = M.evaluate_predictions(y_val, p_val, y_test, p_test, ["hand"] * 10, n_boot=50)
    assert r["threshold"]["value"] == pytest.approx(0.55)
    assert r["threshold"]["chosen_on"] == "validation split"


# --- ties and scores exactly at the threshold ------------------------------------------------------

# 4 fractured, 4 not (quarters: every J below is exact in floating point). J = TPR - FPR:
# 0.9 -> 1/4, 0.8 -> 1/2, 0.7 -> 3/4, 0.6 -> 1/2, 0.5 -> 3/4, 0.4 -> 1/2, 0.3 -> 1/4, 0.2 -> 0:
# a tie for the best between 0.7 and 0.5.
Y_TIE = np.array([1, 1, 1, 0, 1, 0, 0, 0])
P_TIE = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])


def test_youden_tie_goes_to_the_higher_threshold():
    assert M.choose_threshold(Y_TIE, P_TIE, "youden") == pytest.approx(0.7)
    # the same tie, the scores given in another order: the rule, not the input order, decides
    order = np.array([7, 4, 0, 5, 2, 6, 1, 3])
    assert M.choose_threshold(Y_TIE[order], P_TIE[order], "youden") == pytest.approx(0.7)
    # both tied thresholds do reach the same J (so the test is about the tie-break, not the maximum)
    j = [M.at_threshold(Y_TIE, P_TIE, t) for t in (0.7, 0.5)]
    assert [r["sensitivity"] + r["specificity"] - 1 for r in j] == [3 / 4, 3 / 4]


def test_a_score_exactly_at_the_threshold_is_called_fractured():
    # 0.55 (fractured) and 0.6 (not) are at or above 0.55; 0.3 (fractured) is below.
    r = M.at_threshold(Y, P, 0.55)
    assert r["confusion"] == {"tp": 3, "fn": 1, "fp": 1, "tn": 5}
    assert r["sensitivity"] == pytest.approx(3 / 4)
    # a negative exactly at the threshold is a false positive
    r = M.at_threshold(Y, P, 0.6)
    assert r["confusion"] == {"tp": 2, "fn": 2, "fp": 1, "tn": 5}
    assert r["specificity"] == pytest.approx(5 / 6)


def test_per_group_counts_a_score_at_the_threshold_as_fractured():
    regions = ["hand"] * 5 + ["leg"] * 5  # hand: 0.9, 0.8, 0.55, 0.3 fractured; 0.6 not
    out = M.per_group(Y, P, regions, 0.55)
    assert out["hand"]["sensitivity"] == pytest.approx(3 / 4) and out["hand"]["accuracy"] == pytest.approx(3 / 5)
    out = M.per_group(Y, P, regions, 0.6)
    assert out["hand"]["specificity"] == pytest.approx(0.0)


def test_the_chosen_threshold_reports_the_j_it_was_chosen_for():
    """Youden picks a threshold equal to a score (0.55); its validation figures count that image."""
    r = M.evaluate_predictions(Y, P, Y, P, ["hand"] * 10, n_boot=20)
    v = r["threshold"]["validation"]
    assert r["threshold"]["value"] == pytest.approx(0.55)
    assert v["sensitivity"] + v["specificity"] - 1 == pytest.approx(3 / 4 + 5 / 6 - 1)


def test_a_tie_equal_only_up_to_rounding_is_still_a_tie():
    """J = 2/3 at 0.8 and at 0.6, computed as 2/3 - 0 and 1 - 1/3: one ulp apart. The rule says
    the higher threshold; an exact == on the floats picked 0.6."""
    y, p = np.array([1, 1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    assert M.choose_threshold(y, p, "youden") == pytest.approx(0.8)
