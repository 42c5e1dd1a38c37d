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


def test_a_damaged_runtime_is_replaced_whole(tmp_path):
    tgz = _tarball(FILES)
    root = _app_root(tmp_path, tgz)
    (tmp_path / "rt.tgz").write_bytes(tgz)
    fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")
    (root / "vendor" / VENDOR_FILES[1]).write_bytes(b"bit rot")
    assert fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")["changed"] is True
    assert (root / "vendor" / VENDOR_FILES[1]).read_bytes() == FILES[VENDOR_FILES[1]]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".vendor-")) == []  # nothing left over


def test_a_swap_that_fails_half_way_keeps_the_old_runtime_and_says_why(tmp_path, monkeypatch):
    old_files = {n: b"old " + c for n, c in FILES.items()}
    root = _app_root(tmp_path, _tarball(FILES))
    (tmp_path / "old.tgz").write_bytes(_tarball(old_files))
    (root / "vendor").mkdir()
    for n, c in old_files.items():
        (root / "vendor" / n).write_bytes(c)
    (tmp_path / "rt.tgz").write_bytes(_tarball(FILES))
    real_rename = Path.rename

    def rename(self, target):  # the old runtime moved aside, then the new one cannot be moved in
        if self.name.startswith(".vendor-new-"):
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(RuntimeFetchError, match=r"cannot write the runtime there \(No space left on device\); "
                                                r"is the disk full\?; the earlier runtime, if any, is kept"):
        fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz", force=True)
    monkeypatch.undo()
    assert all((root / "vendor" / n).read_bytes() == c for n, c in old_files.items())
    assert [p.name for p in root.iterdir() if p.name.startswith(".vendor-")] == []


def test_a_fetch_killed_between_its_renames_is_recovered_by_the_next(tmp_path):
    root = _app_root(tmp_path, _tarball(FILES))
    stranded = root / ".vendor-old-abc123" / "vendor"  # the runtime moved aside, the new one never moved in
    stranded.mkdir(parents=True)
    (stranded / "kept.txt").write_text("the earlier runtime")
    (root / "gone.tgz").write_bytes(b"")
    with pytest.raises(RuntimeFetchError):  # the fetch itself fails (offline, no file): the old is back anyway
        fetch_runtime(root, VENDOR_FILES, source=root / "gone.tgz")
    assert (root / "vendor" / "kept.txt").read_text() == "the earlier runtime"
    assert not (root / ".vendor-old-abc123").exists()


def test_links_and_paths_out_of_the_package_are_never_followed(tmp_path):
    """Only regular members at the three fixed names are read; a link there is a missing file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        meta = json.dumps({"name": "onnxruntime-web", "version": "9.9.9"}).encode()
        info = tarfile.TarInfo("package/package.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        for n, c in FILES.items():
            if n == VENDOR_FILES[0]:
                link = tarfile.TarInfo(f"package/dist/{n}")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
                evil = tarfile.TarInfo(f"package/dist/../../../{n}")
                evil.size = len(c)
                tar.addfile(evil, io.BytesIO(c))
            else:
                info = tarfile.TarInfo(f"package/dist/{n}")
                info.size = len(c)
                tar.addfile(info, io.BytesIO(c))
    tgz = buf.getvalue()
    root = _app_root(tmp_path, tgz)
    (tmp_path / "rt.tgz").write_bytes(tgz)
    with pytest.raises(RuntimeFetchError, match=f"lacks {VENDOR_FILES[0]}"):
        fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")
    assert not (root / "vendor").exists() and not (tmp_path / VENDOR_FILES[0]).exists()


def test_a_lock_with_several_hashes_accepts_the_sha512_among_them_and_a_carried_folder(tmp_path):
    tgz = _tarball(FILES)
    root = _app_root(tmp_path, tgz)
    lock = json.loads((root / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/onnxruntime-web"]
    entry["integrity"] = f"sha1-{base64.b64encode(b'x' * 20).decode()} {entry['integrity']}?opt"  # SRI allows it
    (root / "package-lock.json").write_text(json.dumps(lock))
    stick = tmp_path / "usb wheels"
    stick.mkdir()
    (stick / "onnxruntime-web-9.9.9.tgz").write_bytes(tgz)
    (stick / "onnxruntime-web-9.9.8.tgz").write_bytes(b"an older one, not the pinned version")
    assert fetch_runtime(root, VENDOR_FILES, source=stick)["changed"] is True  # the folder: the pinned name in it
    entry["integrity"] = "sha1-" + base64.b64encode(b"x" * 20).decode()
    (root / "package-lock.json").write_text(json.dumps(lock))
    with pytest.raises(RuntimeFetchError, match="names no sha512"):
        fetch_runtime(root, VENDOR_FILES, source=stick, force=True)


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


def test_a_running_service_serves_a_runtime_that_appears_or_is_replaced_at_once(monkeypatch):
    """AppSite, as the service holds it: no 30 s wait when the runtime appears, and a replaced
    runtime is served from the next request, not the cached site."""
    import device.webapp as webapp
    from device.page import AppSite

    state = {"stamp": ("missing",), "builds": 0}

    class Bundle:
        digest = "d1"

    def build_site(bundle):
        state["builds"] += 1
        if state["stamp"] == ("missing",):
            raise RuntimeMissing("the phone app's WASM runtime is missing")
        return webapp.Site({"index.html": b"<html>" + state["stamp"][0].encode()}, "v", "onnx_float")

    monkeypatch.setattr(webapp, "build_site", build_site)
    monkeypatch.setattr(webapp, "runtime_stamp", lambda: state["stamp"])
    app = AppSite(lambda: Bundle())
    for _ in range(3):
        with pytest.raises(RuntimeMissing):
            app.get("index.html", False)
    assert state["builds"] == 1  # a failed build is not retried on every request ...
    state["stamp"] = ("v1",)
    assert app.get("index.html", False)[0] == b"<html>v1"  # ... but at once when the runtime appears
    assert app.get("index.html", False)[0] == b"<html>v1" and state["builds"] == 2  # then cached
    state["stamp"] = ("v2",)  # fetched again (repaired, or a new version)
    assert app.get("index.html", False)[0] == b"<html>v2" and state["builds"] == 3


def test_a_runtime_file_that_does_not_match_its_recorded_sum_is_not_served(tmp_path, monkeypatch):
    import device.webapp as webapp

    root = _app_root(tmp_path, _tarball(FILES))
    (tmp_path / "rt.tgz").write_bytes(_tarball(FILES))
    fetch_runtime(root, VENDOR_FILES, source=tmp_path / "rt.tgz")
    assert webapp._vendor_files(root) == FILES
    (root / "vendor" / VENDOR_FILES[2]).write_bytes(b"\0" * 10)  # cut short by a power cut
    with pytest.raises(RuntimeMissing, match="does not match VENDOR.json"):
        webapp._vendor_files(root)
