"""The FracAtlas reader, where data comes from, and the phantom generator."""

import hashlib

import pytest

from fracdata.data import DataError, load_data, read_fracatlas, resolve_data
from fracdata.phantom import generate_phantom_dataset


def test_reader_keeps_labels_paths_and_metadata(fake_fracatlas):
    ds = read_fracatlas(fake_fracatlas)
    assert ds.counts() == {"images": 13, "fractured": 5, "non_fractured": 8}
    r = ds.by_id()
    assert r["IMG0000000.jpg"].label == 1 and r["IMG0000000.jpg"].region == "hand"
    assert r["IMG0000000.jpg"].path.parent.name == "Fractured"
    assert r["IMG0000001.jpg"].path.parent.name == "Non_fractured" and r["IMG0000001.jpg"].region == "leg"
    assert r["IMG0000005.jpg"].hardware == 1
    assert r["IMG0000002.jpg"].view == "frontal+lateral"
    assert r["IMG0000099.jpg"].region == "mixed"


def test_reader_errors_name_the_file(tmp_path, fake_fracatlas):
    with pytest.raises(DataError, match="dataset folder not found"):
        read_fracatlas(tmp_path / "nowhere")
    csv_path = fake_fracatlas / "dataset.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("hardware", "hw"))
    with pytest.raises(DataError, match=r"dataset.csv: missing column\(s\) hardware"):
        read_fracatlas(fake_fracatlas)
    lines = text.splitlines()
    lines[3] = lines[3].replace(",1,", ",yes,", 1)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 4"):
        read_fracatlas(fake_fracatlas)
    csv_path.write_text(text + text.splitlines()[1] + "\n")
    with pytest.raises(DataError, match="duplicate image_id"):
        read_fracatlas(fake_fracatlas)
    csv_path.unlink()
    with pytest.raises(DataError, match="dataset.csv not found"):
        read_fracatlas(fake_fracatlas)


def test_resolution_order(tmp_path, fake_fracatlas):
    shared = tmp_path / "shared"
    assert resolve_data(str(fake_fracatlas), {"FRACATLAS_DIR": str(shared)}, shared).path == fake_fracatlas
    assert resolve_data(None, {"FRACATLAS_DIR": str(fake_fracatlas)}, shared).reason == "$FRACATLAS_DIR"
    assert resolve_data(None, {}, shared).path is None  # phantom default
    shared.mkdir()
    assert resolve_data(None, {}, shared).path == shared
    assert resolve_data("phantom", {}, shared).path is None
    with pytest.raises(DataError, match="--data folder not found"):
        resolve_data(str(tmp_path / "missing"), {}, shared)
    with pytest.raises(DataError, match="FRACATLAS_DIR"):
        resolve_data(None, {"FRACATLAS_DIR": str(tmp_path / "missing")}, shared)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.jpg")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_phantom_is_deterministic_and_readable(tmp_path):
    a = generate_phantom_dataset(tmp_path / "a", n_images=10, seed=3, size=(120, 100))
    b = generate_phantom_dataset(tmp_path / "b", n_images=10, seed=3, size=(120, 100))
    c = generate_phantom_dataset(tmp_path / "c", n_images=10, seed=4, size=(120, 100))
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a / "dataset.csv").read_bytes() == (b / "dataset.csv").read_bytes()
    ds = read_fracatlas(a)
    assert len(ds.records) == 10 and 0 < ds.counts()["fractured"] < 10
    assert all(r.path.is_file() for r in ds.records)


def test_phantom_folder_by_path_is_still_labelled_phantom(tmp_path, capsys):
    folder = generate_phantom_dataset(tmp_path / "p", n_images=6, seed=1, size=(80, 80))
    ds = load_data(str(folder))
    assert ds.phantom and ds.name == "phantom"
    assert "PHANTOM DATA" in capsys.readouterr().err


def test_fractured_phantoms_differ_from_intact_ones_on_the_bone():
    """The generator really draws a break: same seed, fracture on vs off, differs along the shaft."""
    import numpy as np

    from fracdata.phantom import render_phantom

    intact = render_phantom(np.random.default_rng(5), "leg", False, size=(200, 160)).astype(int)
    broken = render_phantom(np.random.default_rng(5), "leg", True, size=(200, 160)).astype(int)
    assert np.abs(intact - broken).max() > 60
