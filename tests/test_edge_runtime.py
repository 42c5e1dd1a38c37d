"""The edge runtime on a bundle exported from a one-epoch phantom model: no TensorFlow, every
backend agreeing, bad inputs reported per file, tampered bundles refused, DICOM, Grad-CAM."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime.backends import BackendError, installed_backends
from edge_runtime.bundle import seal, BundleError, load_bundle
from edge_runtime.cli import main as runtime_main
from edge_runtime.dicom import read_dicom
from edge_runtime.errors import ImageReadError
from edge_runtime.imageio import read_grayscale
from edge_runtime.predictor import Predictor
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, write_dicom

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCK = {"tensorflow", "keras", "tf2onnx", "tf_keras", "train", "export", "device", "benchmarks"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Blocker())
sys.argv = ["edge_runtime"] + sys.argv[1:]
try:
    runpy.run_module("edge_runtime", run_name="__main__")
finally:
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
    print("LEAKED:" + ",".join(leaked), file=sys.stderr)
"""


def _images(phantom_dir, n=3):
    return sorted((phantom_dir / "images" / "Fractured").glob("*.jpg"))[:n] + \
        sorted((phantom_dir / "images" / "Non_fractured").glob("*.jpg"))[:n]


def test_predict_runs_with_tensorflow_blocked(tiny_bundle, phantom_dir, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    files = _images(phantom_dir, 2)
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "predict", "--bundle", str(tiny_bundle), "--json",
                           "--heatmap", str(tmp_path / "heat"), *map(str, files[:2]), str(bad), *map(str, files[2:])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "LEAKED:\n" in proc.stderr or proc.stderr.rstrip().endswith("LEAKED:"), proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and len(recs) == 5  # the bad file fails, the batch goes on
    assert recs[2]["file"] == str(bad) and "not an image" in recs[2]["error"] and "probability" not in recs[2]
    for r in recs[:2] + recs[3:]:
        assert 0.0 <= r["probability"] <= 1.0 and r["decision"] in ("fractured", "non-fractured")
        assert r["backend"] in ("litert", "tflite") and r["artifact"] == "tflite_int8"
        assert Path(r["heatmap"]).is_file() and r["timings_ms"]["inference"] > 0
        assert set(r["timings_ms"]) >= {"decode", "preprocess", "inference", "gradcam", "total"}


def test_importing_the_runtime_pulls_in_no_other_stage():
    code = ("import sys, edge_runtime.predictor, edge_runtime.cli, edge_runtime.dicom; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'tensorflow','keras','train','export','device','benchmarks','pydicom','onnxruntime'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_backends_agree_on_the_same_bundle(tiny_bundle, phantom_dir):
    from edge_runtime.inputs import load_input

    have = installed_backends()
    if "onnx" not in have or not ({"litert", "tflite"} & set(have)):
        pytest.skip(f"needs onnxruntime and a TFLite interpreter; installed: {have}")
    bundle = load_bundle(tiny_bundle)
    xs = [load_input(p, bundle.spec)[0] for p in _images(phantom_dir)]
    tfl = "litert" if "litert" in have else "tflite"

    def probs(backend, artifact):
        pred = Predictor(bundle, backend, artifact)
        return np.array([pred.probability(x) for x in xs])

    assert np.abs(probs(tfl, "tflite_float") - probs("onnx", "onnx_float")).max() < 1e-4
    # Two int8 quantizers with the same calibration: close, not bit-identical.
    assert np.abs(probs(tfl, "tflite_int8") - probs("onnx", "onnx_int8")).max() < 0.05
    with pytest.raises(BackendError, match="no tflite artifact named onnx_int8"):
        Predictor(bundle, tfl, "onnx_int8")


def test_runtime_reproduces_the_export_check(tiny_bundle, tiny_run, phantom_dir):
    """The numbers in the manifest are what the runtime gives on the same files."""
    from export.check import classification
    from fracdata.data import load_data
    from fracdata.split import load_split, records_by_split

    bundle = load_bundle(tiny_bundle)
    ds = load_data(str(phantom_dir), quiet=True)
    test = records_by_split(ds, load_split(tiny_run / "split.csv", ds))["test"]
    y = np.array([r.label for r in test])
    for key in ("tflite_int8", "onnx_int8"):
        pred = Predictor(bundle, artifact=key, gradcam=False)
        p = np.array([pred.predict_file(r.path).probability for r in test])
        got = classification(y, p, bundle.threshold)
        want = bundle.manifest["artifacts"][key]["metrics"]
        for k in ("auc", "accuracy", "sensitivity", "specificity"):
            assert got[k] == pytest.approx(want[k], abs=1e-9), (key, k)


def test_gradcam_on_a_float_artifact_is_exactly_the_reference(tiny_bundle, tiny_run, phantom_dir):
    import keras

    from edge_runtime.inputs import load_input
    from train.gradcam import gradcam

    bundle = load_bundle(tiny_bundle)
    xs = np.stack([load_input(p, bundle.spec)[0] for p in _images(phantom_dir)])
    _, ref, _ = gradcam(keras.models.load_model(tiny_run / "model.keras", compile=False), xs, "block3_conv")
    for key in ("onnx_float", "tflite_float"):
        pred = Predictor(bundle, artifact=key)
        ours = np.stack([pred.heatmap(pred.infer(x)) for x in xs])
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-4, key


def test_bad_inputs_each_get_their_reason_and_the_batch_goes_on(tiny_bundle, phantom_dir, tmp_path):
    good = _images(phantom_dir, 1)[0]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "folder.png").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "tiny.png")
    write_dicom(tmp_path / "report.dcm", np.zeros((32, 32), np.uint16), pixels=False)
    cases = {"missing.jpg": "file not found", "empty.jpg": "empty", "text.png": "not an image",
             "cut.jpg": "truncated", "folder.png": "is a folder", "tiny.png": "too small",
             "report.dcm": "no pixel data"}
    paths = [good] + [tmp_path / n for n in cases] + [good]
    recs = list(Predictor(tiny_bundle).predict_files(paths))
    assert recs[0].answered and recs[-1].answered
    for rec, (name, reason) in zip(recs[1:-1], cases.items()):
        assert rec.file.endswith(name) and reason in rec.error, rec
        assert rec.probability is None and "probability" not in rec.to_dict()


