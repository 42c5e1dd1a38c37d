"""`device update` trusts nothing in the bundle folder or zip it is given (a USB stick from anyone):
only the files the manifest lists are copied, each a plain file by lstat, under a byte cap; zips
are refused by entry count, ratio, encryption and method before anything is unpacked; and a refused
update leaves no staging behind. Each case here was a defect of the updater before this work."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.fsfuzz import bundle_variant
from device import update
from device.update import CURRENT, STORE, UpdateError, install
from edge_runtime.bundle import REPO_BUNDLE, load_bundle

ROOT = Path(__file__).resolve().parent.parent


def _bundle(tmp_path: Path, name: str = "b", threshold: float = 0.47) -> Path:
    """The reference bundle with another threshold: a valid bundle with its own digest."""
    return bundle_variant(tmp_path / name, threshold)


def _installed(tmp_path: Path) -> Path:
    root = tmp_path / "opt"
    install(_bundle(tmp_path, "first", 0.41), root, self_test=False)
    return root


def _no_staging(root: Path) -> bool:
    return not [p for p in (root / STORE).iterdir() if p.name.startswith(".")]


def _stored(root: Path) -> set:
    return {p.name for p in (root / CURRENT).iterdir()}


def _zip(path: Path, src: Path, prefix: str = "bundle/", extra=()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, prefix + f.name)
        for info, data in extra:
            zf.writestr(info, data)
    return path


def _patch_member(path: Path, name: str, flag: int = 0, method: int = None) -> None:
    """Set general-purpose flag bits, or the method, of one member in both of a zip's headers (what
    7-Zip writes for an encrypted or Deflate64 member; zipfile cannot write either)."""
    data = bytearray(path.read_bytes())
    raw = name.encode()
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.find(sig)
        while at >= 0:
            if data[at + name_at:at + name_at + len(raw)] == raw:
                (bits,) = struct.unpack_from("<H", data, at + flag_at)
                struct.pack_into("<H", data, at + flag_at, bits | flag)
                if method is not None:
                    struct.pack_into("<H", data, at + flag_at + 2, method)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


def _update_cli(src: Path, root: Path):
    """`python -m device update` in its own process: the old updater hung on a FIFO or /dev/zero,
    and a hang must fail this test, not stall the suite."""
    res = subprocess.run([sys.executable, "-m", "device", "update", str(src), "--root", str(root), "--skip-self-test"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    return res.returncode, res.stderr


def test_links_fifos_sockets_and_loops_not_in_the_manifest_are_never_opened(tmp_path):
    """The defect: `ln -s /dev/zero bundle/notes.txt` filled the disk; two `-> .` links copied
    without end. Nothing the manifest does not list is looked at, so all of these install cleanly."""
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    os.symlink("/dev/zero", src / "notes.txt")
    os.symlink(".", src / "loop1")
    os.symlink(".", src / "loop2")
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    (src / "extra").mkdir()
    (src / "extra" / "x.txt").write_text("not listed")
    (src / "README.txt").write_text("not listed either")
    try:
        rc, err = _update_cli(src, root)
    finally:
        sock.close()
    assert rc == 0, err
    assert load_bundle(root / CURRENT).threshold == 0.47
    assert _stored(root) == {"manifest.json", *json.loads((src / "manifest.json").read_text())["files"]}
    assert _no_staging(root)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "symlink_out", "hardlink", "folder"])
def test_a_listed_file_that_is_not_one_plain_file_is_refused_by_name(tmp_path, kind):
    """A file the manifest lists must be a regular file with one name, inside the folder: even a
    link to an identical copy (which would verify) is refused, so nothing is copied from outside."""
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    target = src / "report.md"
    outside = tmp_path / "outside.md"
    shutil.copy(target, outside)
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", target)
    elif kind == "symlink_out":
        os.symlink(outside, target)
    elif kind == "hardlink":
        os.link(outside, target)
    else:
        target.mkdir()
    rc, err = _update_cli(src, root)
    expected = {"fifo": "a FIFO", "dev_zero": "a symbolic link", "symlink_out": "a symbolic link",
                "hardlink": "a hard link", "folder": "a folder"}[kind]
    assert rc == 2 and f"{target}: {expected}" in err, err
    assert load_bundle(root / CURRENT).threshold == 0.41 and _no_staging(root)


def test_a_symlinked_manifest_is_refused(tmp_path):
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    shutil.move(src / "manifest.json", tmp_path / "manifest.json")
    os.symlink(tmp_path / "manifest.json", src / "manifest.json")
    with pytest.raises(UpdateError, match="manifest.json: a symbolic link"):
        install(src, root, self_test=False)
    assert load_bundle(root / CURRENT).threshold == 0.41 and _no_staging(root)


def test_a_bundle_over_the_byte_cap_is_refused_before_it_is_copied(tmp_path, monkeypatch):
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    monkeypatch.setattr(update, "MAX_BUNDLE_BYTES", 200_000)  # the reference bundle's models are ~380 KB each
    with pytest.raises(UpdateError, match="larger than"):
        install(src, root, self_test=False)
    with pytest.raises(UpdateError, match="larger than"):
        install(_zip(tmp_path / "b.zip", src), root, self_test=False)
    assert load_bundle(root / CURRENT).threshold == 0.41 and _no_staging(root)


def test_unlisted_zip_members_are_not_unpacked(tmp_path):
    root = _installed(tmp_path)
    link = zipfile.ZipInfo("bundle/notes.txt")
    link.external_attr = 0o120777 << 16  # a symlink member, to /etc/passwd
    path = _zip(tmp_path / "b.zip", _bundle(tmp_path), extra=[(link, "/etc/passwd"), ("bundle/README.txt", "hello"),
                                                               ("bundle/docs/report.md", "nested")])
    assert install(path, root, self_test=False)["switched"]
    listed = set(json.loads((REPO_BUNDLE / "manifest.json").read_text())["files"])
    assert _stored(root) == {"manifest.json"} | listed  # exactly what the manifest lists
    assert _no_staging(root)


@pytest.mark.parametrize("case", ["encrypted", "encrypted_unlisted", "deflate64", "symlink", "bomb", "unlisted_bomb",
                                  "duplicate", "many", "traversal", "two_manifests", "corrupt"])
def test_hostile_zips_are_refused_with_the_reason_and_leave_nothing(tmp_path, case):
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    path = tmp_path / "b.zip"
    expected = {"encrypted": "encrypted", "encrypted_unlisted": "encrypted", "deflate64": "deflate64",
                "symlink": "a symbolic link", "bomb": "fold", "unlisted_bomb": "zip bomb", "duplicate": "appears twice", "many": "its central directory lists more than 64 entries",
                "traversal": "unexpected entry",
                "two_manifests": "manifest.json found", "corrupt": "not a readable zip"}[case]
    if case in ("encrypted", "deflate64"):
        _zip(path, src)
        _patch_member(path, "bundle/report.md", flag=1 if case == "encrypted" else 0,
                      method=9 if case == "deflate64" else None)
    elif case == "symlink":
        (src / "report.md").unlink()
        link = zipfile.ZipInfo("bundle/report.md")
        link.external_attr = 0o120777 << 16
        _zip(path, src, extra=[(link, "/etc/passwd")])
    elif case == "encrypted_unlisted":  # a zip no export makes: refused whole, though it would not be unpacked
        _zip(path, src, extra=[("bundle/notes.txt", "secret")])
        _patch_member(path, "bundle/notes.txt", flag=1)
    elif case == "bomb":  # a listed file that inflates 1000-fold
        (src / "report.md").write_bytes(b"\0" * 20_000_000)
        _zip(path, src)
    elif case == "unlisted_bomb":
        bomb = zipfile.ZipInfo("bundle/zeros.bin")
        bomb.compress_type = zipfile.ZIP_DEFLATED
        _zip(path, src, extra=[(bomb, b"\0" * 20_000_000)])
    elif case == "duplicate":
        with pytest.warns(UserWarning):
            _zip(path, src, extra=[("bundle/report.md", "second")])
    elif case == "many":
        _zip(path, src, extra=[(f"bundle/junk{i:05}", "") for i in range(5000)])
    elif case == "traversal":
        _zip(path, src, extra=[("../../escaped.txt", "x")])
    elif case == "two_manifests":
        _zip(path, src, extra=[("other/manifest.json", (src / "manifest.json").read_text())])
    else:
        _zip(path, src)
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(64)  # a bad sector inside a model's packed data: the zip still opens
        path.write_bytes(bytes(data))
    with pytest.raises(UpdateError, match=expected) as err:
        install(path, root, self_test=False)
    assert str(path) in str(err.value)
    assert load_bundle(root / CURRENT).threshold == 0.41 and _no_staging(root)
    assert not (tmp_path / "escaped.txt").exists()


def _junk_directory(n: int) -> bytes:
    """n central-directory entries of empty stored files, all pointing at the zip's first byte
    (zipfile reads only the directory to list a zip: the entries need no data of their own)."""
    out = []
    for i in range(n):
        name = b"bundle/j%07d" % i
        out.append(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name),
                               0, 0, 0, 0, 0, 0) + name)
    return b"".join(out)


def _hostile_directory(path: Path, src: Path, junk: int, how: str) -> Path:
    """A bundle zip whose central directory also holds `junk` entries, its end written `how`:
    "lying_count" (the end record declares only the bundle's entries), or "decoy_zip64" (the
    zip64 locator points at a decoy zip64 end record before the directory that declares 1 entry,
    while the real one sits just before the locator, where CPython's zipfile reads it)."""
    _zip(path, src)
    data = path.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    real, cd_size, cd_offset = struct.unpack("<HLL", data[end + 10:end + 20])
    local, directory = data[:cd_offset], data[cd_offset:cd_offset + cd_size] + _junk_directory(junk)
    if how == "lying_count":
        tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, real, real, len(directory), len(local), 0)
        path.write_bytes(local + directory + tail)
        return path
    decoy = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, 46, len(local) + 56)
    total = real + junk
    real64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, len(directory),
                         len(local) + 56)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(local), 1)
    tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(local + decoy + directory + real64 + locator + tail)
    return path


