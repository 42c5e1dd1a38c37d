"""Radiographs processed as another X-ray system would: the measurement's processing, and the
command end to end on the shared test bundle."""

import json

import numpy as np
import pytest

from train.acquisition_shift import KINDS, main

pytestmark = pytest.mark.slow


def test_each_kind_changes_the_radiograph_and_keeps_its_shape():
    from fracdata.phantom import render_phantom

    x = render_phantom(np.random.default_rng(2), "hand", True, size=(160, 160)).astype(np.float32) / 255.0
    for name, (_, fn) in KINDS.items():
        y = fn(x, np.random.default_rng(0), 64)
        assert y.shape == x.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1, name
        assert np.abs(y - x).mean() > 1e-3, name


def test_the_command_counts_refusals_flips_and_lost_fractures(tiny_run, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "shift"
    assert main([str(tiny_run), "--bundle", str(tiny_bundle), "--kinds", "bands,jpeg15", "--out", str(out),
                 "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert json.loads((out / "shift.json").read_text()) == res and (out / "shift.md").read_text().startswith("Radiographs")
    split = (tiny_run / "split.csv").read_text().splitlines()[1:]
    n_eval = sum(1 for line in split if ",val," in line or ",test," in line)
    assert set(res["results"]) == {"bands", "jpeg15"}
    for kind, per in res["results"].items():
        s = per["phantom"]
        assert s["n"] == n_eval
        assert s["refused"] == s["base_refused"] == 0 and not res["gate"]  # no gate here: nothing is refused
        assert s["both_answered"] + s["errors"] == s["n"] and s["flips"] <= s["both_answered"]
        assert s["fractures_lost"] <= s["detected"] <= s["both_answered"]
        assert s["mean_abs_dp"] >= 0
    assert main([str(tiny_run), "--bundle", str(tiny_bundle), "--kinds", "bogus"]) == 2
