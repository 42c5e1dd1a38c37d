"""The mutator of tests/mutation.py, on a tiny module and tests it writes under tmp_path: it finds
each kind of mutant (and none in docstrings, annotations or defaults), a test that checks a
comparison kills its mutant, an untested line leaves a reported survivor, and the module's bytes
are back exactly after a failing run, a hang, an interrupted run, and a run killed outright."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mutation as M

GATE = '''"""A tiny gate: the module the mutator works on in these tests."""
from typing import Dict, List

LIMIT = 0.5  # module level: not mutated


def passes(x: float, limit: float = 0.25) -> bool:
    """True when x <= limit (this docstring is never mutated: 1 < 2)."""
    return x <= limit


def failures(values: List[float], limit: float = LIMIT) -> Dict[str, int]:
    bad: List[str] = []
    for v in values:
        if not v >= 0 or v > limit:  # the bound is tested exactly, the sign not at all
            bad.append(f"{v} > {limit}")
    if bad and len(values) != 0:
        return {"bad": len(bad), "of": len(values) * 1}
    return {"bad": 0, "of": len(values) + 0}


def spread(values: List[float]) -> float:
    if not values:
        raise ValueError("no values")
    return max(values) - min(values) / 1.0


def count_up(n: int) -> int:
    i = 0
    while i < n:
        i += 1
    return i
'''

TESTS = '''from tiny.gate import count_up, failures, passes


def test_the_limit_itself_passes():
    assert passes(0.25) and not passes(0.2500001)


def test_failures_at_and_over_the_limit():
    assert failures([0.5, 0.1]) == {"bad": 0, "of": 2}
    assert failures([0.50001, 0.1]) == {"bad": 1, "of": 2}


def test_count_up_ends():
    assert count_up(3) == 3
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "tiny").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "tiny" / "__init__.py").write_text("")
    (root / "tiny" / "gate.py").write_text(GATE, encoding="utf-8")
    (root / "tests" / "test_gate.py").write_text(TESTS)
    return root


def _target(*suites) -> M.Target:
    return M.Target("tiny.gate", "tiny/gate.py", suites or (("tests/test_gate.py",),))


def _by(mutants, kind, what=None):
    return [m for m in mutants if m.kind == kind and (what is None or m.what == what)]


def test_every_kind_is_found_only_in_function_bodies():
    mutants = M.find_mutants(GATE.encode())
    assert {m.kind for m in mutants} == set(M.KINDS)
    lines = GATE.splitlines()
    for m in mutants:
        code = lines[m.line - 1]
        assert not code.startswith(("LIMIT", "def ", '"""')) and '"""' not in code, (m.line, code)  # no module
        # constant, signature (annotations, defaults) or docstring
    assert [m.original for m in _by(mutants, "compare")] == ["x <= limit", "v >= 0", "v > limit",
                                                             "len(values) != 0", "i < n"]
    assert _by(mutants, "compare", "`<=` -> `<`")[0].mutated == "(x < limit)"
    assert {m.what for m in _by(mutants, "minmax")} == {"`max` -> `min`", "`min` -> `max`"}
    assert [m.original for m in _by(mutants, "statement")] == ['bad.append(f"{v} > {limit}")',
                                                               'raise ValueError("no values")']
    assert not any("{v}" in m.original and m.kind != "statement" for m in mutants)  # f-strings left alone
    assert _by(mutants, "arith", "`+=` -> `-=`")[0].mutated == "i -= 1"
    assert {m.mutated for m in _by(mutants, "const")} >= {"(1)", "(2)"}
    assert "(1.1)" in {m.mutated for m in _by(mutants, "const")}  # the float 1.0, x1.1
    # each mutant parses, differs from the source, and replaces only its own span
    for m in mutants:
        src = M.apply(GATE.encode(), m)
        compile(src, "gate.py", "exec")
        assert src != GATE.encode() and src.count(b"\n") <= GATE.count("\n")
    assert [m.index for m in mutants] == list(range(len(mutants)))
    scoped = M.find_mutants(GATE.encode(), scope="count_up")
    assert scoped and all(m.line > GATE.splitlines().index("def count_up(n: int) -> int:") for m in scoped)


def test_a_non_ascii_line_is_cut_at_the_right_bytes():
    src = 'def f(d):\n    return "ΔAUC ≤" if d <= 0.01 else "ok"\n'.encode()
    cmp = _by(M.find_mutants(src), "compare")[0]
    assert M.apply(src, cmp).decode() == 'def f(d):\n    return "ΔAUC ≤" if (d < 0.01) else "ok"\n'


def test_sampling_is_seeded_and_in_source_order():
    mutants = M.find_mutants(GATE.encode())
    a = M.sample(mutants, 5, 0, "tiny.gate")
    assert [m.index for m in a] == [m.index for m in M.sample(mutants, 5, 0, "tiny.gate")]
    assert [m.index for m in a] == sorted(m.index for m in a) and len(a) == 5
    assert [m.index for m in a] != [m.index for m in M.sample(mutants, 5, 1, "tiny.gate")]
    assert len(M.sample(mutants, None, 0, "x")) == len(mutants)


def test_a_tested_comparison_is_killed_and_an_untested_one_survives_in_the_report(project, tmp_path):
    original = (project / "tiny" / "gate.py").read_bytes()
    res = M.run_module(_target(), project, tmp_path / "out", in_place=True, max_mutants=None, seed=0,
                       timeout=60, kinds=("compare",), log=lambda *a: None)
    assert res.baseline == "passed" and res.restored
    status = {m.original + " " + m.what: m.status for m in res.mutants}
    assert status["x <= limit `<=` -> `<`"] == "killed"  # the test of the limit itself
    assert status["v > limit `>` -> `>=`"] == "killed"
    assert status["v >= 0 `>=` -> `>`"] == "survived"  # no test has a negative value
    assert status["i < n `<` -> `<=`"] == "killed"
    report = M.to_json([res], {"command": "x", "date": "d", "python": "p", "seed": 0, "tree": "t"})
    survivors = report["modules"][0]["survivors"]
    line = next(k for k, text in enumerate(GATE.splitlines(), 1) if "if not v >= 0" in text)
    assert [(s["line"], s["original"], s["mutated"]) for s in survivors] == [(line, "v >= 0", "(v > 0)")]
    md = M.to_markdown(report)
    assert survivors[0]["col"] == GATE.splitlines()[line - 1].index("v >= 0") + 1
    assert f"`tiny/gate.py:{line}:{survivors[0]['col']}`" in md and "(v > 0)" in md and "| `tiny/gate.py` |" in md
    assert (project / "tiny" / "gate.py").read_bytes() == original
    assert not (tmp_path / "out" / "backup" / "IN_PROGRESS.json").exists()


def test_a_hang_is_a_timeout_and_the_file_is_restored_byte_for_byte(project, tmp_path):
    gate = project / "tiny" / "gate.py"
    original, mtime = gate.read_bytes(), gate.stat().st_mtime_ns
    target = M.Target("tiny.gate", "tiny/gate.py", (("tests/test_gate.py",),), scope="count_up")
    res = M.run_module(target, project, tmp_path / "out", in_place=True, max_mutants=None, seed=0,
                       timeout=6, kinds=("arith",), log=lambda *a: None)
    [hang] = res.mutants  # i += 1 -> i -= 1: `while i < n` never ends
    assert hang.what == "`+=` -> `-=`" and hang.status == "timeout" and "over 6 s" in hang.killed_by
    assert res.summary()["timeouts"] == 1 and res.summary()["killed"] == 1  # a timeout counts as killed
    assert gate.read_bytes() == original and gate.stat().st_mtime_ns == mtime and res.restored


def test_an_interrupted_run_restores_the_file_and_a_killed_one_is_repaired_next_time(project, tmp_path, monkeypatch):
    gate = project / "tiny" / "gate.py"
    original = gate.read_bytes()
    seen = []

    def interrupted(invocations, tree, env, timeout, runner="subprocess"):
        seen.append(gate.read_bytes())
        if len(seen) > 1:  # the baseline passes; the first mutant's run is interrupted
            raise KeyboardInterrupt
        return "passed", "", 0.1

    monkeypatch.setattr(M, "run_tests", interrupted)
    with pytest.raises(KeyboardInterrupt):
        M.run_module(_target(), project, tmp_path / "out", in_place=True, max_mutants=None, seed=0,
                     timeout=5, kinds=("compare",), log=lambda *a: None)
    assert seen[1] != original and gate.read_bytes() == original  # a mutant was in place, and is gone
    assert not (tmp_path / "out" / "backup" / "IN_PROGRESS.json").exists()

    # SIGKILL leaves no chance to clean up: the backup and its marker stay, and the next run repairs
    restorer = M.Restorer(gate, tmp_path / "out" / "backup")
    restorer.write(b"mutant")
    assert "restored" in M.recover(tmp_path / "out" / "backup")
    assert gate.read_bytes() == original and not list((tmp_path / "out" / "backup").iterdir())
    assert M.recover(tmp_path / "out" / "backup") is None


def test_a_baseline_that_fails_mutates_nothing(project, tmp_path):
    (project / "tests" / "test_gate.py").write_text(TESTS + "\n\ndef test_broken():\n    assert False\n")
    res = M.run_module(_target(), project, tmp_path / "out", in_place=True, max_mutants=None, seed=0,
                       timeout=60, kinds=("compare",), log=lambda *a: None)
    assert res.baseline.startswith("baseline failed") and all(m.status == "not run" for m in res.mutants)
    missing = M.run_module(_target(("tests/test_not_there.py",)), project, tmp_path / "out", in_place=True,
                           max_mutants=None, seed=0, timeout=60, kinds=("compare",), log=lambda *a: None)
    assert missing.baseline == "no tests found" and missing.missing_tests == ["tests/test_not_there.py"]


def test_the_command_line_on_a_copy_with_the_fork_runner(project, tmp_path):
    """The default: a scratch copy (the project is never written), forked runs, survivors
    confirmed in a fresh interpreter; the report in OUT as markdown and JSON."""
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(Path(M.__file__)), "--root", str(project), "--target",
                           "tiny/gate.py=tests/test_gate.py", "--kinds", "compare,minmax", "--out", str(out),
                           "--json", "--quiet"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == json.loads((out / "report.json").read_text())
    mod = report["modules"][0]
    assert mod["runner"] == "fork" and mod["baseline"] == "passed" and report["checkout_unchanged"]
    assert mod["killed"] >= 3 and {s["original"] for s in mod["survivors"]} >= {"v >= 0", "max(values)",
                                                                                 "min(values)"}
    assert "| `tiny/gate.py` |" in (out / "report.md").read_text()
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before  # not even a __pycache__


def test_help_lists_every_option_with_its_default():
    text = M.parser().format_help()
    for opt in ("--module", "--max-per-module", "--json", "--out", "--timeout", "--in-place", "--runner", "--list"):
        assert opt in text
    assert text.count("(default") >= 10