@pytest.mark.parametrize("how", ["many", "lying_count", "decoy_zip64"])
def test_a_zips_directory_is_counted_before_zipfile_reads_it(tmp_path, monkeypatch, how):
    """The entry cap read a count field: a directory of 1,000,000 entries (47 MB) behind a
    zip64 locator pointing at a decoy end record that declares 1 entry passed it, then zipfile
    (which reads the zip64 end record just before the locator) built 1,000,000 ZipInfo objects:
    408 MB. Here 5,000 entries: the zip is refused before zipfile is asked to open it, whether the
    count is true, lies, or sits in a decoy."""
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    path = tmp_path / "b.zip"
    if how == "many":
        _zip(path, src, extra=[(f"bundle/junk{i:05}", "") for i in range(5000)])
    else:
        _hostile_directory(path, src, 5000, how)
        assert len(zipfile.ZipFile(path).infolist()) == 5000 + len(list(src.iterdir()))  # what zipfile would build
    opened = []
    real_zipfile = zipfile.ZipFile
    monkeypatch.setattr(update.zipfile, "ZipFile", lambda *a, **k: opened.append(1) or real_zipfile(*a, **k))
    expected = "zip64 locator points at byte" if how == "decoy_zip64" else "its central directory lists more than 64"
    with pytest.raises(UpdateError, match=expected) as err:
        install(path, root, self_test=False)
    assert str(path) in str(err.value) and opened == []
    assert load_bundle(root / CURRENT).threshold == 0.41 and _no_staging(root)


