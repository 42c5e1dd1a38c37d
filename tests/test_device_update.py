"""`python -m device update`: verify, self-test, switch atomically, keep the previous, roll back;
a kill -9 at any step leaves a working bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.fsfuzz import bundle_variant
from device.cli import main as device_main
from device.update import CRASH_ENV, CURRENT, PREVIOUS, UpdateError, install, rollback
from edge_runtime.bundle import load_bundle, seal

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("staged", "verified", "moved", "previous", "switched")


def _variant(tmp_path: Path, name: str, threshold: float) -> Path:
    """The reference bundle with another threshold: a valid bundle with its own digest."""
    return bundle_variant(tmp_path / name, threshold)


def _model_file(bundle: Path) -> str:
    """The file the device's interpreter opens by default, whatever the reference bundle ships."""
    m = json.loads((bundle / "manifest.json").read_text())
    return m["artifacts"][m["default_artifacts"]["tflite"]]["file"]


def _current_threshold(root: Path) -> float:
    return load_bundle(root / CURRENT).threshold


def test_update_switches_keeps_the_previous_and_rolls_back(tmp_path, capsys):
    root = tmp_path / "opt"
    a, b = _variant(tmp_path, "a", 0.41), _variant(tmp_path, "b", 0.62)
    first = install(a, root)
    assert first["switched"] and first["self_test"]["passed"] and _current_threshold(root) == 0.41
    assert (root / CURRENT).is_symlink()
    second = install(b, root)
    assert second["switched"] and _current_threshold(root) == 0.62
    assert os.readlink(root / PREVIOUS) == os.readlink(root / CURRENT).replace(second["id"], first["id"])
    assert install(b, root)["switched"] is False  # the same bundle again: nothing to do
    assert device_main(["update", "--rollback", "--root", str(root)]) == 0
    assert _current_threshold(root) == 0.41
    rollback(root)
    assert _current_threshold(root) == 0.62
    capsys.readouterr()


