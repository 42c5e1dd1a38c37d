"""The file-system fuzzer, bounded for CI (the long run: docs/robustness.md): random trees of
files, links, loops, FIFOs, sockets, sparse files, text, and unreadable or unenterable places,
changed while the service works, must break none of its promises; and the fuzzer must notice when
they are broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import fsfuzz

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fuzzed():
    """40 seeded cases through `python -m benchmarks.fsfuzz`, once for the tests below. Run as
    root, it re-runs itself where file permissions apply (as `nobody`, or as root without
    CAP_DAC_OVERRIDE), so that unreadable, unenterable and read-only places are real."""
    res = subprocess.run([sys.executable, "-m", "benchmarks.fsfuzz", "--target", "service", "--cases", "40",
                          "--seed", "7", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    return json.loads(res.stdout), res.returncode


def test_the_service_keeps_its_promises_on_random_trees(fuzzed):
    out, code = fuzzed
    assert out["escapes"] == [] and code == 0
    assert out["cases"] == 40 and out["answered"] > 20 and out["refused"] > 100
    assert set(out["kinds"]) == set(fsfuzz.KINDS)  # every kind of entry was made
    steps = {s.split("@")[1] for s in out["swaps"] if "@" in s}
    assert len(steps) >= 4  # files were changed between most of the service's steps


def test_unreadable_unenterable_and_read_only_places_were_real(fuzzed):
    """Where the fuzzer could not run with permissions applying, it says so, and this is a skip,
    not a silent pass: those cases would have read fine."""
    out, _ = fuzzed
    if not out["permissions_apply"]:
        pytest.skip(f"the fuzzer ran as {out['user']}, where file permissions do not apply ({out['note']}): "
                    "unreadable, unenterable and read-only places were not covered")
    assert any(s.startswith("read_only:") for s in out["swaps"])  # the data folder went read-only mid-case
    assert "watched_root:0644" in out["swaps"]  # the watched folder itself could not be entered for a scan
    assert {"unreadable_dir", "listonly_dir", "listonly_rw_dir", "unreadable_file"} <= set(out["kinds"])


@pytest.mark.parametrize("sabotage", ["drop_refusals", "wrong_id"])
def test_the_fuzzer_notices_a_broken_promise(monkeypatch, sabotage):
    """A fuzzer that cannot fail proves nothing: a service that records no refusals, or pairs an
    answer with another id, must show up as escapes."""
    import device.service as service_mod
    if sabotage == "drop_refusals":
        monkeypatch.setattr(service_mod.Service, "_refuse", lambda self, *a, **k: None)
        expected = "no record and no answer"
    else:
        real = service_mod.Service._answer
        monkeypatch.setattr(service_mod.Service, "_answer",
                            lambda self, path, mode, entry, fid, original: real(self, path, mode, entry, "0" * 32,
                                                                                 original))
        expected = "the stored copy is not its bytes"
    out = fsfuzz.fuzz("service", cases=4, seed=3)
    assert any(expected in e for e in out["escapes"]), out["escapes"][:5]


def test_a_second_target_is_one_registration(monkeypatch):
    """The fuzzer runs any registered target the same way (seeded cases, escapes counted)."""
    monkeypatch.setattr(fsfuzz, "TARGETS", dict(fsfuzz.TARGETS))

    @fsfuzz.register("probe")
    class Probe(fsfuzz.Target):
        def case(self, rng, folder, k):
            folder.mkdir(parents=True)
            return fsfuzz.CaseResult(k, kinds={"x": 1}, escapes=["planted"] if k == 2 else [])

    out = fsfuzz.fuzz("probe", cases=3, seed=1)
    assert out["cases"] == 3 and out["kinds"] == {"x": 3} and out["escapes"] == ["case 2 (--seed 1 --only 2): planted"]


def test_the_idle_benchmark_measures_an_idle_scan():
    out = fsfuzz.idle(files=300, scans=2)
    assert out["new_in_first_scan"] == 0 and out["index_connections_per_idle_scan"] == 0
