"""Trust nothing on disk: decoders (and a PNG named .dcm).

A decoder sizes its buffers from the codestream or container it is handed, not from the header
that was checked: a DICOM saying 512 x 512 whose JPEG 2000 frame says 13,000^2 x 3 (1.2 MB in
the issue, 648 bytes here) peaked at 3.26 GB, a JPEG frame at 1.73 GB, an ICO wrapping a 13,000^2
PNG at 725 MB. Each test here failed on the code before the fix (commit 36a12d9) and asserts what
is promised now: a refusal naming the file and the real reason, before any decoder runs, in a
process that stays small; a file read as what its content is; the CLIs under a memory ceiling.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import fuzz
from edge_runtime.dicom import read_dicom
from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import PreprocessSpec
from tests.dicom_factory import write_dicom

pydicom = pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parent.parent
SPEC = PreprocessSpec()
BIG = 2000  # what the crafted frames really decode to; their DICOM header says 64 x 64


@pytest.fixture
def decoder_calls(monkeypatch):
    """Every decoder this machine has, spied on: Pillow's opener (JPEG, JPEG 2000) and pydicom's
    RLE decoder. A refusal 'before decoding' must leave this list empty."""
    import pydicom.pixels.decoders.rle as rle
    from PIL import Image as PILImage

    calls = []
    real_open, real_rle = PILImage.open, rle._rle_decode_frame

    def spy_open(*a, **k):
        calls.append("Image.open")
        return real_open(*a, **k)

    def spy_rle(*a, **k):
        calls.append("rle")
        return real_rle(*a, **k)

    monkeypatch.setattr(PILImage, "open", spy_open)
    monkeypatch.setattr(rle, "_rle_decode_frame", spy_rle)
    return calls


FRAMES = {  # name: (transfer syntax, frame, samples, bits, what the refusal says)
    "j2k": (fuzz.J2K_LOSSLESS, lambda: fuzz.j2k_blank(BIG, BIG, 3), 3, 8, f"is {BIG}x{BIG} px, 3 component"),
    "jp2_ihdr_lies": (fuzz.J2K_LOSSLESS, lambda: fuzz.jp2_wrap(fuzz.j2k_blank(BIG, BIG), 64, 64), 1, 8,
                      f"codestream says {BIG}x{BIG}"),
    "jpeg_rgb": (fuzz.JPEG_BASELINE, lambda: fuzz.jpeg_blank(BIG, BIG, 3, 2), 3, 8, f"is {BIG}x{BIG} px, 3 component"),
    "j2k_under_jpeg_syntax": (fuzz.JPEG_BASELINE, lambda: fuzz.j2k_blank(BIG, BIG), 1, 8, "is a JPEG 2000 codestream"),
    "jpeg_lossless": (fuzz.JPEG_LOSSLESS_SV1, lambda: fuzz.jpeg_blank(BIG, BIG, sof=0xFFC3, precision=16), 1, 16,
                      f"is {BIG}x{BIG} px"),
    "jpeg_ls": (fuzz.JPEG_LS_LOSSLESS, lambda: fuzz.jpeg_blank(BIG, BIG, sof=0xFFF7), 1, 8, f"is {BIG}x{BIG} px"),
    "rle": (fuzz.RLE_LOSSLESS, lambda: fuzz.rle_bomb(BIG * BIG), 1, 8, "RLE segment that decodes to more"),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_a_compressed_frame_larger_than_its_header_is_refused_before_decoding(tmp_path, decoder_calls, name):
    """Before: each of these was decoded at its codestream's size (3.26 GB for a 13,000^2 x 3
    J2K), then refused asking for pylibjpeg or GDCM, or read; the JPEG-LS and lossless ones only
    escaped because no decoder for them is installed here. Now the frame's own header is checked
    against Rows/Columns/samples whatever decoder is installed, and the message says why."""
    syntax, frame, samples, bits, says = FRAMES[name]
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(fuzz.encapsulated_dicom(64, 64, frame(), syntax, samples=samples, bits=bits,
                                             photometric="YBR_FULL_422" if name == "jpeg_rgb" else None))
    with pytest.raises(ImageReadError) as err:
        read_image(path, SPEC)
    reason = err.value.reason
    assert str(path) in str(err.value) and says in reason and "refused before decoding" in reason, reason
    assert "pylibjpeg" not in reason and fuzz.CANARY not in reason
    assert decoder_calls == []


def test_what_coding_parameters_make_the_decoder_hold_is_budgeted(tmp_path):
    """A J2K frame that agrees with its header but codes 1500^2 x 3 in 4 x 4 code-blocks made
    openjpeg hold ~400 bytes per block (~300 MB); before, it was decoded ('blank image'). The
    checks must not cost real files: one radiograph as JPEG, J2K and RLE frames reads alike."""
    path = tmp_path / "tiny_blocks.dcm"
    path.write_bytes(fuzz.encapsulated_dicom(1500, 1500, fuzz.j2k_blank(1500, 1500, 3, levels=5, codeblock_exp=0),
                                             fuzz.J2K_LOSSLESS, samples=3))
    with pytest.raises(ImageReadError, match="decoding it would take about [0-9,]+ MB, above the 256 MB"):
        read_image(path, SPEC)
    arr = (fuzz._radiograph(180, 220) * 255).astype(np.uint8)
    h, w = arr.shape
    out = {}
    for name, fmt, syntax in (("jpeg", "JPEG", fuzz.JPEG_BASELINE), ("j2k", "JPEG2000", fuzz.J2K_LOSSLESS)):
        buf = tmp_path / f"frame.{name}"
        Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(fuzz.encapsulated_dicom(h, w, buf.read_bytes(), syntax))
        out[name] = read_dicom(path).pixels
    path = tmp_path / "rle.dcm"
    path.write_bytes(fuzz.encapsulated_dicom(h, w, fuzz._rle_encode(arr), fuzz.RLE_LOSSLESS))
    out["rle"] = read_dicom(path).pixels
    for name, px in out.items():
        assert px.shape == (h, w) and np.abs(px - out["rle"]).mean() < 0.02, name


def test_an_oversized_compressed_frame_is_refused_from_its_item_headers_unread(tmp_path, monkeypatch):
    """pydicom reads encapsulated pixel data whole (it has no length to defer by), so a 250 MB
    frame was held twice before any check. Its extent now comes from the item headers. Scaled
    down: a 3 MB frame against an 8 MB budget (three copies of it are counted) is never read."""
    import pydicom.encaps
    import edge_runtime.imageio as imageio
    monkeypatch.setattr(imageio, "MAX_DECODE_BYTES", 8 * 2 ** 20)
    reads = []
    real = pydicom.encaps.get_frame
    monkeypatch.setattr(pydicom.encaps, "get_frame", lambda *a, **k: reads.append(1) or real(*a, **k))
    frame = fuzz.j2k_blank(64, 64)
    path = tmp_path / "padded.dcm"
    path.write_bytes(fuzz.encapsulated_dicom(64, 64, frame[:-2] + bytes(3 * 2 ** 20) + b"\xff\xd9", fuzz.J2K_LOSSLESS))
    with pytest.raises(ImageReadError, match="decoding it would take about 9 MB"):
        read_image(path, SPEC)
    assert reads == []


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".dcm", ""])
def test_containers_that_decode_inside_open_are_refused_by_content_under_any_name(tmp_path, suffix):
    """Pillow decodes an ICO's largest image inside Image.open, before any budget (725 MB for a
    13,000^2 RGBA PNG named .png; as .dcm it was called a DICOM without pixel data). Now Pillow
    only opens the format the content is, from an allow-list, for radiographs and film photos."""
    from device.photo import open_photo

    png = fuzz.png_bomb(1500, 1500, 8, 6)
    for maker, named in ((fuzz.ico_wrapping, "Windows icon"), (fuzz.icns_wrapping, "ICNS")):
        path = tmp_path / f"{named.split()[-1]}{suffix}"
        path.write_bytes(maker(png))
        for read in (lambda p: read_image(p, SPEC), open_photo):
            with pytest.raises(ImageReadError) as err:
                read(path)
            assert str(path) in str(err.value) and named in err.value.reason, err.value.reason


def test_a_file_is_read_as_what_its_content_is_not_what_its_name_says(tmp_path):
    """A PNG named .dcm once got "DICOM file has no pixel data". It is read as the PNG it is,
    with a warning; asked for as DICOM it says what the content is; a DICOM named .png is DICOM."""
    arr = (fuzz._radiograph(180, 220) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    png_as_dcm = tmp_path / "scan.dcm"
    png_as_dcm.write_bytes((tmp_path / "x.png").read_bytes())
    decoded = read_image(png_as_dcm, SPEC)
    assert decoded.source_mode == "L" and any("content is a PNG image, not DICOM" in w for w in decoded.warnings)
    with pytest.raises(ImageReadError, match=r"the content is not DICOM \(it looks like a PNG image"):
        read_dicom(png_as_dcm)
    (tmp_path / "report.dcm").write_bytes(b"%PDF-1.7\n" + bytes(300))
    with pytest.raises(ImageReadError, match="the content is a PDF document"):
        read_image(tmp_path / "report.dcm", SPEC)
    dicom_as_png = write_dicom(tmp_path / "d.dcm", (arr.astype(np.uint16) * 16)).rename(tmp_path / "d.png")
    assert read_image(dicom_as_png, SPEC).source_mode.startswith("DICOM")


def test_a_ybr_colour_dicom_is_converted_to_gray_once(tmp_path):
    """pydicom already returns RGB for YBR data; the display converted it again (a red-brown
    patch of luma 0.36 read as 0.67)."""
    from pydicom.pixels import convert_color_space
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[...] = (200, 50, 20)
    path = write_dicom(tmp_path / "ybr.dcm", np.zeros((40, 40), np.uint16))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.save_as(path)
    luma = float(np.array([200, 50, 20]) @ np.array([0.299, 0.587, 0.114])) / 255
    assert read_dicom(path).pixels.mean() == pytest.approx(luma, abs=0.01)


def test_no_tag_value_reaches_stderr_through_pydicoms_own_warnings(tmp_path):
    """Found by fuzzing the compressed seeds: pydicom warns, and logs, "Invalid value for VR UI:
    '<the value>'", and a transfer syntax UID whose length runs on into the dataset quoted the
    patient's name on the CLI's stderr (the service's log). Now pydicom is silenced while the
    runtime reads a file; only the runtime's own messages, which quote no value, are printed."""
    import struct
    from tests.dicom_factory import PATIENT_NAME
    path = write_dicom(tmp_path / "long_uid.dcm", (fuzz._radiograph(180, 220) * 4095).astype(np.uint16))
    data = bytearray(path.read_bytes())
    at, name = data.find(b"\x02\x00\x10\x00UI"), data.find(PATIENT_NAME.encode())  # TransferSyntaxUID
    data[at + 6:at + 8] = struct.pack("<H", (name + len(PATIENT_NAME) - at) // 2 * 2)
    path.write_bytes(bytes(data))
    res = _run(["-m", "edge_runtime", "predict", "--no-gradcam", str(path)], {"PYTHONWARNINGS": "default"})
    assert res.returncode == 1 and "ERROR" in res.stdout, res.stdout + res.stderr
    assert "DOE" not in res.stdout + res.stderr, res.stderr


def test_megabytes_of_jpeg_metadata_are_refused_unread(tmp_path, monkeypatch):
    """Pillow gathers every APP segment before the frame header (ICC chunks: the file's size,
    twice). Scaled down: with a 64 KB allowance, 200 KB of APP2 segments is refused."""
    import edge_runtime.codestream as codestream
    monkeypatch.setattr(codestream, "MAX_METADATA_BYTES", 64 * 1024)
    Image.fromarray((fuzz._radiograph(180, 220) * 255).astype(np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    app2 = b"\xff\xe2\xff\xfe" + b"ICC_PROFILE\x00\x01\x01" + bytes(65534 - 16)
    (tmp_path / "flood.jpg").write_bytes(data[:2] + app2 * 4 + data[2:])
    read_image(tmp_path / "ok.jpg", SPEC)
    with pytest.raises(ImageReadError, match="metadata"):
        read_image(tmp_path / "flood.jpg", SPEC)


def test_the_memory_ceiling_is_restored_after_the_command():
    """Commands run in-process (as these tests do) must give their caller its limit back."""
    from edge_runtime.memlimit import memory_ceiling
    with memory_ceiling(64) as limit:
        if limit is None:
            pytest.skip("no address-space limit on this platform")
        with pytest.raises(MemoryError):
            np.ones(256 * 2 ** 20, np.uint8)
    assert np.ones(256 * 2 ** 20, np.uint8).sum() == 256 * 2 ** 20


def _run(args, env_extra=None):
    import os
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_the_clis_turn_an_allocation_past_their_ceiling_into_a_refusal(tmp_path):
    """Before, predict and film had no ceiling: anything the budgets missed was decoded until the
    OOM killer ended the batch. Now a file past it is that file's error and the batch goes on."""
    big = np.tile(np.linspace(0, 60000, 3000), (3000, 1)).astype(np.uint16)  # 16-bit: ~54 MB to decode
    Image.fromarray(big).save(tmp_path / "big16.png")
    small = tmp_path / "small.png"
    Image.fromarray((fuzz._radiograph(180, 220) * 255).astype(np.uint8)).save(small)
    res = _run(["-m", "edge_runtime", "predict", "--json", "--no-gradcam", "--memory-mb", "20",
                str(tmp_path / "big16.png"), str(small)])
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 1, res.stderr[-2000:]
    assert "memory ceiling" in recs[0]["error"] and recs[1].get("decision") and not recs[1].get("error")
    res = _run(["-m", "device", "film", "--json", "--keep", str(tmp_path / "keep"), str(tmp_path / "big16.png")],
               {"FRACTURE_EDGE_MEMORY_MB": "20"})
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 1 and "memory ceiling" in recs[0]["error"], (res.stdout, res.stderr[-2000:])


def test_every_crafted_decoder_case_is_refused_through_the_cli_within_256_mb(tmp_path):
    """The issue's cases and their variants (benchmarks.fuzz.crafted_decoders), all in one
    `python -m edge_runtime predict`: each refused with its reason, none decoded, peak RSS of the
    whole command far below 256 MB (before: 3.26 GB, 1.73 GB, 725 MB...)."""
    files = []
    for name, (suffix, data) in fuzz.crafted_decoders(scale=0.2).items():
        files.append(tmp_path / f"{name}{suffix}")
        files[-1].write_bytes(data)
    code = ("import sys; from edge_runtime.cli import main; rc = main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print('RSS_KB', hwm, rc, file=sys.stderr)\n")
    res = _run(["-c", code, "predict", "--json", "--no-gradcam", *map(str, files)])
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == len(files) and all(r.get("error") and r.get("probability") is None for r in recs), recs
    assert not any(r.get("internal_error") for r in recs)
    rss_kb, rc = [line.split()[1:] for line in res.stderr.splitlines() if line.startswith("RSS_KB")][0]
    assert rc == "1" and int(rss_kb) < 256 * 1024, (rss_kb, recs)


# --- memory bombs made of metadata, and what a MemoryError leaves behind (review of 2026-12) -----

def _rss_cli(files, memory_mb: int, metadata_cap: int):
    """`python -m edge_runtime predict --json --no-gradcam` on `files` in a process of its own,
    with the metadata cap scaled down to `metadata_cap` bytes (the files stay small on disk):
    (records, exit status, peak RSS in MB)."""
    code = ("import sys; import edge_runtime.codestream as c; c.MAX_METADATA_BYTES = int(sys.argv[1])\n"
            "from edge_runtime.cli import main; rc = main(sys.argv[2:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print('RSS_KB', hwm, rc, file=sys.stderr)\n")
    res = _run(["-c", code, str(metadata_cap), "predict", "--json", "--no-gradcam", "--memory-mb", str(memory_mb),
                *map(str, files)])
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    found = [line.split()[1:] for line in res.stderr.splitlines() if line.startswith("RSS_KB")]
    assert found, res.stderr[-3000:]
    return recs, int(found[0][1]), int(found[0][0]) / 1024


def test_metadata_bombs_are_each_files_error_and_the_batch_goes_on_in_bounded_memory(tmp_path):
    """The review's case: a 256x256 TIFF whose StripOffsets and StripByteCounts list 3,000,000
    entries (24 MB) made Pillow build millions of small objects inside Image.open (569 MB): the
    file's own "memory ceiling" refusal was raised, then the record could not be made (the
    exception still held the tile list), "internal error (MemoryError)", exit 3, the next file
    never answered. Here 500,000 strips (4 MB) under a 96 MB ceiling do the same to the code
    before the fix. Its kin in every container Pillow opens (GIF comments, PNG chunks, WebP
    chunks, JPEG APP segments after the frame header, a BMP header's declared length) are
    walked before Pillow opens them, and refused naming what is wrong; the batch goes on."""
    files = [tmp_path / "strips.tif"]
    files[0].write_bytes(fuzz.tiff_many_strips(500_000))
    for name, (suffix, data) in fuzz.crafted_metadata(mb=2).items():  # against a cap scaled down to 1 MB
        if not name.startswith("tiff"):
            files.append(tmp_path / f"{name}{suffix}")
            files[-1].write_bytes(data)
    good = tmp_path / "good.png"
    Image.fromarray((fuzz._radiograph(180, 220) * 255).astype(np.uint8)).save(good)
    recs, rc, rss_mb = _rss_cli([*files, good], memory_mb=96, metadata_cap=2 ** 20)
    assert [r["file"] for r in recs] == list(map(str, [*files, good])), recs
    for path, rec in zip(files, recs):
        assert not rec.get("internal_error") and "refused before opening it" in rec["error"], rec
    assert "lists 500,000 strips in page 1 where its 256x256 px need 256" in recs[0]["error"]
    assert recs[-1].get("decision") and not recs[-1].get("error") and rc == 1, recs[-1]  # answered (or out of scope)
    assert rss_mb < 160, rss_mb  # the CLI with its model loaded is 55-64 MB; before: the ceiling, then exit 3


class _Hoard:
    """Stands for what a failed decoding allocated (Pillow's tile list, a dataset, arrays)."""


def _failing(exc_type, hoards):
    def fail(*_a, **_k):
        hoard = _Hoard()  # held by this frame, so by the traceback of what it raises
        hoards.append(__import__("weakref").ref(hoard))
        raise exc_type("simulated")
    return fail


@pytest.mark.parametrize("exc_type", [MemoryError, OSError])
@pytest.mark.parametrize("reader", ["picture", "dicom"])
def test_a_refusal_keeps_nothing_of_the_failed_decoding(tmp_path, monkeypatch, exc_type, reader):
    """`raise ImageReadError(...) from None` inside the except block still keeps the original
    exception as __context__, and its traceback keeps the decoder's frames and all they hold:
    the caller then had to make the file's record beside the memory that had just run out. Now
    nothing of it is reachable from the refusal the caller gets."""
    import edge_runtime.dicom as dicom_mod
    import edge_runtime.imageio as imageio

    hoards: list = []
    if reader == "picture":
        path = tmp_path / "x.png"
        Image.fromarray((fuzz._radiograph(64, 64) * 255).astype(np.uint8)).save(path)
        monkeypatch.setattr(imageio.Image, "open", _failing(exc_type, hoards))
    else:
        path = write_dicom(tmp_path / "x.dcm", (fuzz._radiograph(64, 64) * 4095).astype(np.uint16))
        monkeypatch.setattr(dicom_mod, "_read", _failing(exc_type, hoards))
    with pytest.raises(ImageReadError) as err:
        read_image(path, SPEC)
    assert str(path) in str(err.value)
    if exc_type is MemoryError:
        assert "memory ceiling" in err.value.reason
    assert hoards and hoards[0]() is None, "the refusal still holds what the failed decoding allocated"
    assert err.value.__context__ is None and err.value.__cause__ is None


@pytest.mark.parametrize("exc_type", [MemoryError, RuntimeError])
def test_a_files_record_is_made_after_what_failed_is_freed(tmp_path, monkeypatch, exc_type):
    """predict_file_safely made the record inside `except MemoryError:`, beside everything the
    traceback held; past the ceiling that failed again and ended the batch. Now the record is
    made once the failed work is gone, and the batch goes on."""
    from edge_runtime.predictor import Predictor

    pred = Predictor(gradcam=False)
    hoards: list = []
    alive_when_recorded = []
    real_header = pred._header
    monkeypatch.setattr(pred, "predict_file", _failing(exc_type, hoards))
    monkeypatch.setattr(pred, "_header", lambda name: alive_when_recorded.append(hoards[-1]() is not None)
                        or real_header(name))
    rec = pred.predict_file_safely(tmp_path / "x.png")
    assert alive_when_recorded == [False]
    assert rec.file == str(tmp_path / "x.png") and rec.probability is None
    if exc_type is MemoryError:
        assert "out of memory" in rec.error and not rec.internal_error
    else:
        assert rec.internal_error and "RuntimeError" in rec.error


def test_a_memory_error_outside_any_files_handling_names_the_file(tmp_path, monkeypatch, capsys):
    """What escapes every file's own handling (here: printing its answer) was reported as
    "internal error (MemoryError): please report it", with no file named."""
    import edge_runtime.cli as cli

    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        Image.fromarray((fuzz._radiograph(120, 140, seed=len(paths)) * 255).astype(np.uint8)).save(paths[-1])
    real = cli._human

    def human(rec, *args):
        if rec.file.endswith("b.png"):
            raise MemoryError
        return real(rec, *args)

    monkeypatch.setattr(cli, "_human", human)
    assert cli.main(["predict", "--no-gradcam", "--memory-mb", "0", *map(str, paths)]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert f"internal error (MemoryError) while reading {paths[1]}" in err, err


def _tiled_tiff(side: int = 64, tile: int = 16) -> bytes:
    """A raw 8-bit gray TIFF in tile x tile tiles (Pillow cannot write tiles)."""
    import struct
    n = (side // tile) ** 2
    entries = 10
    data_at = 8 + 2 + entries * 12 + 4
    offsets_at, counts_at, pixels_at = data_at, data_at + 4 * n, data_at + 8 * n
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHII", *e) for e in (
        (256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1),
        (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, n, offsets_at), (325, 4, n, counts_at))) + b"\0\0\0\0"
    pixels = bytes(range(256)) * (side * side // 256)
    return (b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack(f"<{n}I", *(pixels_at + i * tile * tile for i in range(n)))
            + struct.pack(f"<{n}I", *([tile * tile] * n)) + pixels)


def test_the_container_walk_lets_real_files_through(tmp_path):
    """What the walk allows: a strip per row, tiles, BigTIFF, several pages, text and ICC chunks,
    EXIF and a progressive JPEG, an animated GIF with a comment, a WebP with EXIF, a BMP."""
    from PIL import PngImagePlugin
    im = Image.fromarray((fuzz._radiograph(180, 220) * 255).astype(np.uint8))
    im.save(tmp_path / "rows.tif", tiffinfo={278: 1})
    im.save(tmp_path / "big.tif", big_tiff=True)
    im.save(tmp_path / "pages.tif", save_all=True, append_images=[im.rotate(90)])
    (tmp_path / "tiles.tif").write_bytes(_tiled_tiff())
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "CR reader")
    info.add_itxt("Comment", "x" * 20000, zip=True)
    im.save(tmp_path / "text.png", pnginfo=info, icc_profile=b"\0" * 3000)
    exif = Image.Exif()
    exif[274] = 6
    im.convert("RGB").save(tmp_path / "exif.jpg", exif=exif, progressive=True, icc_profile=b"\0" * 200_000)
    im.save(tmp_path / "anim.gif", save_all=True, append_images=[im.rotate(90)], comment=b"clinic " * 100)
    im.save(tmp_path / "exif.webp", exif=exif.tobytes(), lossless=True)
    im.save(tmp_path / "plain.bmp")
    for path in sorted(tmp_path.iterdir()):
        assert read_image(path, SPEC).pixels.ndim == 2, path
