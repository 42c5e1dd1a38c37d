"""`python -m device demo`: the samples shipped in the package are the phantoms the maker makes,
and the demo answers every one of them through the same paths as a clinic's files and photos,
with overlays that say what they are."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from device.cli import main as device_main
from device.demo import SAMPLES, samples
from edge_runtime.labels import NEGATIVE, POSITIVE
from edge_runtime.overlay import BANNER_COLOUR

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_samples  # noqa: E402


def test_the_shipped_samples_are_what_the_maker_makes():
    made = make_samples.make()
    shipped = {p.name for p in SAMPLES.iterdir() if p.is_file()}
    assert shipped == set(made)
    assert json.loads(made["samples.json"]) == json.loads((SAMPLES / "samples.json").read_bytes())
    for name, content in made.items():
        if name.endswith(".png"):  # lossless: the very pixels
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(content))), np.asarray(Image.open(SAMPLES / name)))
        elif name.endswith(".jpg"):  # a JPEG encoder may round differently from one libjpeg to the next
            a = np.asarray(Image.open(io.BytesIO(content)).convert("L"), np.float32)
            b = np.asarray(Image.open(SAMPLES / name).convert("L"), np.float32)
            assert a.shape == b.shape and np.abs(a - b).mean() < 1.0
    index = samples()
    assert all(meta["phantom"] for meta in index.values())  # nothing real ships
    assert {m["fractured"] for m in index.values()} == {True, False}
    assert any("photo" in m["kind"] for m in index.values())


def test_the_demo_answers_every_sample_with_overlays_that_carry_the_disclaimer(tmp_path, capsys):
    out = tmp_path / "demo"
    assert device_main(["demo", "--out", str(out), "--json"]) == 0
    recs = {r["sample"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    index = samples()
    assert set(recs) == set(index)
    for name, rec in recs.items():
        assert rec["decision"] in (POSITIVE, NEGATIVE) and 0.0 <= rec["probability"] <= 1.0, rec
        overlay = Image.open(rec["heatmap"])
        assert Path(rec["heatmap"]).parent == out
        px = np.asarray(overlay.convert("RGB"), np.int16)
        # The reference bundle is a demonstration model: the amber banner is on the image itself.
        assert (np.abs(px[2, : px.shape[1] // 2] - BANNER_COLOUR).max(axis=-1) < 40).mean() > 0.5
        # ... and the caption below the radiograph holds text (probability, then the disclaimer).
        assert (px[-20:, :, :].mean(axis=-1) > 150).any()
    # The photo of the film answers as the file it was taken of.
    photo = next(n for n, m in index.items() if "photo" in m["kind"])
    of = index[photo]["of"]
    assert recs[photo]["decision"] == recs[of]["decision"]
    assert abs(recs[photo]["probability"] - recs[of]["probability"]) < 0.1
    assert Path(recs[photo]["flattened"]).is_file()


def test_the_demo_says_where_to_look(tmp_path, capsys):
    out = tmp_path / "demo out"
    assert device_main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"Open the pictures in {out}/" in text and "PHANTOMS" in text and "not for patients" in text
    for name in samples():
        assert name in text and f"{out}/{Path(name).stem}_heatmap.jpg" in text


def test_a_link_left_in_the_output_folder_is_replaced_not_followed(tmp_path, capsys):
    """The output folder may be shared (/tmp): a name planted as a link to another file must not
    make the demo (or predict --heatmap, or film) write through it."""
    out = tmp_path / "shared"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for stem in ("phantom_intact_hand_heatmap.jpg", "phantom_fractured_leg_film-photo_flat.png"):
        (out / stem).symlink_to(victim)
    assert device_main(["demo", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert victim.read_text() == "precious"
    for stem in ("phantom_intact_hand_heatmap.jpg", "phantom_fractured_leg_film-photo_flat.png"):
        assert not (out / stem).is_symlink() and Image.open(out / stem).size[0] > 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_samples_missing_from_an_install_are_said_plainly(tmp_path, monkeypatch, capsys):
    import device.demo as demo

    def gone(folder=SAMPLES):
        raise FileNotFoundError(f"{folder}: samples missing (phantom_intact_hand.png)")

    monkeypatch.setattr(demo, "samples", gone)
    assert device_main(["demo", "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "the shipped samples cannot be read" in captured.err and "reinstall the package" in captured.err
    assert "internal error" not in captured.err and captured.out == ""
