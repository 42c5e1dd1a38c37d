"""A clinic install from a clean clone serves a working phone app, online and offline.

The tree is copied as git would clone it (tracked files and untracked ones git does not ignore:
no webapp/vendor, no node_modules), then `install.sh` runs for real, as a user install
(--no-systemd --skip-apt, into a temporary prefix): pip installs the package from that copy, and
step 5 fetches the pinned WASM runtime from the npm registry with no Node. The installed service
then answers /app/; on the same install the runtime is removed (the service answers 503 with the
fix), `--fetch-runtime --from` the carried tarball (the registry made unreachable) puts it back,
and the running service serves /app/ at once, not after a retry delay. The offline route is run
as docs/device.md gives it: wheels and the tarball on a "stick", `install.sh --wheels` with no
index and no registry in reach, then /app/. Needs PyPI and the npm registry to prepare (CI has
both); skips, saying so, where they are unreachable (and CI's skip rule then fails the run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from device.webapp import VENDOR_FILES, webapp_root
from device.webapp_runtime import pinned

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
        return True
    except (OSError, ValueError):
        return False


def _clean_clone(dest: Path) -> Path:
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not cloned either
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    """(status, body) without raising on 503."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited with {proc.returncode}")
        try:
            return _get(url)
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} never answered")


def _needs_registries(pin) -> None:
    if not (_reachable("https://pypi.org/simple/pip/") and _reachable(pin.url())):
        pytest.skip("PyPI or the npm registry is unreachable: the install cannot run here")


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FRACTURE_EDGE_", "VIRTUAL_ENV"))}


def _install(src: Path, prefix: Path, data: Path, env: dict, *more: str) -> subprocess.CompletedProcess:
    """install.sh as a user install into `prefix` (no apt, no systemd, no new user)."""
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    res = subprocess.run(["bash", str(src / "device/install/install.sh"), "--target", "generic", "--no-systemd",
                          "--skip-apt", "--prefix", str(prefix), "--data", str(data), "--etc", str(prefix / "etc"),
                          "--key-dir", str(prefix / "keys"), "--user", user, *more],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _serve(prefix: Path, data: Path, env: dict, cwd: Path):
    port = _free_port()
    proc = subprocess.Popen([str(prefix / "venv/bin/python"), "-m", "device", "serve", "--data", str(data), "--port",
                             str(port)], cwd=cwd, env={**env, "FRACTURE_EDGE_BUNDLE": str(prefix / "bundle")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}/app/"


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_clean_clone_installs_and_serves_the_phone_app_online(tmp_path):
    pin = pinned(webapp_root())
    _needs_registries(pin)
    src = _clean_clone(tmp_path / "clone")
    assert not (src / "webapp" / "vendor").exists()  # as a clone has it: the runtime is not in git
    prefix, data = tmp_path / "opt", tmp_path / "data"
    env = _clean_env()
    res = _install(src, prefix, data, env)
    assert "integrity checked" in res.stdout and "warning: the phone app" not in res.stderr
    py = prefix / "venv" / "bin" / "python"
    installed_root = Path(subprocess.run([str(py), "-c", "import fracture_edge_webapp as w, pathlib; "
                                          "print(pathlib.Path(w.__file__).parent)"], capture_output=True, text=True,
                                         check=True, cwd=tmp_path, env=env).stdout.strip())
    vendor = installed_root / "vendor"
    info = json.loads((vendor / "VENDOR.json").read_text())
    assert info["version"] == pin.version and sorted(info["sha256"]) == sorted(VENDOR_FILES)

    proc, base = _serve(prefix, data, env, tmp_path)
    try:
        status, body = _wait_for(base, proc)
        assert status == 200 and b"<html" in body.lower()  # online: the app, straight after install.sh
        status, wasm = _get(base + "vendor/ort-wasm-simd-threaded.wasm")
        assert status == 200 and wasm == (vendor / "ort-wasm-simd-threaded.wasm").read_bytes()

        # Offline: the runtime gone, then put back from the carried tarball with no registry in reach.
        tarball = tmp_path / "usb" / pin.tarball_name()
        tarball.parent.mkdir()
        urllib.request.urlretrieve(pin.url(), tarball)
        shutil.rmtree(vendor)
        _stop(proc)
        proc, base = _serve(prefix, data, env, tmp_path)
        status, body = _wait_for(base, proc)
        assert status == 503 and b"--fetch-runtime" in body, body
        offline = {**env, "NPM_CONFIG_REGISTRY": "http://127.0.0.1:9"}  # any download attempt would fail
        res = subprocess.run([str(py), "-m", "device", "webapp", "--fetch-runtime", "--from", str(tarball)],
                             capture_output=True, text=True, env=offline, cwd=tmp_path, timeout=120)
        assert res.returncode == 0, res.stderr
        t0 = time.monotonic()
        status, _ = _get(base)
        assert status == 200, "the running service did not pick the runtime up at once"
        assert time.monotonic() - t0 < 10
    finally:
        _stop(proc)


def test_the_offline_route_from_wheels_and_the_carried_tarball_serves_the_app(tmp_path):
    """docs/device.md's offline steps: on a connected machine our wheel (built from a clone, so
    without the runtime), every dependency's wheel and the runtime's tarball go on the stick; the
    device installs with pip --no-index and no registry in reach, and serves /app/."""
    pin = pinned(webapp_root())
    _needs_registries(pin)
    src = _clean_clone(tmp_path / "clone")
    env = _clean_env()
    stick = tmp_path / "usb" / "wheels"
    stick.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(stick), str(src)], check=True, env=env, timeout=600,
                   capture_output=True)
    subprocess.run([*pip, "download", "-d", str(stick), "--only-binary=:all:", "numpy", "Pillow", "ai-edge-litert",
                    "pydicom", "cryptography"], check=True, env=env, timeout=600, capture_output=True)
    urllib.request.urlretrieve(pin.url(), stick / pin.tarball_name())
    offline = {**env, "NPM_CONFIG_REGISTRY": "http://127.0.0.1:9", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    prefix, data = tmp_path / "opt", tmp_path / "data"
    res = _install(src, prefix, data, offline, "--wheels", str(stick))
    assert f"--fetch-runtime --from {stick}\n" in res.stdout and "integrity checked" in res.stdout
    proc, base = _serve(prefix, data, offline, tmp_path)
    try:
        status, body = _wait_for(base, proc)
        assert status == 200 and b"<html" in body.lower()
        status, _ = _get(base + "vendor/ort.wasm.min.mjs")
        assert status == 200
    finally:
        _stop(proc)
