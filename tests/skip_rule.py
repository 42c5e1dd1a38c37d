"""CI's rule for skips: a test may skip in CI only when it needs the real radiographs of
`../shared/data`, which are never committed (marked `real_data`). Any other skip (no chromium,
no Node, no runtime, a missing tool) means CI went green without running what it claims, so
`--no-unexpected-skips` (set by .ci/run) turns it into a failure that names each one.

Loaded as a plugin (`-p skip_rule` in pyproject.toml's addopts; tests/ is on pytest's pythonpath);
tests/test_skip_rule.py runs it on a small suite of its own.
"""

from __future__ import annotations

REAL_DATA = "real_data"


def pytest_addoption(parser):
    parser.addoption("--no-unexpected-skips", action="store_true", dest="no_unexpected_skips",
                     help=f"fail the run when a test skips that is not marked {REAL_DATA} (CI sets it)")


_config = []  # the run's config, for the collection hook (which is not given it)


def pytest_configure(config):
    _config[:] = [config]
    config.addinivalue_line("markers", f"{REAL_DATA}: needs ../shared/data (radiographs never committed); "
                                       "the only skip CI accepts")
    config._unexpected_skips = []


def pytest_collectreport(report):
    """A whole module skipped while collecting (importorskip at its top): never real data."""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _config[0]._unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_makereport(item, call):
    if call.when not in ("setup", "call") or call.excinfo is None:
        return
    import pytest

    if call.excinfo.errisinstance(pytest.skip.Exception) and item.get_closest_marker(REAL_DATA) is None:
        reason = str(call.excinfo.value) or "no reason given"
        item.config._unexpected_skips.append(f"{item.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not config.getoption("no_unexpected_skips") or not config._unexpected_skips:
        return
    if session.exitstatus in (0, 5):  # passed, or nothing left to run: a failure (TESTS_FAILED) now
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.getoption("no_unexpected_skips") and config._unexpected_skips:
        terminalreporter.section("unexpected skips (CI accepts only tests marked real_data)", red=True)
        for line in config._unexpected_skips:
            terminalreporter.write_line(line)