def test_a_damaged_or_failing_bundle_never_becomes_current(tmp_path, capsys, monkeypatch):
    root = tmp_path / "opt"
    install(_variant(tmp_path, "a", 0.41), root)
    bad = _variant(tmp_path, "bad", 0.5)
    (bad / _model_file(bad)).write_bytes(b"not a model")
    assert device_main(["update", str(bad), "--root", str(root)]) == 2
    assert "does not verify" in capsys.readouterr().err and _current_threshold(root) == 0.41

    # A bundle whose recorded self-test answers this device does not reproduce (another model's).
    drift = _variant(tmp_path, "drift", 0.5)
    m = json.loads((drift / "manifest.json").read_text())
    m["self_test"]["probabilities"] = {k: [min(1.0, p + 0.2) for p in v] for k, v in m["self_test"]["probabilities"].items()}
    (drift / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(UpdateError, match="self-test"):
        install(drift, root)
    from edge_runtime.cli import main as runtime_main
    assert runtime_main(["info", "--self-test", "--bundle", str(drift)]) == 1
    assert runtime_main(["info", "--self-test", "--bundle", str(root / CURRENT)]) == 0
    assert _current_threshold(root) == 0.41
    assert not list((root / "bundles").glob(".incoming-*"))


def test_a_zip_from_a_usb_stick_installs_and_a_hostile_one_does_not(tmp_path):
    root = tmp_path / "opt"
    src = _variant(tmp_path, "z", 0.47)
    good = tmp_path / "bundle.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"reference-bundle/{f.name}")
    assert install(good, root)["switched"] and _current_threshold(root) == 0.47
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(UpdateError, match="unexpected entry"):
        install(evil, root)
    assert not (tmp_path / "escaped.txt").exists() and _current_threshold(root) == 0.47


def test_a_plain_folder_install_is_migrated(tmp_path):
    root = tmp_path / "opt"
    root.mkdir()
    shutil.copytree(_variant(tmp_path, "old", 0.41), root / CURRENT)  # as install.sh did before updates
    install(_variant(tmp_path, "new", 0.62), root)
    assert (root / CURRENT).is_symlink() and _current_threshold(root) == 0.62
    assert load_bundle(root / PREVIOUS).threshold == 0.41


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_every_step_leaves_a_working_bundle(tmp_path, step):
    root = tmp_path / "opt"
    install(_variant(tmp_path, "a", 0.41), root)
    b = _variant(tmp_path, "b", 0.62)
    env = {**os.environ, CRASH_ENV: step}
    res = subprocess.run([sys.executable, "-m", "device", "update", str(b), "--root", str(root)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr  # it really was killed there
    assert _current_threshold(root) in (0.41, 0.62)  # old or new, always whole and verified
    assert _current_threshold(root) == (0.62 if step == "switched" else 0.41)
    install(b, root)  # and the next run completes
    assert _current_threshold(root) == 0.62
    assert not list((root / "bundles").glob(".incoming-*"))


def test_the_service_picks_up_a_switch_between_files(tmp_path):
    from PIL import Image

    from benchmarks.fuzz import _radiograph
    from device.service import Service

    root = tmp_path / "opt"
    install(_variant(tmp_path, "a", 0.41), root)
    data = tmp_path / "data"
    service = Service(data, bundle=root / CURRENT, settle_s=0)
    assert service.predictor.threshold == 0.41
    install(_variant(tmp_path, "b", 0.62), root)
    (data / "inbox" / "files").mkdir(parents=True, exist_ok=True)
    Image.fromarray((_radiograph() * 255).astype("uint8")).save(data / "inbox" / "files" / "x.png")
    assert service.run_once() == 1
    assert service.predictor.threshold == 0.62
    rec = service.ledger.records()[-1]
    assert rec["threshold"] == 0.62 and rec["bundle_id"] == load_bundle(root / CURRENT).manifest["manifest_sha256"][:16]


def test_a_damaged_copy_in_the_store_is_replaced_not_trusted(tmp_path):
    root = tmp_path / "opt"
    a = _variant(tmp_path, "a", 0.41)
    install(a, root)
    with open(root / CURRENT / _model_file(root / CURRENT), "ab") as fh:
        fh.write(b"junk")  # a bad SD card sector
    with pytest.raises(Exception):
        load_bundle(root / CURRENT)
    install(a, root)  # reinstalling, as the error message says, must repair it
    assert _current_threshold(root) == 0.41


def test_careless_sources_are_refused(tmp_path):
    root = tmp_path / "opt"
    install(_variant(tmp_path, "a", 0.41), root)
    with pytest.raises(UpdateError, match="must not be inside"):
        install(root, root)
    fifo = tmp_path / "bundle.zip"
    os.mkfifo(fifo)
    with pytest.raises(UpdateError, match="neither a bundle folder"):
        install(fifo, root)


def test_two_updates_at_once_are_not_allowed(tmp_path):
    from device.update import _lock
    root = tmp_path / "opt"
    install(_variant(tmp_path, "a", 0.41), root)
    held = _lock(root)
    try:
        with pytest.raises(UpdateError, match="another update is running"):
            install(_variant(tmp_path, "b", 0.62), root)
    finally:
        held.close()
    assert _current_threshold(root) == 0.41


def test_an_old_unsigned_install_is_migrated_even_with_a_key_configured(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    from export.signing import generate_keypair, sign_bundle
    root = tmp_path / "opt"
    root.mkdir()
    shutil.copytree(_variant(tmp_path, "old", 0.41), root / CURRENT)  # unsigned, from before keys
    private, public = generate_keypair(tmp_path / "keys")
    new = _variant(tmp_path, "new", 0.62)
    sign_bundle(new, private)
    monkeypatch.setenv("FRACTURE_EDGE_TRUSTED_KEY", str(public))
    install(new, root)
    assert _current_threshold(root) == 0.62


def test_an_older_bundle_is_not_installed_over_a_newer_one(tmp_path):
    root = tmp_path / "opt"
    install(_variant(tmp_path, "new", 0.62), root)
    old = _variant(tmp_path, "old", 0.41)
    m = json.loads((old / "manifest.json").read_text())
    m["created_utc"] = "2020-01-01T00:00:00Z"  # e.g. last year's validly signed bundle, replayed
    (old / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(UpdateError, match="before the current one"):
        install(old, root)
    assert _current_threshold(root) == 0.62
    install(old, root, allow_older=True)
    assert _current_threshold(root) == 0.41
