"""The skip rule CI runs under (tests/skip_rule.py): an unmarked skip fails the run and is named,
a skip marked real_data does not, and without the option nothing changes."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SUITE = '''
import pytest

def test_runs():
    assert True

@pytest.mark.real_data
@pytest.mark.skipif(True, reason="../shared/data is absent")
def test_needs_real_data():
    pass

def test_needs_a_browser():
    pytest.skip("chromium is not installed")
'''


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_an_unexpected_skip_fails_the_run_and_is_named(suite):
    res = suite.runpytest("-p", "skip_rule", "--no-unexpected-skips")
    res.assert_outcomes(passed=1, skipped=2)
    assert res.ret == 1
    res.stdout.fnmatch_lines(["*unexpected skips*", "*test_needs_a_browser: chromium is not installed*"])
    assert "test_needs_real_data" not in "\n".join(l for l in res.outlines if "unexpected" in l or "::" in l)


def test_a_real_data_skip_alone_passes(pytester):
    pytester.makepyfile(test_suite=SUITE.replace('pytest.skip("chromium is not installed")', "pass"))
    res = pytester.runpytest("-p", "skip_rule", "--no-unexpected-skips")
    res.assert_outcomes(passed=2, skipped=1)
    assert res.ret == 0


def test_a_module_skipped_at_import_is_unexpected_too(pytester):
    pytester.makepyfile(test_mod='import pytest\npytest.importorskip("no_such_module_here")\n\ndef test_x():\n    pass\n')
    res = pytester.runpytest("-p", "skip_rule", "--no-unexpected-skips")
    assert res.ret == 1
    res.stdout.fnmatch_lines(["*test_mod.py*no_such_module_here*"])


def test_without_the_option_skips_are_only_reported(suite):
    res = suite.runpytest("-p", "skip_rule")
    res.assert_outcomes(passed=1, skipped=2)
    assert res.ret == 0


def test_ci_runs_the_readme_command_under_the_rule():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ci = (root / ".ci" / "run").read_text().splitlines()
    command = next(l for l in ci if l.startswith("python -m pytest"))
    assert "--no-unexpected-skips" in command and "--all" in command
    assert command in (root / "README.md").read_text()  # CI calls exactly the README's test command
