"""Nothing a clinic feeds the runtime may hang it, crash it or exhaust the device.

Each test reproduces a fault found by adversarial testing: it failed before the fix and asserts
the behaviour now promised (an answer, or a one-line record naming the file and the reason).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import fuzz
from edge_runtime.bundle import REPO_BUNDLE, BundleError, load_bundle, seal
from edge_runtime.cli import main as runtime_main
from edge_runtime.cli import printable
from edge_runtime.dicom import read_dicom
from edge_runtime.errors import ImageReadError
from edge_runtime.imageio import read_grayscale
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import PreprocessSpec
from tests.dicom_factory import PATIENT_NAME, write_dicom
from answers import answer_of, answered, in_scope_radiograph  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SPEC = PreprocessSpec()


def _radiograph(w: int = 180, h: int = 220) -> np.ndarray:
    return (fuzz._radiograph(w, h) * 255).astype(np.uint8)


# --- inputs that are not files ---------------------------------------------------------------

def test_a_fifo_is_refused_without_being_opened(tmp_path):
    """Before: `predict x.jpg` on a FIFO blocked forever in open()."""
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    good = tmp_path / "good.png"
    Image.fromarray(_radiograph()).save(good)
    code = ("import sys; from edge_runtime.inputs import read_image; from edge_runtime.preprocess import PreprocessSpec\n"
            "from edge_runtime.errors import ImageReadError\n"
            "for p in sys.argv[1:]:\n"
            "    try: read_image(p, PreprocessSpec()); print('ok', p)\n"
            "    except ImageReadError as e: print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(fifo), str(good)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused") and "named pipe (FIFO)" in lines[0] and str(fifo) in lines[0]
    assert lines[1] == f"ok {good}"  # and the batch went on


def test_permission_problems_are_named_as_such(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    Image.fromarray(_radiograph()).save(p)
    import edge_runtime.filecheck as filecheck
    real_open = os.open

    def no_read(path, flags, *a, **k):
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied")  # as for a non-root user without read permission
        return real_open(path, flags, *a, **k)
    monkeypatch.setattr(filecheck.os, "open", no_read)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_image(p, SPEC)
    monkeypatch.undo()

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Image, "open", denied)  # readable by stat, refused at open (e.g. an ACL)
    with pytest.raises(ImageReadError, match="permission denied") as err:
        read_grayscale(p)
    assert "corrupt" not in str(err.value)


def test_a_missing_dcm_is_not_called_a_corrupt_dicom(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "gone.dcm", SPEC)


# --- DICOM values that escaped before ----------------------------------------------------------

def _edit_dicom(path: Path, **changes) -> Path:
    import pydicom
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if key == "syntax":
            ds.file_meta.TransferSyntaxUID = value
        elif key == "empty_voi":
            ds.VOILUTSequence = pydicom.Sequence([pydicom.Dataset()])
        else:
            elem = ds[key]
            elem.VR = "LO"  # lets us store text where a number belongs, as a broken writer would
            elem.value = value
    ds.save_as(path)
    return path


@pytest.mark.parametrize("changes, reason", [
    ({"WindowCenter": "abc"}, "WindowCenter is not a valid number"),
    ({"RescaleSlope": PATIENT_NAME}, "could not be decoded|RescaleSlope"),
    ({"Rows": "many"}, "Rows is not a valid number|could not be decoded"),
    ({"empty_voi": True}, "VOI LUT is incomplete"),
    ({"syntax": "1.2.840.113619.5.2"}, "transfer syntax|could not be decoded"),
])
def test_malformed_dicom_values_are_a_dicom_error_that_leaks_nothing(tmp_path, changes, reason):
    pytest.importorskip("pydicom")
    arr = np.tile(np.linspace(0, 4095, 140), (160, 1)).astype(np.uint16)
    path = write_dicom(tmp_path / "bad.dcm", arr, window=(2048, 3000))
    _edit_dicom(path, **changes)
    with pytest.raises(ImageReadError, match=reason) as err:
        read_image(path, SPEC)
    assert str(path) in str(err.value) and "DOE" not in str(err.value) and "SECRET" not in str(err.value)


def test_window_width_one_is_a_threshold_without_numpy_warnings(tmp_path):
    pytest.importorskip("pydicom")
    arr = np.tile(np.linspace(0, 4095, 140), (160, 1)).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_dicom(write_dicom(tmp_path / "w1.dcm", arr, window=(2048, 1))).pixels
    assert set(np.unique(out)) == {0.0, 1.0}


def test_multi_frame_dicom_decodes_only_its_first_frame_and_warns(tmp_path):
    pytest.importorskip("pydicom")
    import pydicom
    frames = np.stack([np.full((160, 140), 100 * (k + 1), np.uint16) for k in range(4)])
    frames[0, :, :70] = 3000
    path = write_dicom(tmp_path / "mf.dcm", frames[0])
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames, ds.PixelData = 4, frames.astype("<u2").tobytes()
    ds.save_as(path)
    decoded = read_dicom(path)
    assert any("multi-frame" in w and "first frame" in w for w in decoded.warnings)
    assert decoded.pixels[:, :70].mean() > decoded.pixels[:, 70:].mean()  # frame 0's pattern


def test_multi_page_tiff_and_animated_gif_warn(tmp_path):
    pages = [Image.fromarray(_radiograph()), Image.fromarray(255 - _radiograph())]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "two.gif", save_all=True, append_images=pages[1:])
    for name in ("two.tif", "two.gif"):
        decoded = read_image(tmp_path / name, SPEC)
        assert any("2 pages or frames" in w and "first" in w for w in decoded.warnings), name


# --- memory is bounded before decoding ----------------------------------------------------------

def test_bombs_are_refused_before_decoding_within_the_memory_bound(tmp_path):
    """Before: 1.07 GB for a 78 KB PNG, 522 MB for a 16-bit 8900^2 PNG, 5.96 GB for a deflated
    multi-frame DICOM. Each now gets a reason, in a process that stays under 400 MB."""
    names = []
    for name, (suffix, data) in fuzz.crafted(scale=0.2).items():
        (tmp_path / f"{name}{suffix}").write_bytes(data)
        names.append(str(tmp_path / f"{name}{suffix}"))
    code = ("import sys, json; from benchmarks.memory import peak_rss_mb; from edge_runtime.inputs import read_image\n"
            "from edge_runtime.preprocess import PreprocessSpec; from edge_runtime.errors import ImageReadError\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    try: read_image(p, PreprocessSpec()); out[p] = 'answered'\n"
            "    except ImageReadError as e: out[p] = e.reason\n"
            "print(json.dumps({'results': out, 'rss_mb': peak_rss_mb()}))\n")
    res = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["rss_mb"] <= fuzz.MAX_RSS_MB, got
    reasons = got["results"]
    assert "strip" in reasons[names[0]]
    assert "MB" in reasons[names[1]] or "limit" in reasons[names[1]]
    assert all(r != "answered" for r in reasons.values()), reasons
    if len(names) > 3:
        assert "deflated DICOM" in reasons[names[3]]


# --- the batch and its exit codes -----------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle() -> Path:
    load_bundle(REPO_BUNDLE)  # the committed reference bundle must itself load
    return REPO_BUNDLE


def test_exit_codes_and_one_line_per_file(bundle, tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(in_scope_radiograph()).save(good)  # answered: exit 0 (a refused input would be 1)
    odd = tmp_path / "two\nlines.png"
    shutil.copy(good, odd)
    assert runtime_main(["predict", "--bundle", str(bundle), "--no-gradcam", str(good), str(odd)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith(printable(str(odd))) and "\\n" in out[1]

    assert runtime_main(["predict", "--bundle", str(bundle), "--no-gradcam", str(good),
                         str(tmp_path / "missing.png")]) == 1
    capsys.readouterr()

    target = tmp_path / "heat.png"
    target.write_bytes(b"not a folder")
    assert runtime_main(["predict", "--bundle", str(bundle), "--heatmap", str(target), str(good)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err and target.read_bytes() == b"not a folder"

    from edge_runtime import predictor as predictor_module
    real = predictor_module.Predictor.predict_file

    def flaky(self, path, heatmap_path=None):
        if "boom" in str(path):
            raise KeyError("a bug of ours")
        return real(self, path, heatmap_path)
    monkeypatch.setattr(predictor_module.Predictor, "predict_file", flaky)
    boom = tmp_path / "boom.png"
    shutil.copy(good, boom)
    assert runtime_main(["predict", "--json", "--bundle", str(bundle), "--no-gradcam", str(boom), str(good)]) == 3
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert recs[0]["internal_error"] and "KeyError" in recs[0]["error"] and "a bug of ours" not in recs[0]["error"]
    assert answered(recs[1])  # the batch went on


def test_benchmarks_with_a_missing_bundle_is_exit_2_not_a_traceback(capsys):
    from benchmarks.cli import main as bench_main
    assert bench_main(["--bundle", "/nonexistent/bundle", "--quick"]) == 2
    assert "bundle folder not found" in capsys.readouterr().err


def test_a_heatmap_that_cannot_be_written_is_a_warning_on_a_standing_answer(bundle, tmp_path, monkeypatch):
    from edge_runtime import predictor as predictor_module
    good = tmp_path / "good.png"
    Image.fromarray(in_scope_radiograph()).save(good)  # answered, so an overlay is due

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(predictor_module, "save_overlay", full_disk)
    rec = predictor_module.Predictor(bundle).predict_file(good, tmp_path / "h" / "good_gradcam.jpg")
    assert answered(rec) and not rec.error
    assert any("heatmap not written" in w for w in rec.warnings) and rec.heatmap_errno == 28


# --- the manifest ------------------------------------------------------------------------------------

def _bundle_copy(tmp_path: Path, source: Path = REPO_BUNDLE) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy)
    return copy


def _default_model(copy: Path) -> Path:
    """The model file the runtime opens by default (whatever the reference bundle ships)."""
    m = json.loads((copy / "manifest.json").read_text())
    key = m["default_artifacts"].get("tflite") or next(iter(m["default_artifacts"].values()))
    return copy / m["artifacts"][key]["file"]


def _write(copy: Path, manifest: dict, reseal: bool = True) -> None:
    (copy / "manifest.json").write_text(json.dumps(seal(manifest) if reseal else manifest))


def test_an_edited_manifest_is_refused(tmp_path):
    copy = _bundle_copy(tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    m["decision"]["threshold"] = 0.944
    _write(copy, m, reseal=False)
    with pytest.raises(BundleError, match="manifest_sha256.*edited or damaged"):
        load_bundle(copy)


def test_a_bundle_whose_files_cannot_be_read_is_refused_by_name_exit_2(tmp_path, monkeypatch, capsys):
    """A damaged copy (a file gone, a manifest that is not text, a file the OS will not read) is a
    bundle problem named with its file (exit 2), never an internal error (exit 3)."""
    copy = _bundle_copy(tmp_path)
    model = _default_model(copy)
    model.unlink()
    with pytest.raises(BundleError, match=f"{model.name}: file listed in the manifest is missing"):
        load_bundle(copy)
    assert runtime_main(["info", "--bundle", str(copy)]) == 2
    capsys.readouterr()
    garbled = _bundle_copy(tmp_path / "g")
    (garbled / "manifest.json").write_bytes(b"\xff\xfe{not text")
    with pytest.raises(BundleError, match=r"manifest.json: unreadable manifest \(UnicodeDecodeError"):
        load_bundle(garbled)
    ok = _bundle_copy(tmp_path / "ok")
    bundle = load_bundle(ok)
    name = _default_model(ok).name
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == name:
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(BundleError, match=f"{name}: cannot be read \\(Permission denied\\)"):
        bundle.read_verified(name)


def test_a_bundle_export_rejected_is_refused_even_when_sealed(tmp_path):
    """Export writes a rejected copy beside the accepted ones, sealed like them: only its status
    says it must not answer a patient."""
    copy = _bundle_copy(tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    m["status"] = "rejected"
    _write(copy, m)
    with pytest.raises(BundleError, match="status is 'rejected': export's fidelity check did not accept it"):
        load_bundle(copy)
    assert load_bundle(copy, require_accepted=False).info.status == "rejected"  # export's own check may read it


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["decision"].update(threshold=float("nan")), "not plain JSON"),  # cannot even be sealed
    (lambda m: m["decision"].update(threshold=2.0), "decision.threshold"),
    (lambda m: m["decision"].update(threshold=-1), "decision.threshold"),
    (lambda m: m["decision"].update(threshold="abc"), "decision.threshold"),
    (lambda m: m.update(files=list(m["files"])), "files"),
    (lambda m: m["preprocess"].update(size="128"), "preprocess"),
    (lambda m: m["preprocess"].update(size=224), r"preprocess.size.*224 px, but the model takes"),
    (lambda m: m["fracture_map"]["pooling"].update(kind="median"), "fracture_map"),
    (lambda m: m["fracture_map"]["pooling"].update(kind="lse", r=-1), "fracture_map"),
    (lambda m: m.update(fracture_map=None), "fracture_map|prob"),
    (lambda m: m["artifacts"][next(iter(m["artifacts"]))].update(file="../../etc/passwd"), "file"),
    (lambda m: m.update(demonstration_only="no"), "demonstration_only"),
    (lambda m: m["decision"].update(positive_class="non-fractured"), "decision.positive_class"),
])
def test_an_invalid_manifest_is_refused_with_the_field_named(tmp_path, edit, field, capsys):
    copy = _bundle_copy(tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    edit(m)
    try:
        m = seal(m)
    except ValueError:
        m = {**m, "manifest_sha256": "0" * 64}  # NaN: written as a broken tool would
    (copy / "manifest.json").write_text(json.dumps(m, allow_nan=True))
    with pytest.raises(BundleError, match=field):
        load_bundle(copy)
    assert runtime_main(["info", "--bundle", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_an_invalid_gradcam_head_is_refused_with_the_field_named(tiny_bundle, tmp_path):
    copy = _bundle_copy(tmp_path, tiny_bundle)  # a classifier's bundle: it carries a Grad-CAM head
    m = json.loads((copy / "manifest.json").read_text())
    for edit, field in ((lambda g: g["arrays"]["alpha"].update(offset=-4), "gradcam.arrays.alpha.offset"),
                        (lambda g: g["arrays"]["alpha"].update(shape=[2]), "gradcam")):
        bad = json.loads(json.dumps(m))
        edit(bad["gradcam"])
        _write(copy, bad)
        with pytest.raises(BundleError, match=field):
            load_bundle(copy)


def test_a_model_whose_input_differs_from_the_manifest_is_refused_at_load(tmp_path):
    from edge_runtime.predictor import Predictor
    copy = _bundle_copy(tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    m["preprocess"]["size"] = 96
    m["model"]["input"]["shape"] = [1, 96, 96, 1]  # consistent manifest, but the model file takes its own size
    _write(copy, m)
    with pytest.raises(BundleError, match="takes input .*96 x 96"):
        Predictor(copy)


# --- fuzzing, bounded for CI (the long run: docs/robustness.md) -------------------------------------

@pytest.mark.heavy
def test_seeded_fuzzing_finds_no_escape_hang_or_memory_blowup():
    result = fuzz.fuzz(mutations=1_000_000, seed=11, seconds=40, bomb_scale=0)  # bombs: the test above
    v, per = result["verdict"], result["images"]["per_format"]
    assert v["escapes"] == 0, result["images"]["escapes"][:5] + result["manifests"]["escapes"][:5]
    assert v["hangs"] == 0, result["images"]["hangs"][:5]
    assert v["rss_ok"], result["images"]["peak_rss"]
    assert set(per) >= {"png8", "png16", "jpeg", "tiff", "bmp", "gif", "webp"}
    assert all(sum(c.values()) >= 40 for c in per.values()), per  # every format really was exercised
    assert sum(c["refused"] for c in per.values()) > 0 and sum(c["answered"] for c in per.values()) > 0
    assert result["manifests"]["outcomes"]["refused"] > 50


# --- found by the adversarial review of this work -------------------------------------------------

@pytest.mark.parametrize("fmt, kw", [("JPEG", {"progressive": True, "quality": 90}), ("WEBP", {"lossless": True}),
                                     ("TIFF", {"compression": "tiff_adobe_deflate"})])
def test_what_the_codec_holds_beside_the_image_is_counted(tmp_path, monkeypatch, fmt, kw):
    """A progressive JPEG keeps full-size DCT coefficients whatever the draft, WebP its own RGBA
    buffer, libtiff a whole strip: 524, 820 and 451 MB for files of 1-2 MB before this was counted.
    Scaled down here: the same image must pass as a plain file and be refused in these forms."""
    import edge_runtime.imageio as imageio
    rgb = np.stack([_radiograph(600, 600)] * 3, -1)
    plain, heavy = tmp_path / "plain.png", tmp_path / f"heavy.{fmt.lower()}"
    Image.fromarray(rgb).save(plain)
    Image.fromarray(rgb).save(heavy, fmt, **kw)
    monkeypatch.setattr(imageio, "MAX_DECODE_BYTES", 2_000_000)  # between the two costs
    read_image(plain, SPEC)
    with pytest.raises(ImageReadError, match="decoding it would take"):
        read_image(heavy, SPEC)


def test_a_deflated_dicom_is_measured_where_pydicom_reads_it_not_where_it_says(tmp_path):
    """The inflate check started at the offset the file declares; a bomb could point it elsewhere."""
    import struct
    data = bytearray(fuzz.deflated_dicom_bomb(1000, 1000, 60))
    pos = data.find(b"\x02\x00\x00\x00UL")  # (0002,0000) FileMetaInformationGroupLength
    data[pos + 8:pos + 12] = struct.pack("<I", struct.unpack("<I", data[pos + 8:pos + 12])[0] + 40)
    path = tmp_path / "lying.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="deflated DICOM inflates to more than"):  # the bomb check, not a decode failure
        read_image(path, SPEC)


def test_a_model_file_swapped_after_verification_is_refused(tmp_path):
    from edge_runtime.predictor import Predictor
    copy = _bundle_copy(tmp_path)
    bundle = load_bundle(copy)
    model = _default_model(copy)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Predictor(bundle)


def test_a_bundle_file_that_is_a_symlink_is_refused(tmp_path):
    copy = _bundle_copy(tmp_path)
    target = tmp_path / "elsewhere.tflite"
    model = _default_model(copy)
    shutil.move(model, target)
    model.symlink_to(target)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(copy)


def test_odd_but_valid_json_is_exit_0_or_2_never_3(tmp_path, capsys):
    copy = _bundle_copy(tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    _write(copy, {**m, "data": []})
    assert runtime_main(["info", "--bundle", str(copy)]) == 0
    bad = json.loads(json.dumps(m))
    bad["fracture_map"]["pooling"] = {"kind": "topk", "k": 0}
    _write(copy, bad)
    assert runtime_main(["info", "--bundle", str(copy)]) == 2
    (copy / "manifest.json").write_text('{"format": ' + "1" * 5000 + "}")
    assert runtime_main(["info", "--bundle", str(copy)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_thread_counts_are_bounded(capsys):
    with pytest.raises(SystemExit) as err:
        runtime_main(["predict", "--threads", "100000", "x.png"])
    assert err.value.code == 2 and "choose 1 to 64" in capsys.readouterr().err


def test_an_oversized_dicom_is_refused_without_parsing_it(tmp_path):
    """A 2 GB sparse .dcm kept pydicom busy for over a minute, holding up the batch."""
    path = tmp_path / "huge.dcm"
    with open(path, "wb") as fh:
        fh.truncate(2 * 2 ** 30)  # sparse: costs no disk
    with pytest.raises(ImageReadError, match="larger than"):  # decided from stat, before any parsing
        read_image(path, SPEC)
