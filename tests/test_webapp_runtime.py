"""Fetching the phone app's runtime without Node: the lock's sha512 is checked before anything is
read out of the tarball, nothing is written unless every check passes, a runtime in place is kept,
and a damaged one is replaced. Tarballs are made here; the real one is fetched in
test_clinic_install.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from device.cli import main as device_main
from device.webapp import RuntimeMissing, VENDOR_FILES, _vendor_dir
from device.webapp_runtime import RuntimeFetchError, fetch_runtime, pinned


def _tarball(files: dict, name: str = "onnxruntime-web", version: str = "9.9.9") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {"package/package.json": json.dumps({"name": name, "version": version, "license": "MIT"}).encode(),
                   **{f"package/dist/{k}": v for k, v in files.items()}}
        for path, content in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _app_root(tmp_path: Path, tgz: bytes, version: str = "9.9.9") -> Path:
    """An app folder whose package-lock.json pins `tgz` (as npm writes it)."""
    root = tmp_path / "webapp"
    root.mkdir()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    lock = {"packages": {"node_modules/onnxruntime-web": {"version": version, "integrity": integrity}}}
    (root / "package-lock.json").write_text(json.dumps(lock))
    return root


FILES = {n: f"runtime file {n}".encode() * 50 for n in VENDOR_FILES}


def test_a_pinned_tarball_is_checked_then_unpacked_with_its_sums(tmp_path):
    tgz = _tarball({**FILES, "other.js": b"not wanted"})
    root = _app_root(tmp_path, tgz)
    (tmp_path / "rt.tgz").write_bytes(tgz)
    res = fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")
    assert res["changed"] and res["version"] == "9.9.9"
    vendor = root / "vendor"
    assert sorted(p.name for p in vendor.iterdir()) == sorted([*VENDOR_FILES, "VENDOR.json"])
    info = json.loads((vendor / "VENDOR.json").read_text())
    assert info["sha256"] == {n: hashlib.sha256(c).hexdigest() for n, c in FILES.items()}
    assert all((vendor / n).read_bytes() == c for n, c in FILES.items())
    # In place and intact: kept without reading the tarball again (it is gone now).
    (tmp_path / "rt.tgz").unlink()
    assert fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")["changed"] is False


def test_a_tarball_that_is_not_the_pinned_one_is_refused_and_nothing_is_written(tmp_path):
    root = _app_root(tmp_path, _tarball(FILES))
    other = tmp_path / "other.tgz"
    other.write_bytes(_tarball({**FILES, VENDOR_FILES[0]: b"tampered"}))
    with pytest.raises(RuntimeFetchError, match=r"other\.tgz: integrity check failed.*nothing was written"):
        fetch_runtime(root, VENDOR_FILES, source=other)
    assert not (root / "vendor").exists()


@pytest.mark.parametrize("case", ["missing file", "wrong package", "not a tarball"])
def test_a_pinned_but_unusable_tarball_is_refused_by_name(tmp_path, case):
    tgz = {"missing file": _tarball({k: v for k, v in FILES.items() if k != VENDOR_FILES[2]}),
           "wrong package": _tarball(FILES, name="left-pad"),
           "not a tarball": b"<html>registry error page</html>"}[case]
    root = _app_root(tmp_path, tgz)
    (tmp_path / "rt.tgz").write_bytes(tgz)
    want = {"missing file": f"lacks {VENDOR_FILES[2]}", "wrong package": "holds left-pad",
            "not a tarball": "not a readable .tgz"}[case]
    with pytest.raises(RuntimeFetchError, match=want):
        fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")
    assert not (root / "vendor").exists()


def test_a_damaged_runtime_is_replaced_whole_and_a_failed_fetch_keeps_the_old(tmp_path):
    tgz = _tarball(FILES)
    root = _app_root(tmp_path, tgz)
    (tmp_path / "rt.tgz").write_bytes(tgz)
    fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")
    (root / "vendor" / VENDOR_FILES[1]).write_bytes(b"bit rot")
    assert fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")["changed"] is True
    assert (root / "vendor" / VENDOR_FILES[1]).read_bytes() == FILES[VENDOR_FILES[1]]
    (tmp_path / "bad.tgz").write_bytes(b"junk")
    with pytest.raises(RuntimeFetchError):
        fetch_runtime(root, VENDOR_FILES, source=tmp_path / "bad.tgz", force=True)
    assert (root / "vendor" / VENDOR_FILES[1]).read_bytes() == FILES[VENDOR_FILES[1]]


def test_an_unreachable_registry_says_how_to_install_offline(tmp_path):
    root = _app_root(tmp_path, _tarball(FILES))
    with pytest.raises(RuntimeFetchError, match=r"127\.0\.0\.1:9/onnxruntime-web/-/onnxruntime-web-9\.9\.9\.tgz: "
                                                r"cannot download .*--from FILE"):
        fetch_runtime(root, VENDOR_FILES, registry="http://127.0.0.1:9")


def test_the_shipped_lock_pins_a_sha512_and_the_cli_reports_a_bad_file(tmp_path, capsys):
    pin = pinned(Path(__file__).resolve().parent.parent / "webapp")
    assert pin.integrity.startswith("sha512-") and pin.url().endswith(f"/onnxruntime-web-{pin.version}.tgz")
    bad = tmp_path / "carried.tgz"
    bad.write_bytes(b"not it")
    assert device_main(["webapp", "--fetch-runtime", "--from", str(bad), "--force"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "integrity check failed" in err


def test_a_missing_runtime_names_the_command_that_fetches_it(tmp_path):
    (tmp_path / "vendor").mkdir()
    with pytest.raises(RuntimeMissing, match=r"missing .*python -m device webapp --fetch-runtime"):
        _vendor_dir(tmp_path)