def test_a_refused_update_leaves_no_staging_whatever_the_reason(tmp_path, monkeypatch):
    """Not only UpdateError: an unexpected failure during the self-test also removes the copy."""
    root = _installed(tmp_path)

    def boom(*_a, **_k):
        raise MemoryError("simulated")

    monkeypatch.setattr(update, "verify", boom)
    with pytest.raises(MemoryError):
        install(_bundle(tmp_path), root)
    assert load_bundle(root / CURRENT).threshold == 0.41 and _no_staging(root)


def test_manifest_names_outside_the_folder_are_refused_before_copying(tmp_path):
    root = _installed(tmp_path)
    src = _bundle(tmp_path)
    m = json.loads((src / "manifest.json").read_text())
    m["files"]["../../../etc/passwd"] = "0" * 64
    (src / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UpdateError, match="not a plain file name"):
        install(src, root, self_test=False)
    (src / "manifest.json").write_text("[" * 100_000)  # not JSON a parser survives
    with pytest.raises(UpdateError, match="not a readable manifest"):
        install(src, root, self_test=False)
    assert _no_staging(root)


def test_seeded_filesystem_fuzzing_of_update_finds_no_escape():
    """benchmarks/fsfuzz.py's `update` target, seeded and short: random hazards in bundle folders
    and zips (links, FIFOs, sockets, hard links, sparse giants, unlisted files; encrypted,
    Deflate64, bombs, many members, traversal, lying sizes). Each is refused naming the source or
    installs exactly the listed files; no staging left, nothing from outside copied."""
    from benchmarks.fsfuzz import fuzz

    res = fuzz("update", cases=30, seed=7)
    assert res["escapes"] == [], res["escapes"]
    assert res["answered"] >= 3 and res["refused"] >= 10  # both outcomes were exercised


@pytest.mark.parametrize("sabotage", ["keep_staging", "no_zip_checks"])
def test_the_update_fuzzer_notices_a_broken_promise(monkeypatch, sabotage):
    """A fuzzer that cannot fail proves nothing: an updater that leaves its staging, or unpacks a
    zip without looking at its members, must show up as escapes."""
    from benchmarks.fsfuzz import fuzz

    if sabotage == "keep_staging":
        monkeypatch.setattr(update, "remove_path", lambda path, ignore_errors=False: None)
        expected = "staging left behind"
    else:
        monkeypatch.setattr(update, "_member_problem", lambda m: None)
        expected = "installed despite"
    out = fuzz("update", cases=30, seed=7)
    assert any(expected in e for e in out["escapes"]), out["escapes"][:5]
