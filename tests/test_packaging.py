"""The wheel carries every package of the source tree and the reference bundle (a
non-editable clinic install found no default bundle). `.ci/wheel_leg.sh` installs the built wheel
in a fresh venv and predicts with it; this checks the configuration that makes that possible."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_and_the_bundle_ships_as_package_data():
    from setuptools import find_packages

    cfg = _pyproject()["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), include=["train*", "export*", "edge_runtime*", "device*", "benchmarks*"]))
    assert found <= set(cfg["packages"]), f"add to pyproject's packages: {sorted(found - set(cfg['packages']))}"
    bundle_dir = ROOT / cfg["package-dir"]["fracture_edge_bundle"]
    patterns = cfg["package-data"]["fracture_edge_bundle"]
    shipped = {p.name for pat in patterns for p in bundle_dir.glob(pat)}
    assert shipped == {p.name for p in bundle_dir.iterdir() if p.is_file()}, "a bundle file would be left out"


def test_without_a_checkout_the_default_bundle_is_the_packaged_one(monkeypatch, tmp_path):
    from edge_runtime import bundle

    pkg = tmp_path / "site" / bundle.PACKAGED_BUNDLE
    pkg.mkdir(parents=True)
    monkeypatch.setattr(bundle, "REPO_BUNDLE", tmp_path / "no-checkout" / "models" / "reference-bundle")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert bundle.default_bundle_dir({}) == pkg
    assert bundle.default_bundle_dir({bundle.ENV_VAR: "/x/y"}) == Path("/x/y")
