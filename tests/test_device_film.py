"""Film on a lightbox: simulated photos of phantom radiographs, flattened, gated, predicted."""

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from device.camera import CameraUnavailable, FileSource, PiCamera
from device.film import FilmNotFound, flatten_film
from device.quality import assess
from device.simulate import default_faults, photo_of_film, radiograph_from_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    """Four phantom radiographs at a film-like resolution (the shared phantom set is thumbnail-sized)."""
    from train.phantom import render_phantom

    out = tmp_path_factory.mktemp("radiographs")
    files = []
    for i, (region, fractured) in enumerate([("leg", True), ("hand", True), ("leg", False), ("hip", False)]):
        arr = render_phantom(np.random.default_rng(i), region, fractured, size=(620, 760))
        Image.fromarray(arr).save(out / f"r{i}.jpg", quality=95)
        files.append(out / f"r{i}.jpg")
    return [(f, radiograph_from_file(f)) for f in files]


def _corr(a, b):
    """Correlation of the flattened film with the radiograph, cropped the same way."""
    from device.film import CROP

    h, w = b.shape
    b = b[int(h * CROP):h - int(h * CROP), int(w * CROP):w - int(w * CROP)]
    a = np.asarray(Image.fromarray(a).resize((128, 128)), np.float32).ravel()
    b = np.asarray(Image.fromarray(b).resize((128, 128)), np.float32).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("fault", ["clean", "cast", "uneven", "moire"])
def test_flattening_recovers_the_radiograph_and_passes_the_gate(radiographs, fault):
    for i, (_, r) in enumerate(radiographs):
        photo, corners = photo_of_film(r, default_faults(fault), seed=i)
        flat = flatten_film(photo)
        assert np.abs(flat.corners - corners).max() < 15  # px in a 1600 x 1200 photo
        assert _corr(flat.pixels, r) > 0.9
        q = assess(photo, flat)
        assert q.ok, (fault, q.reasons)
    if fault == "cast":
        assert "colour cast corrected" in flat.notes


@pytest.mark.parametrize("fault, reason", [("blur", "blurred"), ("glare", "glare"), ("dark", "under-exposed"),
                                           ("bright", "over-exposed"), ("cut_off", "cut off"), ("small", "too small")])
def test_each_fault_is_refused_with_its_reason(radiographs, fault, reason):
    for i, (_, r) in enumerate(radiographs):
        photo, _ = photo_of_film(r, default_faults(fault), seed=i)
        q = assess(photo, flatten_film(photo))
        assert not q.ok and any(reason in x for x in q.reasons), (fault, q.reasons)


def test_no_lightbox_means_film_not_found():
    dark_room = Image.fromarray((np.random.default_rng(0).random((600, 800, 3)) * 40).astype(np.uint8))
    with pytest.raises(FilmNotFound, match="lightbox"):
        flatten_film(dark_room)


def test_film_command_gives_retake_or_answer_per_photo(tiny_bundle, radiographs, tmp_path, capsys):
    from device.cli import main as device_main

    good, _ = photo_of_film(radiographs[0][1], default_faults("clean"), seed=0)
    blurred, _ = photo_of_film(radiographs[0][1], default_faults("blur"), seed=0)
    good.save(tmp_path / "good.jpg", quality=92)
    blurred.save(tmp_path / "blurred.jpg", quality=92)
    (tmp_path / "notes.jpg").write_text("not a photo")
    rc = device_main(["film", "--bundle", str(tiny_bundle), "--keep", str(tmp_path / "keep"), "--json",
                      "--heatmap", str(tmp_path / "heat"), str(tmp_path / "good.jpg"), str(tmp_path / "blurred.jpg"),
                      str(tmp_path / "notes.jpg")])
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(recs) == 3
    ok, retake, bad = recs
    assert ok["quality"]["ok"] and 0 <= ok["probability"] <= 1 and ok["decision"] in ("fractured", "non-fractured")
    assert (tmp_path / "keep" / "good_flat.png").is_file() and ok["flattened"].endswith("good_flat.png")
    assert ok["file"].endswith("good.jpg") and "timings_ms" in ok and ok["heatmap"]
    assert retake["retake"] and "probability" not in retake and not retake["quality"]["ok"]
    assert any("blurred" in r for r in retake["quality"]["reasons"])
    assert "not an image" in bad["error"] and "probability" not in bad


def test_flattened_photos_give_the_files_decision(tiny_bundle, radiographs):
    """Same decision from the photo as from the file: measured here on phantom images only."""
    from edge_runtime.predictor import Predictor
    from device.triage import triage_photo
    import tempfile
    from pathlib import Path

    pred = Predictor(tiny_bundle, gradcam=False)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, r) in enumerate(radiographs):
            photo, _ = photo_of_film(r, default_faults("clean"), seed=i)
            photo.save(Path(tmp) / f"p{i}.jpg", quality=92)
            rec = triage_photo(pred, Path(tmp) / f"p{i}.jpg", Path(tmp))
            direct = pred.predict_file(path)
            assert abs(rec["probability"] - direct["probability"]) < 0.25


class FakePicamera2:
    """Mimics the part of picamera2's API the device uses."""

    def __init__(self, frame_rgb):
        self.frame_bgr = np.ascontiguousarray(frame_rgb[:, :, ::-1])
        self.calls = []

    def create_still_configuration(self, main=None):
        self.calls.append(("config", main))
        return {"main": main}

    def configure(self, cfg):
        self.calls.append(("configure", cfg))

    def start(self):
        self.calls.append(("start",))

    def capture_array(self, name="main"):
        self.calls.append(("capture", name))
        return self.frame_bgr

    def stop(self):
        self.calls.append(("stop",))


def test_pi_camera_through_a_fake_picamera2(radiographs, tmp_path):
    photo, _ = photo_of_film(radiographs[0][1], default_faults("cast"), seed=0)
    fake = FakePicamera2(np.asarray(photo))
    cam = PiCamera(fake)
    got = cam.capture()
    cam.close()
    assert np.array_equal(np.asarray(got), np.asarray(photo))  # BGR order undone
    assert [c[0] for c in fake.calls] == ["config", "configure", "start", "capture", "stop"]
    assert assess(got, flatten_film(got)).ok

    photo.save(tmp_path / "phone.jpg")
    src = FileSource([tmp_path / "phone.jpg"])
    assert src.capture().size == photo.size
    with pytest.raises(CameraUnavailable):
        src.capture()


def test_without_picamera2_the_camera_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", types.ModuleType("picamera2"))  # present but empty
    monkeypatch.delitem(sys.modules, "picamera2")
    import builtins
    real_import = builtins.__import__

    def no_picamera(name, *a, **k):
        if name == "picamera2":
            raise ImportError("No module named 'picamera2'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_picamera)
    with pytest.raises(CameraUnavailable, match="apt install python3-picamera2"):
        PiCamera()


def test_a_large_still_is_reduced_first_and_corners_stay_in_its_frame(radiographs):
    from device.simulate import PhotoSettings

    photo, corners = photo_of_film(radiographs[0][1], PhotoSettings(size=(4000, 3000)), seed=0)
    flat = flatten_film(photo)
    assert np.abs(flat.corners - corners).max() < 25 and flat.film_short_side_px > 1500
    assert max(flat.pixels.shape) <= 1024