def test_colour_and_16_bit_inputs(tiny_bundle, phantom_dir, tmp_path):
    src = np.asarray(Image.open(_images(phantom_dir, 1)[0]).convert("L"))
    Image.fromarray(np.stack([src, src, (src * 0.7).astype(np.uint8)], -1)).save(tmp_path / "photo.png")
    Image.fromarray((src.astype(np.uint16) * 16).astype(np.uint16)).save(tmp_path / "cr12.png")  # 12-bit data
    pred = Predictor(tiny_bundle)
    colour = pred.predict_file(tmp_path / "photo.png")
    assert any("colour" in w for w in colour.warnings) and colour.answered
    d12 = read_grayscale(tmp_path / "cr12.png")
    assert any("12-bit" in w for w in d12.warnings)
    assert np.abs(d12.pixels - src / 255.0).max() < 0.01  # 16*v/4095 ~ v/255: not a dark image


def test_a_bundle_with_a_changed_byte_is_refused(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    model = copy / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model_int8.tflite.*sha256"):
        load_bundle(copy)
    assert runtime_main(["info", "--bundle", str(copy)]) == 2
    assert "does not match the manifest" in capsys.readouterr().err

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    shutil.copy(tiny_bundle / "model_int8.tflite", model)
    (copy / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(copy)
    (copy / "manifest.json").write_text(json.dumps(seal({**m, "status": "rejected"})))
    with pytest.raises(BundleError, match="did not accept"):
        load_bundle(copy)


def test_dicom_windowing_inversion_and_rescale(tmp_path):
    arr = np.tile(np.linspace(0, 4095, 80), (64, 1)).astype(np.uint16)
    mono2 = read_dicom(write_dicom(tmp_path / "a.dcm", arr))
    mono1 = read_dicom(write_dicom(tmp_path / "b.dcm", arr, photometric="MONOCHROME1"))
    assert np.allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)
    assert mono2.pixels[0, 0] == 0.0 and mono2.pixels[0, -1] == 1.0
    # slope 2, intercept -100: stored 1050 -> 2000 = the window centre -> mid grey.
    win = read_dicom(write_dicom(tmp_path / "c.dcm", np.full((32, 32), 1050, np.uint16), slope=2.0,
                                 intercept=-100.0, window=(2000, 1000)))
    assert win.pixels.mean() == pytest.approx(0.5, abs=0.01) and not win.warnings
    with pytest.raises(ImageReadError, match="compressed transfer syntax"):
        read_dicom(write_dicom(tmp_path / "j2k.dcm", arr, syntax="1.2.840.10008.1.2.4.90"))


def test_no_identifying_dicom_tag_reaches_the_output(tiny_bundle, tmp_path, capsys):
    arr = np.tile(np.linspace(0, 4095, 140), (160, 1)).astype(np.uint16)
    files = [write_dicom(tmp_path / "ok.dcm", arr), write_dicom(tmp_path / "bad.dcm", arr, pixels=False),
             write_dicom(tmp_path / "j2k.dcm", arr, syntax="1.2.840.10008.1.2.4.90")]
    for fmt in ([], ["--json"]):
        assert runtime_main(["predict", "--bundle", str(tiny_bundle), *fmt, *map(str, files),
                             "--heatmap", str(tmp_path / "h")]) == 1
        out = capsys.readouterr()
        text = out.out + out.err
        assert "ok.dcm" in text and "DICOM" in text
        for secret in (PATIENT_NAME, "DOE", PATIENT_ID, "19700101"):
            assert secret not in text


def test_info_and_help(tiny_bundle, capsys):
    assert runtime_main(["info", "--bundle", str(tiny_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] and info["model"] == "custom_cnn_gap" and info["gradcam"]
    with pytest.raises(SystemExit):
        runtime_main(["predict", "--help"])
    text = capsys.readouterr().out
    for flag in ("--bundle", "--json", "--heatmap", "--threads", "--backend", "--artifact"):
        assert flag in text


def test_committed_reference_bundle_verifies_and_answers(phantom_dir):
    bundle = load_bundle()  # the default: models/reference-bundle
    assert bundle.manifest["status"] == "accepted" and bundle.demonstration_only
    rec = Predictor(bundle).predict_file(_images(phantom_dir, 1)[0])
    assert 0 <= rec.probability <= 1 and rec.threshold == bundle.threshold


def test_the_same_pixels_in_every_format_give_the_same_answer(tiny_bundle, tmp_path):
    """One radiograph as 8-bit JPEG, 16-bit PNG, 12-bit PNG and DICOM (windowed, not windowed,
    MONOCHROME1): the same model input, hence the same probability, whatever the file's gray scale."""
    from PIL import Image

    from edge_runtime.predictor import Predictor
    from fracdata.phantom import render_phantom

    pred = Predictor(tiny_bundle, gradcam=False)
    assert pred.spec.normalize != "none"
    for i, size in enumerate([(620, 500), (437, 309)]):
        arr = render_phantom(np.random.default_rng(40 + i), "leg", True, size=size)
        Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
        px = np.asarray(Image.open(tmp_path / "a.jpg").convert("L")).astype(np.uint16)
        Image.fromarray(px * 257).save(tmp_path / "b16.png")
        Image.fromarray(px * 16).save(tmp_path / "b12.png")
        v = px * 16
        write_dicom(tmp_path / "c_win.dcm", v, window=(float(v.min() + v.max()) / 2 + 0.5, float(v.max() - v.min()) + 1))
        write_dicom(tmp_path / "c_nowin.dcm", v)
        write_dicom(tmp_path / "c_mono1.dcm", 4095 - v, photometric="MONOCHROME1")
        write_dicom(tmp_path / "c_rescaled.dcm", v, slope=0.5, intercept=-1000)
        ps = {f: pred.predict_file(tmp_path / f).probability
              for f in ("a.jpg", "b16.png", "b12.png", "c_win.dcm", "c_nowin.dcm", "c_mono1.dcm", "c_rescaled.dcm")}
        assert max(ps.values()) - min(ps.values()) <= SAME_PIXELS_TOLERANCE, ps


SAME_PIXELS_TOLERANCE = 0.01  # the target for |Δp| between formats of the same pixels


def test_dihedral_views_answer_a_turned_or_mirrored_file_alike(tiny_bundle, tmp_path):
    from PIL import Image

    from edge_runtime.predictor import Predictor
    from fracdata.phantom import render_phantom

    pred = Predictor(tiny_bundle)
    assert pred.spec.views == "dihedral"
    arr = render_phantom(np.random.default_rng(3), "hand", True, size=(400, 400))
    for name, a in (("orig", arr), ("rot90", np.rot90(arr)), ("rot180", np.rot90(arr, 2)), ("mirror", arr[:, ::-1])):
        Image.fromarray(np.ascontiguousarray(a)).save(tmp_path / f"{name}.png")
    recs = {n: pred.predict_file(tmp_path / f"{n}.png") for n in ("orig", "rot90", "rot180", "mirror")}
    ps = [r.probability for r in recs.values()]
    assert max(ps) - min(ps) < 1e-4 and all(r.views == 8 for r in recs.values())


def test_blank_flat_and_noise_images_are_refused_not_answered(tiny_bundle, tmp_path, capsys):
    from PIL import Image

    from edge_runtime.cli import main as runtime_main

    rng = np.random.default_rng(0)
    images = {"black": np.zeros((300, 300), np.uint8), "white": np.full((300, 300), 255, np.uint8),
              "gray": np.full((300, 300), 128, np.uint8), "noise": (rng.random((300, 300)) * 255).astype(np.uint8)}
    for name, a in images.items():
        Image.fromarray(a).save(tmp_path / f"{name}.png")
    rc = runtime_main(["predict", "--bundle", str(tiny_bundle), "--json", *[str(tmp_path / f"{n}.png") for n in images]])
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(recs) == 4
    for r in recs:
        assert "probability" not in r and ("blank" in r["error"] or "structure" in r["error"])


FOREARM = Path(__file__).resolve().parents[2] / "shared" / "data" / "forearm-fractures" / "images"


@pytest.mark.real_data
@pytest.mark.skipif(not FOREARM.is_dir(), reason="../shared/data/forearm-fractures is not present on this machine")
def test_no_real_radiograph_is_refused_as_blank_or_noise():
    """The content check's thresholds against every real radiograph at hand (297, CC BY 4.0)."""
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import PreprocessSpec, content_problem, resize_input

    spec = PreprocessSpec()
    refused = [f.name for f in sorted(FOREARM.glob("*.jpg"))
               if content_problem(resize_input(read_image(f, spec).pixels, spec))]
    assert refused == []
    # Nor as too small for the reference model (its smallest, 296 x 153, is letterboxed into 256).
    from edge_runtime.bundle import load_bundle
    from edge_runtime.preprocess import checked_input

    ref = load_bundle(Path(__file__).resolve().parents[1] / "models" / "reference-bundle").spec
    assert [f.name for f in sorted(FOREARM.glob("*.jpg")) if checked_input(read_image(f, ref).pixels, ref)[1]] == []


def test_the_side_that_fills_the_input_decides_too_small():
    from edge_runtime.preprocess import PreprocessSpec, resolution_problem

    box = PreprocessSpec(size=256, resize="letterbox")
    assert resolution_problem((128, 40), box) is None  # the long side, 128, is half of 256: the bound passes
    why = resolution_problem((127, 600 // 5), box)
    assert why.startswith("image is 120x127 px, too small for this model") and "long side" in why and "128 px" in why
    squash = PreprocessSpec(size=128, resize="stretch")
    assert resolution_problem((63, 900), squash) is not None and "short side" in resolution_problem((63, 900), squash)
    assert resolution_problem((64, 900), squash) is None


def test_a_file_too_small_for_the_model_is_refused_not_answered(tiny_bundle, phantom_dir, tmp_path, capsys):
    """A thumbnail holds no fracture line to read: an error naming the file and the reason, no
    answer, and the batch goes on (the bound is half the input size, on the side that fills it)."""
    from PIL import Image

    from edge_runtime.bundle import load_bundle
    from edge_runtime.cli import main as runtime_main

    spec = load_bundle(tiny_bundle).spec
    assert spec.resize == "stretch"  # the tiny classifier: its short side fills the input
    need = -(-spec.size // 2)
    src = Image.open(_images(phantom_dir, 1)[0]).convert("L")
    paths = []
    for short in (need - 1, need, 4 * spec.size):
        im = src.resize((short, round(short * 1.3)), Image.Resampling.BILINEAR)
        paths.append(tmp_path / f"short{short}.png")
        im.save(paths[-1])
    rc = runtime_main(["predict", "--bundle", str(tiny_bundle), "--json", *map(str, paths)])
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(recs) == 3
    assert recs[0]["file"].endswith(f"short{need - 1}.png") and "probability" not in recs[0]
    assert "too small for this model" in recs[0]["error"] and f"needs at least {need} px" in recs[0]["error"]
    assert all("error" not in r and "probability" in r for r in recs[1:]), recs[1:]
    # A flattened film is bounded by the film path (in the photo's pixels), and the self-test's drawn
    # images are not inputs: neither is held to a file's size.
    from edge_runtime.imageio import read_grayscale
    from edge_runtime.predictor import Predictor

    small = read_grayscale(paths[0])
    pred = Predictor(tiny_bundle, gradcam=False)
    assert "too small for this model" in pred.predict_pixels(small, paths[0]).error
    for kw in ({"film": True}, {"gate": False}):
        assert pred.predict_pixels(small, paths[0], **kw).error is None, kw


def test_content_check_works_at_every_input_size():
    from edge_runtime.preprocess import content_problem

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    smooth = (0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)
    for size in (8, 12, 16, 32, 64, 128):
        small = np.asarray(Image.fromarray(smooth).resize((size, size)), np.float32)
        assert content_problem(small) is None, size  # no crash, and real structure is never refused
        if size >= 16:  # below that, too few 4 x 4 blocks to tell noise from detail
            assert content_problem(rng.random((size, size)).astype(np.float32)) is not None, size
