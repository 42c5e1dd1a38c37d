"""The shared decoder and THE preprocessing function: shapes, ranges, and clear errors."""

import numpy as np
import pytest
from PIL import Image

import edge_runtime.imageio as imageio
from edge_runtime.errors import ImageReadError
from edge_runtime.imageio import read_grayscale
from edge_runtime.preprocess import PreprocessSpec, preprocess


def _gradient(h=60, w=40):
    return np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1))


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_preprocess_shape_range_dtype(resize):
    spec = PreprocessSpec(size=128, resize=resize)
    out = preprocess(np.random.default_rng(0).random((300, 200)).astype(np.float32), spec)
    assert out.shape == (128, 128, 1)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_letterbox_pads_and_keeps_aspect():
    spec = PreprocessSpec(size=100, resize="letterbox", pad_value=0.0)
    out = preprocess(np.ones((200, 100), np.float32), spec)[:, :, 0]
    assert np.allclose(out[:, :20], 0.0) and np.allclose(out[:, -20:], 0.0)
    assert np.allclose(out[:, 30:70], 1.0)


def test_stretch_is_bilinear_resize_of_the_whole_image():
    spec = PreprocessSpec(size=32)
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 1.0
    out = preprocess(img, spec)[:, :, 0]
    assert np.allclose(out[:, :15], 0.0) and np.allclose(out[:, 17:], 1.0)


def test_spec_round_trip_and_validation():
    spec = PreprocessSpec(size=224, resize="letterbox", normalize="clahe", views="dihedral",
                          window_percentiles=(2.0, 98.0))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert spec.n_views == 8 and PreprocessSpec().n_views == 1
    with pytest.raises(ValueError, match="resize"):
        PreprocessSpec(resize="crop")
    with pytest.raises(ValueError, match="size"):
        PreprocessSpec(size=0)
    with pytest.raises(ValueError, match="normalize"):
        PreprocessSpec(normalize="histogram")
    with pytest.raises(ValueError, match="window_percentiles"):
        PreprocessSpec(window_percentiles=(99.0, 1.0))
    with pytest.raises(ValueError, match="views"):
        PreprocessSpec(views="four")


def test_an_older_manifest_means_no_normalisation_and_one_view():
    old = {"size": 128, "resize": "stretch", "resample": "bilinear", "pad_value": 0.0, "channels": 1}
    spec = PreprocessSpec.from_dict(old)
    assert spec.normalize == "none" and spec.views == "single"


@pytest.mark.parametrize("normalize", ["window", "clahe"])
def test_normalisation_removes_gain_and_offset(normalize):
    """The same anatomy under another window, gain or bit depth gives the same model input."""
    from fracdata.phantom import render_phantom

    spec = PreprocessSpec(normalize=normalize)
    x = render_phantom(np.random.default_rng(0), "hand", True, size=(300, 240)).astype(np.float32) / 255.0
    base = preprocess(x, spec)
    for gain, offset in ((0.5, 0.1), (0.25, 0.6), (0.9, 0.0)):
        np.testing.assert_allclose(preprocess(x * gain + offset, spec), base, atol=2e-3)
    assert not np.allclose(preprocess(x * 0.5 + 0.1, PreprocessSpec()), preprocess(x, PreprocessSpec()), atol=0.05)


def test_reads_8_and_16_bit_png_to_same_scale(tmp_path):
    g8 = _gradient().astype(np.uint8)
    Image.fromarray(g8).save(tmp_path / "a.png")
    Image.fromarray((g8.astype(np.uint16) * 257)).save(tmp_path / "b16.png")
    a, b = read_grayscale(tmp_path / "a.png"), read_grayscale(tmp_path / "b16.png")
    assert b.source_mode.startswith("I")
    assert a.pixels.dtype == np.float32 and a.pixels.max() <= 1.0
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-6)


