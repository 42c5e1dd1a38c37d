"""Generated out-of-scope sets (fracdata.ood): deterministic by seed, independent of n, varied and
bounded in size, the right kind of pixels for each kind, written atomically and reused when complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracdata import ood

ROOT = Path(__file__).resolve().parent.parent
SEED = 11
COLOUR_KINDS = ("colour_photo", "screenshot")
WRITE_SEED = 3  # a written set (2 per kind) with at least one 16-bit radiograph-like file


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _channel_spread(im: Image.Image) -> float:
    """Mean over pixels of (max - min) across RGB: 0 for grey, large for real colour."""
    a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return float((a.max(axis=2) - a.min(axis=2)).mean())


@pytest.fixture(scope="module")
def five():
    """Five images of every kind (rendering is the slow part, so the tests share them)."""
    return {kind: ood.generate(kind, 5, SEED) for kind in ood.KINDS}


@pytest.fixture(scope="module")
def three():
    return {kind: ood.generate(kind, 3, SEED) for kind in ood.KINDS}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "set"
    return ood.write_ood_set(out, n_per_kind=2, seed=WRITE_SEED)


def test_the_kinds_and_their_order():
    assert ood.KINDS == ("colour_photo", "text_page", "chest", "skull", "ct_slice", "ultrasound", "screenshot")


def test_names_carry_kind_seed_and_index(three):
    for kind in ood.KINDS:
        assert [name for name, _ in three[kind]] == [f"{kind}_{SEED}_{i:03d}" for i in range(3)]


def test_the_same_seed_gives_the_same_pixels(five, three):
    for kind in ood.KINDS:
        for (_, a), (_, b) in zip(three[kind], five[kind]):
            assert _same(a, b), kind


def test_an_image_does_not_depend_on_n(five, three):
    """generate(k, 3, s)[1] is generate(k, 5, s)[1]: a bigger set extends a smaller one."""
    for kind in ood.KINDS:
        assert three[kind][1][0] == five[kind][1][0]
        assert _same(three[kind][1][1], five[kind][1][1]), kind


def test_another_seed_gives_other_images(five):
    for kind in ood.KINDS:
        (_, other), = ood.generate(kind, 1, SEED + 1)
        assert not _same(other, five[kind][0][1]), kind


def test_images_within_one_set_differ(five):
    for kind in ood.KINDS:
        images = [im for _, im in five[kind]]
        assert not any(_same(images[0], im) for im in images[1:]), kind


def test_sizes_stay_in_bounds_and_vary(five):
    shapes = set()
    for kind in ood.KINDS:
        sizes = [im.size for _, im in five[kind]]
        assert all(ood.MIN_SIDE <= s <= ood.MAX_SIDE for size in sizes for s in size), (kind, sizes)
        assert len(set(sizes)) >= 3, (kind, sizes)
        assert len({round(w / h, 2) for w, h in sizes}) >= 2, (kind, sizes)
        shapes.update("portrait" if h > w else "landscape" for w, h in sizes)
    assert shapes == {"portrait", "landscape"}


def test_size_draws_are_bounded_over_many_seeds():
    for i in range(500):
        rng = np.random.default_rng(i)
        (w, h), (ww, wh) = ood._sizes(rng, (1.0, 2.25), portrait_p=0.5)
        assert ood.MIN_SIDE <= w <= ood.MAX_SIDE and ood.MIN_SIDE <= h <= ood.MAX_SIDE
        assert max(ww, wh) <= ood.WORK_MAX and abs(ww / wh - w / h) < 0.05


def test_colour_kinds_have_real_colour(five):
    for kind in COLOUR_KINDS:
        spreads = [_channel_spread(im) for _, im in five[kind]]
        assert all(im.mode == "RGB" for _, im in five[kind]), kind
        assert sum(s > 6 for s in spreads) >= 4, (kind, spreads)


def test_radiograph_like_kinds_are_grayscale(five):
    """L, 16-bit, or grey stored in an RGB file (all three channels equal); never flat."""
    for kind in ood.RADIOGRAPH_KINDS:
        for name, im in five[kind]:
            assert im.mode in ("L", "I;16", "RGB"), name
            if im.mode == "RGB":
                a = np.asarray(im)
                assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]), name
            a = np.asarray(im, dtype=np.float64)
            assert a.std() > 0.03 * a.max() > 0, name
            if im.mode == "I;16":
                assert a.max() > 255, name  # really 16-bit, not 8-bit values in a 16-bit file


def test_other_kinds_are_8_bit(five):
    for kind in ("text_page", "ultrasound"):
        assert {im.mode for _, im in five[kind]} <= {"L", "RGB"}, kind


def test_storage_modes_vary_across_the_grayscale_kinds(five):
    modes = {im.mode for kind in ood.RADIOGRAPH_KINDS for _, im in five[kind]}
    assert {"L", "RGB"} <= modes


def test_unknown_kind_is_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match="xray_of_a_cat"):
        ood.render("xray_of_a_cat", np.random.default_rng(0))
    with pytest.raises(ValueError, match="xray_of_a_cat"):
        ood.generate("xray_of_a_cat", 1, 0)
    with pytest.raises(ValueError, match="bogus"):
        ood.write_ood_set(tmp_path / "x", n_per_kind=1, kinds=("chest", "bogus"))
    assert not (tmp_path / "x").exists()  # refused before anything was written


def _marker(out: Path) -> dict:
    return json.loads((out / ood.MARKER).read_text())


def test_write_lists_every_file_and_pillow_opens_them(written):
    marker = _marker(written)
    assert marker["generator_version"] == ood.GENERATOR_VERSION == 1
    assert (marker["seed"], marker["n_per_kind"], marker["kinds"]) == (WRITE_SEED, 2, list(ood.KINDS))
    assert list(marker["files"]) == list(ood.KINDS)
    on_disk = sorted(str(p.relative_to(written)) for p in written.rglob("*") if p.is_file() and p.name != ood.MARKER)
    listed = sorted(f for files in marker["files"].values() for f in files)
    assert on_disk == listed  # nothing else: no temporaries, no half files
    for kind, files in marker["files"].items():
        assert [Path(f).stem for f in files] == [f"{kind}_{WRITE_SEED}_{i:03d}" for i in range(2)]
        for f in files:
            assert f.startswith(f"{kind}/") and Path(f).suffix in (".png", ".jpg")
            with Image.open(written / f) as im:
                im.load()
                assert im.format == ("PNG" if f.endswith(".png") else "JPEG")


def test_written_files_are_the_generated_images(written):
    marker = _marker(written)
    (name, im), = ood.generate("chest", 1, WRITE_SEED)
    path = written / marker["files"]["chest"][0]
    assert path.stem == name
    if path.suffix == ".png":
        with Image.open(path) as saved:
            assert _same(saved, im)


def test_some_radiograph_like_file_is_16_bit_png(written):
    marker = _marker(written)
    modes = {}
    for kind in ood.KINDS:
        for f in marker["files"][kind]:
            with Image.open(written / f) as im:
                modes[f] = (kind, im.mode)
    sixteen = [f for f, (kind, mode) in modes.items() if mode in ("I;16", "I")]
    assert sixteen, modes
    assert all(modes[f][0] in ood.RADIOGRAPH_KINDS and f.endswith(".png") for f in sixteen)


def test_a_complete_set_is_reused_without_rewriting(written):
    files = [p for p in written.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert ood.write_ood_set(written, n_per_kind=2, seed=WRITE_SEED) == written
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_a_missing_file_or_other_parameters_rewrite_the_set(tmp_path):
    out = ood.write_ood_set(tmp_path / "s", n_per_kind=2, seed=4, kinds=("skull", "text_page"))
    first = _marker(out)["files"]
    (out / first["skull"][1]).unlink()
    ood.write_ood_set(out, n_per_kind=2, seed=4, kinds=("skull", "text_page"))
    assert (out / first["skull"][1]).is_file()
    ood.write_ood_set(out, n_per_kind=1, seed=4, kinds=("skull",))
    marker = _marker(out)
    assert marker["kinds"] == ["skull"] and marker["files"] == {"skull": first["skull"][:1]}
    assert sorted(p.name for p in (out / "skull").iterdir()) == [Path(first["skull"][0]).name]


def test_a_killed_run_leaves_no_half_file_and_no_marker(tmp_path, monkeypatch):
    real_save = Image.Image.save
    calls = []

    def dying_save(self, fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)):  # files only: renders make in-memory JPEGs too
            calls.append(fp)
        if len(calls) == 3:
            Path(fp).write_bytes(b"\x89PNG half")  # some bytes out, then the process dies
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    out = tmp_path / "k"
    with pytest.raises(KeyboardInterrupt):
        ood.write_ood_set(out, n_per_kind=2, seed=2, kinds=("ct_slice", "ultrasound"))
    names = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(names) == 2 and not any(n.startswith(".") for n in names)  # two whole files, no temporary
    assert not (out / ood.MARKER).exists()
    monkeypatch.setattr(Image.Image, "save", real_save)
    ood.write_ood_set(out, n_per_kind=2, seed=2, kinds=("ct_slice", "ultrasound"))
    for files in _marker(out)["files"].values():
        for f in files:
            with Image.open(out / f) as im:
                im.load()


def test_cli_help_shows_the_defaults():
    done = subprocess.run([sys.executable, "-m", "fracdata.ood", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for words in ("--out", "--n", "--seed", "--kinds", "default: 30", "default: 1", "colour_photo"):
        assert words in done.stdout


def test_cli_writes_exactly_the_kinds_asked_for(tmp_path, capsys):
    out = tmp_path / "cli"
    assert ood.main(["--out", str(out), "--n", "2", "--kinds", "chest,text_page"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["chest", "text_page"]
    marker = _marker(out)
    assert marker["kinds"] == ["chest", "text_page"] and marker["n_per_kind"] == 2 and marker["seed"] == 1
    assert all(len(files) == 2 for files in marker["files"].values())


def test_cli_names_an_unknown_kind(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        ood.main(["--out", str(tmp_path / "u"), "--kinds", "chest,cat_photo"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "cat_photo" in err and "colour_photo" in err
    assert not (tmp_path / "u").exists()


def test_the_module_needs_no_tensorflow():
    code = ("import sys, numpy as np; from fracdata import ood; ood.render('chest', np.random.default_rng(0)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras', 'tflite_runtime'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