def test_colour_image_is_converted_with_a_warning(tmp_path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    d = read_grayscale(tmp_path / "c.png")
    assert d.pixels.ndim == 2 and any("colour" in w for w in d.warnings)
    gray_rgb = np.repeat(_gradient().astype(np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(gray_rgb).save(tmp_path / "g.png")
    assert read_grayscale(tmp_path / "g.png").warnings == []


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_read_on_black_before_any_reduction(tmp_path, mode):
    """Each colour times its alpha, rounded (what a browser's canvas stores, so the web app reads the
    same levels): the colour stored under alpha 0 is never read, at full size or reduced."""
    rng = np.random.default_rng(3)
    h, w = 300, 420
    level = rng.integers(0, 256, (h, w)).astype(np.uint8)
    alpha = rng.integers(0, 256, (h, w)).astype(np.uint8)
    alpha[:100] = 0
    level[:100] = 240
    path = tmp_path / f"a_{mode}.png"
    if mode == "P":
        alpha = np.where(level == 240, 0, 255).astype(np.uint8)
        Image.fromarray(level, "L").convert("P").save(path, transparency=240)
    else:
        arr = np.stack([level] * (3 if mode == "RGBA" else 1) + [alpha], -1)
        Image.fromarray(arr, mode).save(path)
    expected = np.round(level.astype(np.float64) * alpha / 255) / 255
    decoded = read_grayscale(path)
    assert np.abs(decoded.pixels - expected).max() < 1e-6
    assert imageio.TRANSPARENCY_WARNING in decoded.warnings
    reduced = read_grayscale(path, (100, 100))  # box-reduced by 2 after compositing, not before
    assert reduced.pixels.shape == (150, 210) and reduced.pixels[:50].max() == 0.0
    box = expected.reshape(150, 2, 210, 2).mean((1, 3))
    assert np.abs(reduced.pixels - box).max() <= 0.5 / 255 + 1e-6
    # the composite is made a band at a time: its reduced output and one band are counted before decoding
    extra = imageio.decode_cost((w, h), mode, (100, 100), alpha=True) - imageio.decode_cost((w, h), mode, (100, 100))
    assert extra == 4 * 210 * 150 + 16 * w * imageio.ON_BLACK_ROWS - (4 * w * h if mode == "P" else 0)


def test_colour_keys_exif_and_opaque_alpha_are_read_as_a_browser_shows_them(tmp_path):
    """A gray or RGB PNG with a colour key (tRNS) is transparent where the key is, as a browser
    shows it; a transparent image keeps its EXIF orientation; an alpha channel that is opaque
    everywhere reads as it is stored, without a warning."""
    level = np.tile(np.arange(0, 240, 2, dtype=np.uint8), (80, 1))  # 80 x 120, 0..238
    Image.fromarray(level, "L").save(tmp_path / "key_l.png", transparency=100)
    Image.fromarray(np.stack([level] * 3, -1), "RGB").save(tmp_path / "key_rgb.png", transparency=(100, 100, 100))
    for name in ("key_l.png", "key_rgb.png"):
        d = read_grayscale(tmp_path / name)
        assert imageio.TRANSPARENCY_WARNING in d.warnings, name
        keyed = level == 100
        assert d.pixels[keyed].max() == 0.0 and np.allclose(d.pixels[~keyed], level[~keyed] / 255.0), name
    opaque = np.dstack([np.stack([level] * 3, -1), np.full(level.shape, 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    d = read_grayscale(tmp_path / "opaque.png")
    assert d.warnings == [] and np.allclose(d.pixels, level / 255.0)
    half = opaque.copy()
    half[..., 3] = 128
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated to portrait
    Image.fromarray(half, "RGBA").save(tmp_path / "rotated.png", exif=exif)
    d = read_grayscale(tmp_path / "rotated.png")
    assert d.pixels.shape == (120, 80) and imageio.TRANSPARENCY_WARNING in d.warnings


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40), np.uint8)  # wide
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_grayscale(tmp_path / "r.jpg").pixels.shape == (40, 20)


@pytest.mark.parametrize("kind,reason", [
    ("missing", "not found"), ("empty", "empty"), ("text", "not an image"),
    ("truncated", "truncated"), ("dir", "is a folder"), ("tiny", "too small"),
])
def test_bad_inputs_name_the_file_and_reason(tmp_path, kind, reason):
    p = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("patient notes, not a radiograph\n")
    elif kind == "truncated":
        Image.fromarray(_gradient(400, 400).astype(np.uint8)).save(tmp_path / "full.jpg")
        p.write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
    elif kind == "dir":
        p.mkdir()
    elif kind == "tiny":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    with pytest.raises(ImageReadError) as err:
        read_grayscale(p)
    assert str(p) in str(err.value) and reason in str(err.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 5_000)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_grayscale(tmp_path / "big.png")


@pytest.mark.parametrize("name, mode", [("big.jpg", "L"), ("big.png", "L"), ("big16.png", "I;16"), ("big.tif", "L")])
def test_fast_decode_matches_full_decode_after_preprocess(tmp_path, name, mode):
    """JPEG draft (DCT scaling) and the box reduction of other formats stay within a tolerance of
    decoding every pixel: measured mean |diff| ~0.001 on the model input."""
    from fracdata.phantom import render_phantom

    arr = render_phantom(np.random.default_rng(1), "leg", True, size=(1200, 1000))
    img = Image.fromarray(arr.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(arr)
    img.save(tmp_path / name, **({"quality": 92} if name.endswith(".jpg") else {}))
    spec = PreprocessSpec(size=128)
    full = preprocess(read_grayscale(tmp_path / name).pixels, spec)
    fast_decoded = read_grayscale(tmp_path / name, draft_size=(128, 128))
    assert fast_decoded.pixels.shape[0] < 1200  # really decoded smaller
    assert fast_decoded.source_mode.startswith(mode[:3])
    fast = preprocess(fast_decoded.pixels, spec)
    assert np.abs(full - fast).mean() < 0.01 and np.abs(full - fast).max() < 0.1


def test_letterbox_content_box():
    """The heatmap of a letterboxed input is cropped to this box before it is drawn on the image."""
    from edge_runtime.preprocess import content_box, resize_input
    spec = PreprocessSpec(resize="letterbox")
    img = np.ones((200, 100), np.float32)
    top, left, h, w = content_box(img.shape, spec)
    out = resize_input(img, spec)
    assert (top, left, h, w) == (0, 32, 128, 64)
    assert out[top:top + h, left:left + w].min() == 1.0 and out.sum() == h * w  # padding outside only
    assert content_box(img.shape, PreprocessSpec()) == (0, 0, 128, 128)


def test_the_window_maps_the_chosen_percentiles_to_0_and_1():
    """By hand: on a ramp of 1001 values from 0 to 1, the p-th percentile is p/100 exactly."""
    from edge_runtime.preprocess import PreprocessSpec, normalize_intensity, window

    ramp = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    w = window(ramp)  # the default: 1st to 99th
    assert w[10] == 0.0 and w[990] == 1.0 and (w[:10] == 0).all() and (w[991:] == 1).all()
    assert abs(w[250] - (0.25 - 0.01) / 0.98) < 1e-6
    spec = PreprocessSpec(normalize="window", window_percentiles=(5.0, 80.0))
    got = normalize_intensity(ramp.reshape(7, 143), spec).ravel()
    assert got[50] == 0.0 and got[800] == 1.0 and abs(got[300] - (0.30 - 0.05) / 0.75) < 1e-6
    assert PreprocessSpec().window_percentiles == (1.0, 99.0)
