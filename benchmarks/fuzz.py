"""python -m benchmarks.fuzz: seeded mutation fuzzing of everything a clinic can feed the runtime.

Every input format the runtime reads (PNG 8/16-bit, JPEG, TIFF, BMP, GIF, WebP, DICOM plain,
windowed, deflated, and with JPEG, JPEG 2000 and RLE frames) starts from a small valid file made
here, then gets mutated: 1-6 random
bytes changed, inserted or deleted, a truncation, or a header field (width, height, rows, frames)
set to something hostile with the checksum repaired so the decoder believes it. Each mutant goes
through the runtime's own input path (`read_image`, then the content check and normalisation of
THE preprocessing). The only allowed outcomes are an answer or an ImageReadError that names the
file; anything else is an escape. Crafted inputs (bombs in pixels, in compressed frames, and in
the metadata Pillow reads while opening a file) each run in a process of their own. The manifest loader gets the same treatment: every mutant
manifest must load or raise BundleError.

Mutants run in a worker process that reports after every input, so a hang is caught by a
watchdog (the worker is killed and restarted after the hanging input), and the worker's peak
resident memory is the bound we promise (400 MB for any input of at most 10 MB).

    python -m benchmarks.fuzz --mutations 100000 --out runs/fuzz        # the long run (docs/robustness.md)
    python -m benchmarks.fuzz --seconds 50                                # what the test suite runs
    python -m benchmarks.fuzz --mutations 0 --out runs/fuzz-crafted       # only the crafted inputs
"""

from __future__ import annotations

import argparse
import io
import json
import os
import selectors
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .memory import peak_rss_mb
from .report import save

CANARY = "FUZZ^CANARY^PATIENT"  # a patient name in every DICOM seed: no message may ever carry it
MAX_RSS_MB = 400.0
HANG_SECONDS = 20.0


# --- seeds -----------------------------------------------------------------------------------

def _radiograph(w: int = 160, h: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.3 + 0.4 * (np.abs(xx - w * 0.45 - 0.1 * yy) < w * 0.08) + 0.05 * rng.standard_normal((h, w))
    img[int(h * 0.55):int(h * 0.57)] *= 0.7
    return np.clip(img, 0.0, 1.0)


def _dicom_dataset(syntax: str, instance_uid: str):
    """A CR image's header, with the canary patient tags every DICOM case carries (none may leak)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")
    meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = CANARY, "CANARY-ID-0001", "CR"
    return ds


def _dicom(arr16: np.ndarray, syntax: str = "1.2.840.10008.1.2.1", window: bool = False,
           frames: int = 1) -> bytes:
    ds = _dicom_dataset(syntax, "1.2.3.4.5.6.7.8.9")
    ds.Rows, ds.Columns = arr16.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
    if window:
        ds.WindowCenter, ds.WindowWidth = 2048, 3000
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.concatenate([arr16.astype("<u2")] * frames).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seeds() -> Dict[str, bytes]:
    """One small valid file per format (and DICOM variant), made from the same synthetic image."""
    from PIL import Image

    g = _radiograph()
    g8 = (g * 255).astype(np.uint8)
    g16 = (g * 4095).astype(np.uint16)
    out: Dict[str, bytes] = {}

    def save(key: str, img, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[key] = buf.getvalue()

    save("png8", Image.fromarray(g8), "PNG")
    save("png16", Image.fromarray((g16.astype(np.uint16) * 16)), "PNG")
    save("jpeg", Image.fromarray(g8), "JPEG", quality=85)
    save("jpeg_rgb", Image.fromarray(np.stack([g8] * 3, -1)), "JPEG", quality=85)
    save("tiff", Image.fromarray(g8), "TIFF")
    save("tiff16", Image.fromarray(g16 * 16), "TIFF")
    save("bmp", Image.fromarray(g8), "BMP")
    save("gif", Image.fromarray(g8), "GIF")
    save("webp", Image.fromarray(g8), "WEBP", quality=80)
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return out
    out["dicom"] = _dicom(g16)
    out["dicom_window"] = _dicom(g16, window=True)
    out["dicom_frames"] = _dicom(g16, frames=3)
    out["dicom_deflated"] = _dicom(g16, syntax="1.2.840.10008.1.2.1.99")
    # Compressed frames: their codestream headers are checked against the DICOM header.
    h, w = g8.shape
    jpeg, j2k = io.BytesIO(), io.BytesIO()
    Image.fromarray(g8).save(jpeg, "JPEG", quality=90)
    Image.fromarray(g8).save(j2k, "JPEG2000", irreversible=False)
    out["dicom_jpeg"] = encapsulated_dicom(h, w, jpeg.getvalue(), JPEG_BASELINE)
    out["dicom_j2k"] = encapsulated_dicom(h, w, j2k.getvalue(), J2K_LOSSLESS)
    out["dicom_rle"] = encapsulated_dicom(h, w, _rle_encode(g8), RLE_LOSSLESS)
    return out


def _rle_encode(plane: np.ndarray) -> bytes:
    """One 8-bit plane as a DICOM RLE frame (literal runs only: valid, and enough to mutate)."""
    data = plane.tobytes()
    seg = b"".join(bytes([len(data[i:i + 128]) - 1]) + data[i:i + 128] for i in range(0, len(data), 128))
    return struct.pack("<2I", 1, 64).ljust(64, b"\0") + seg


SUFFIX = {"png8": ".png", "png16": ".png", "jpeg": ".jpg", "jpeg_rgb": ".jpg", "tiff": ".tif", "tiff16": ".tif",
          "bmp": ".bmp", "gif": ".gif", "webp": ".webp", "dicom": ".dcm", "dicom_window": ".dcm",
          "dicom_frames": ".dcm", "dicom_deflated": ".dcm", "dicom_jpeg": ".dcm", "dicom_j2k": ".dcm",
          "dicom_rle": ".dcm"}


# --- mutations -------------------------------------------------------------------------------

HOSTILE_DIMS = (0, 1, 15, 16, 17, 65535, 65536, 100_000, 4_999_000, 2 ** 31 - 1, 2 ** 32 - 1)


def _png_fix_crc(data: bytearray, chunk_start: int) -> None:
    length = struct.unpack(">I", data[chunk_start:chunk_start + 4])[0]
    body = bytes(data[chunk_start + 4:chunk_start + 8 + length])
    data[chunk_start + 8 + length:chunk_start + 12 + length] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _header_attack(key: str, data: bytearray, rng: np.random.Generator) -> bytearray:
    """Set a size field to a hostile value, keeping the file otherwise valid (CRC repaired)."""
    dim = int(rng.choice(HOSTILE_DIMS))
    if key.startswith("png") and len(data) > 33:
        off = 16 + 4 * int(rng.integers(0, 2))  # IHDR width or height
        data[off:off + 4] = struct.pack(">I", dim & 0xFFFFFFFF)
        if rng.random() < 0.3:
            data[24] = int(rng.choice([1, 2, 4, 8, 16]))  # bit depth
        _png_fix_crc(data, 8)
    elif key == "bmp" and len(data) > 26:
        off = 18 + 4 * int(rng.integers(0, 2))
        data[off:off + 4] = struct.pack("<i", int(np.clip(dim, -2 ** 31, 2 ** 31 - 1)) * int(rng.choice([1, -1])))
    elif key == "gif" and len(data) > 10:
        off = 6 + 2 * int(rng.integers(0, 2))
        data[off:off + 2] = struct.pack("<H", dim & 0xFFFF)
    elif key.startswith("dicom"):
        tags = {b"\x28\x00\x10\x00": 2, b"\x28\x00\x11\x00": 2, b"\x28\x00\x08\x00": 0, b"\x28\x00\x50\x10": 0,
                b"\x28\x00\x51\x10": 0, b"\x28\x00\x53\x10": 0, b"\x28\x00\x00\x01": 2}
        tag = list(tags)[int(rng.integers(0, len(tags)))]
        pos = bytes(data).find(tag)
        if pos >= 0 and pos + 8 < len(data):
            if tags[tag] == 2:  # US value: 2 bytes after tag(4) VR(2) length(2)
                data[pos + 8:pos + 10] = struct.pack("<H", dim & 0xFFFF)
            else:  # IS/DS text value: overwrite with digits, junk or a word
                vlen = struct.unpack("<H", data[pos + 6:pos + 8])[0]
                text = rng.choice([str(dim), "abc", "-1", "1e999", "nan", "", "\\"]).encode()
                data[pos + 8:pos + 8 + vlen] = text[:vlen].ljust(vlen, b" ")
    else:
        return _byte_mutation(data, rng)
    return data


def _byte_mutation(data: bytearray, rng: np.random.Generator) -> bytearray:
    k = int(rng.integers(1, 7))
    op = rng.random()
    if op < 0.6:
        for _ in range(k):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    elif op < 0.8:
        pos = int(rng.integers(0, len(data)))
        data[pos:pos] = bytes(rng.integers(0, 256, k, dtype=np.uint8))
    else:
        pos = int(rng.integers(0, max(1, len(data) - k)))
        del data[pos:pos + k]
    return data


def mutate(key: str, seed_bytes: bytes, index: int, seed: int) -> bytes:
    """The index-th mutant of one seed: deterministic in (key, index, seed)."""
    rng = np.random.default_rng([seed, index, sum(key.encode())])
    data = bytearray(seed_bytes)
    r = rng.random()
    if r < 0.12:
        return bytes(data[:int(rng.integers(0, len(data)))])  # truncated
    if r < 0.35:
        return bytes(_header_attack(key, data, rng))
    return bytes(_byte_mutation(data, rng))


# --- crafted bombs: the shapes adversarial testing found, made small on disk ------------------

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _deflate_zeros(comp, total: int, row: bytes = b"") -> List[bytes]:
    """Compress `total` bytes (zeros, or `row` repeated) a megabyte at a time: never held whole."""
    unit = row or b"\0"
    block = unit * max(1, (1 << 20) // len(unit))
    parts, left = [], total
    while left > 0:
        k = min(left, len(block))
        parts.append(comp.compress(block[:k]))
        left -= k
    return parts


def png_bomb(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A valid all-black PNG of any declared size: kilobytes on disk, width x height in memory
    (colour type 6: RGBA, four times that)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\0" + bytes(width * channels * bit_depth // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(_deflate_zeros(comp, len(row) * height, row)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def deflated_dicom_bomb(rows: int, cols: int, frames: int) -> bytes:
    """A deflated multi-frame DICOM of zeros: ~1 MB per GB of declared pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6.7.8.10")
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    ds = Dataset()
    ds.PatientName, ds.Modality = CANARY, "CR"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    nbytes = rows * cols * frames * 2
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", nbytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body.getvalue() + pixel_header)] + _deflate_zeros(comp, nbytes) + [comp.flush()]
    return bytes(128) + b"DICM" + head.getvalue() + b"".join(parts)


# --- codestreams and containers that decode past what their header says --------------------------

def _marker(code: int, body: bytes) -> bytes:
    return struct.pack(">HH", code, len(body) + 2) + body


def jpeg_blank(width: int, height: int, components: int = 1, sampling: int = 1, sof: int = 0xFFC0,
               precision: int = 8) -> bytes:
    """A valid JPEG of any declared size whose every block is flat: Huffman tables of one 1-bit
    code each make a block 2 bits, so a 13,000^2 colour frame is ~1 MB of zero bytes, and every
    decoder really decodes it (Pillow/libjpeg: 128 everywhere)."""
    comps = b"".join(struct.pack(">BBB", i + 1, (sampling << 4 | sampling) if i == 0 else 0x11, 0)
                     for i in range(components))
    one_code = bytes([1] + [0] * 15)
    out = (b"\xff\xd8" + _marker(0xFFDB, b"\x00" + b"\x01" * 64)
           + _marker(sof, struct.pack(">BHHB", precision, height, width, components) + comps)
           + _marker(0xFFC4, b"\x00" + one_code + b"\x00" + b"\x10" + one_code + b"\x00")
           + _marker(0xFFDA, bytes([components]) + b"".join(struct.pack(">BB", i + 1, 0) for i in range(components))
                     + b"\x00\x3f\x00"))
    mcu = 8 * sampling
    blocks = -(-width // mcu) * -(-height // mcu) * (sampling * sampling + components - 1)
    return out + bytes(-(-blocks * 2 // 8)) + b"\xff\xd9"


def j2k_blank(width: int, height: int, components: int = 1, precision: int = 8, tile: Optional[Tuple[int, int]] = None,
              levels: int = 0, codeblock_exp: int = 4) -> bytes:
    """A valid JPEG 2000 codestream of any declared size with every packet empty (one zero byte):
    a ~100-byte file that openjpeg decodes to width x height x components int32 samples."""
    tw, th = tile or (width, height)
    siz = (struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, tw, th, 0, 0, components)
           + bytes([precision - 1, 1, 1]) * components)
    cod = struct.pack(">BBHBBBBBB", 0, 0, 1, 0, levels, codeblock_exp, codeblock_exp, 0, 1)
    qcd = b"\x40" + bytes([(precision + 2) << 3]) * (1 + 3 * levels)
    out = [b"\xff\x4f" + _marker(0xFF51, siz) + _marker(0xFF52, cod) + _marker(0xFF5C, qcd)]
    packets = bytes(components * (levels + 1))
    for t in range(-(-width // tw) * -(-height // th)):
        out.append(_marker(0xFF90, struct.pack(">HIBB", t, 14 + len(packets), 0, 1)) + b"\xff\x93" + packets)
    return b"".join(out) + b"\xff\xd9"


def jp2_wrap(codestream: bytes, height: int, width: int, components: int = 1) -> bytes:
    """A JP2 file around a codestream; its image header (ihdr) says height x width, whatever the
    codestream says."""
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body) + 8) + kind + body
    ihdr = box(b"ihdr", struct.pack(">IIHBBBB", height, width, components, 7, 7, 0, 0))
    colr = box(b"colr", struct.pack(">BBBI", 1, 0, 0, 17 if components == 1 else 16))
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")
            + box(b"jp2h", ihdr + colr) + box(b"jp2c", codestream))


def rle_bomb(decoded_bytes: int, segments: int = 1) -> bytes:
    """A DICOM RLE frame whose segments each decode to `decoded_bytes` (2 bytes per 128): pydicom's
    decoder grows a buffer for all of it before comparing with Rows x Columns."""
    seg = b"\x81\x00" * -(-decoded_bytes // 128)
    offsets = [64 + i * len(seg) for i in range(segments)]
    head = struct.pack(f"<{1 + segments}I", segments, *offsets).ljust(64, b"\0")
    return head + seg * segments


def encapsulated_dicom(rows: int, cols: int, frame: bytes, syntax: str, samples: int = 1, bits: int = 8,
                       photometric: Optional[str] = None) -> bytes:
    """A DICOM whose header says rows x cols x samples, holding one compressed frame as it is."""
    from pydicom.encaps import encapsulate

    ds = _dicom_dataset(syntax, "1.2.3.4.5.6.7.8.11")
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = photometric or ("MONOCHROME2" if samples == 1 else "RGB")
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, min(bits, 12), min(bits, 12) - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ico_wrapping(image: bytes) -> bytes:
    """An ICO whose one entry is `image` (a PNG): Pillow decodes it inside Image.open."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(image), 22) + image


def icns_wrapping(png: bytes) -> bytes:
    """A macOS ICNS whose 512^2 slot ('ic09') holds `png`, whatever size the PNG really is."""
    return b"icns" + struct.pack(">I", 16 + len(png)) + b"ic09" + struct.pack(">I", 8 + len(png)) + png


def tiff_strip(width: int, height: int, strip: bytes, compression: int = 7) -> bytes:
    """A one-strip gray TIFF (compression 7: the strip is a JPEG stream) of width x height."""
    entries = sorted([(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, compression), (262, 3, 1),
                      (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, len(strip))])
    pad = len(strip) % 2
    ifd = (struct.pack("<H", len(entries))
           + b"".join(struct.pack("<HHII", t, ty, 1, v) if ty == 4 else struct.pack("<HHIHH", t, ty, 1, v, 0)
                      for t, ty, v in entries) + b"\0\0\0\0")
    return b"II*\0" + struct.pack("<I", 8 + len(strip) + pad) + strip + b"\0" * pad + ifd


def tiff_many_strips(strips: int, side: int = 256) -> bytes:
    """A side x side 8-bit gray TIFF whose StripOffsets and StripByteCounts list `strips` entries
    each (8 bytes per strip on disk), all pointing at the one real strip. Pillow unpacked both
    lists and made a tile per entry inside Image.open: 3,000,000 strips (24 MB on disk) took 569 MB."""
    head = 8 + 2 + 9 * 12 + 4
    offsets_at, counts_at = head, head + 4 * strips
    pixels_at = counts_at + 4 * strips
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, strips, offsets_at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, strips, counts_at)]
    ifd = (struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
           + struct.pack("<I", 0))
    offsets = np.full(strips, pixels_at, "<u4").tobytes()
    counts = np.full(strips, side, "<u4").tobytes()
    return b"II*\0" + struct.pack("<I", 8) + ifd + offsets + counts + bytes(side * side)


def _small_image(fmt: str, **kw) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((_radiograph(64, 64) * 255).astype(np.uint8)).save(buf, fmt, **kw)
    return buf.getvalue()


def gif_comment(nbytes: int) -> bytes:
    """A 64 x 64 GIF with a comment extension of `nbytes` before its image: Pillow kept every
    255-byte sub-block, then joined them, inside Image.open (80 MB: 263 MB)."""
    gif = _small_image("GIF")
    at = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    block = b"\xff" + b"c" * 255
    comment = b"!\xfe" + block * (nbytes // 255) + b"\0"
    return gif[:at] + comment + gif[at:]


def png_private_chunk(nbytes: int) -> bytes:
    """A 64 x 64 PNG with one private ancillary chunk of `nbytes` before its image data: Pillow
    reads it (twice: in blocks, then joined) and keeps it, inside Image.open."""
    png = _small_image("PNG")
    at = 8 + 25  # after the signature and IHDR
    return png[:at] + _png_chunk(b"prVt", bytes(nbytes)) + png[at:]


def webp_metadata(nbytes: int) -> bytes:
    """A 64 x 64 lossless WebP (VP8X container) with an EXIF chunk of `nbytes`: Pillow reads the
    whole file, and copies the chunk out, inside Image.open."""
    simple = _small_image("WEBP", lossless=True)
    vp8l = simple[12:]  # the one VP8L chunk of a simple lossless file
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (63).to_bytes(3, "little") * 2
    exif = b"EXIF" + struct.pack("<I", nbytes) + b"II*\0" + bytes(max(0, nbytes - 4)) + b"\0" * (nbytes & 1)
    body = b"WEBP" + vp8x + vp8l + exif
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_metadata_after_frame(nbytes: int) -> bytes:
    """A 64 x 64 JPEG with `nbytes` of ICC (APP2) segments between its frame header and its
    first scan, where a check that stops at the frame header does not look: Pillow gathers them,
    then joins the ICC profile, inside Image.open."""
    jpg = _small_image("JPEG")
    sof = jpg.find(b"\xff\xc0")
    end = sof + 2 + struct.unpack(">H", jpg[sof + 2:sof + 4])[0]
    body = b"ICC_PROFILE\0\1\1" + bytes(65533 - 16)
    seg = b"\xff\xe2" + struct.pack(">H", 2 + len(body)) + body
    return jpg[:end] + seg * max(1, nbytes // len(seg)) + jpg[end:]


def bmp_header(nbytes: int) -> bytes:
    """A 64 x 64 BMP whose info header says it is `nbytes` long (padded to that): Pillow reads the
    whole header inside Image.open before it looks at its size."""
    bmp = bytearray(_small_image("BMP"))
    bmp[14:18] = struct.pack("<I", nbytes)
    return bytes(bmp) + bytes(max(0, nbytes - len(bmp)))


def crafted_metadata(scale: float = 1.0, mb: Optional[int] = None) -> Dict[str, Tuple[str, bytes]]:
    """Containers that make Pillow allocate inside Image.open, before any image budget is
    checked: metadata and structure, not pixels (the 2026-12 review's memory bombs, and their kin
    in every format Pillow is allowed to open). Each must be refused unread, its file named.
    `mb`: megabytes of metadata in each (default: 40 x scale, at least 20, above the 16 MB cap)."""
    mb = mb if mb is not None else max(20, int(40 * scale))
    strips = max(100_000, int(3_000_000 * scale))
    return {f"tiff_256x256_{strips}_strips": (".tif", tiff_many_strips(strips)),
            f"gif_comment_{mb}mb": (".gif", gif_comment(mb * 2 ** 20)),
            f"png_private_chunk_{mb}mb": (".png", png_private_chunk(mb * 2 ** 20)),
            f"webp_exif_{mb}mb": (".webp", webp_metadata(mb * 2 ** 20)),
            f"jpeg_icc_after_frame_{mb}mb": (".jpg", jpeg_metadata_after_frame(mb * 2 ** 20)),
            f"bmp_header_{mb}mb": (".bmp", bmp_header(mb * 2 ** 20))}


J2K_LOSSLESS, JPEG_BASELINE, JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS, RLE_LOSSLESS = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"


def crafted_decoders(scale: float = 1.0) -> Dict[str, Tuple[str, bytes]]:
    """Compressed frames larger than their DICOM header says (once: 3.26 GB for a J2K,
    1.73 GB for a JPEG, 626 bytes and 1 MB on disk), coding parameters that make openjpeg's own
    structures huge, and containers Pillow decodes inside Image.open (an ICO wrapping a 13,000^2
    RGBA PNG: 725 MB), under misleading names. Each must be refused before decoding."""
    side = 13000 if scale >= 1 else 6000
    out: Dict[str, Tuple[str, bytes]] = {}
    png = png_bomb(side, side, 8, 6)
    out[f"ico_png_{side}x{side}_rgba_as_png"] = (".png", ico_wrapping(png))
    out[f"ico_png_{side}x{side}_rgba_as_dcm"] = (".dcm", ico_wrapping(png))
    out[f"icns_png_{side}x{side}_rgba_as_jpg"] = (".jpg", icns_wrapping(png))
    out[f"tiff_512x512_jpeg_strip_{side}x{side}"] = (".tif", tiff_strip(512, 512, jpeg_blank(side, side)))
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return out
    rgb = {"samples": 3, "photometric": "YBR_FULL_422"}
    out[f"dicom_j2k_{side}x{side}x3_in_512x512"] = (
        ".dcm", encapsulated_dicom(512, 512, j2k_blank(side, side, 3), J2K_LOSSLESS, samples=3))
    out[f"dicom_jp2_{side}x{side}_ihdr_512x512"] = (
        ".dcm", encapsulated_dicom(512, 512, jp2_wrap(j2k_blank(side, side), 512, 512), J2K_LOSSLESS))
    out[f"dicom_jpeg_{side}x{side}x3_in_512x512"] = (
        ".dcm", encapsulated_dicom(512, 512, jpeg_blank(side, side, 3, 2), JPEG_BASELINE, **rgb))
    out[f"dicom_j2k_stream_under_jpeg_syntax_{side}x{side}"] = (
        ".dcm", encapsulated_dicom(512, 512, j2k_blank(side, side), JPEG_BASELINE))
    out[f"dicom_jpeg_lossless_{side}x{side}_in_512x512"] = (
        ".dcm", encapsulated_dicom(512, 512, jpeg_blank(side, side, sof=0xFFC3, precision=16), JPEG_LOSSLESS_SV1,
                                   bits=16))
    out[f"dicom_jpegls_{side}x{side}_in_512x512"] = (
        ".dcm", encapsulated_dicom(512, 512, jpeg_blank(side, side, sof=0xFFF7), JPEG_LS_LOSSLESS))
    rle_mb = 256 if scale >= 1 else 64
    out[f"dicom_rle_segment_{rle_mb}mb_in_512x512"] = (
        ".dcm", encapsulated_dicom(512, 512, rle_bomb(rle_mb * 2 ** 20), RLE_LOSSLESS))
    out["dicom_j2k_3000x3000x3_4x4_codeblocks"] = (
        ".dcm", encapsulated_dicom(3000, 3000, j2k_blank(3000, 3000, 3, levels=5, codeblock_exp=0), J2K_LOSSLESS,
                                   samples=3))
    out["dicom_j2k_3000x3000_12x12_tiles"] = (
        ".dcm", encapsulated_dicom(3000, 3000, j2k_blank(3000, 3000, tile=(12, 12)), J2K_LOSSLESS))
    return out


def crafted(scale: float = 1.0) -> Dict[str, Tuple[str, bytes]]:
    """The adversarial shapes found by hand, each refused or read within the memory bound,
    then the decoder cases of crafted_decoders. `scale` < 1 shrinks the deflated DICOM and the
    wrapped images for the test suite (still far above the budget). The metadata cases
    (crafted_metadata) are run beside these by `run_crafted` and `--write-crafted`."""
    out = {"png_4999000x16": (".png", png_bomb(4_999_000, 16)),
           "png16_8900x8900": (".png", png_bomb(8900, 8900, 16)),
           "png_16000x16000": (".png", png_bomb(16000, 16000))}
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return {**out, **crafted_decoders(scale)}
    frames = max(3, int(60 * scale))
    out[f"dicom_deflated_{frames}x4000x4000"] = (".dcm", deflated_dicom_bomb(4000, 4000, frames))
    return {**out, **crafted_decoders(scale)}


# --- targets ---------------------------------------------------------------------------------

def image_target() -> Callable[[Path], str]:
    """The runtime's input path: decode, then THE preprocessing's resolution and content checks and normalisation."""
    from edge_runtime.errors import ImageReadError
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import PreprocessSpec, checked_input

    spec = PreprocessSpec(normalize="window", views="dihedral")

    def run(path: Path) -> str:
        try:
            decoded = read_image(path, spec)
        except ImageReadError as exc:
            if CANARY.split("^")[0] in str(exc) or "CANARY" in str(exc):
                raise AssertionError(f"a DICOM tag value reached a message: {exc}")
            if str(path) not in str(exc):
                raise AssertionError(f"error does not name the file: {exc}")
            return "refused"
        x, problem, _ = checked_input(decoded.pixels, spec)
        if problem:
            return "refused"
        x = x[:, :, 0]
        if x.shape != (spec.size, spec.size) or not np.isfinite(x).all():
            raise AssertionError(f"preprocessed input has shape {x.shape} or non-finite values")
        return "answered"

    return run


# --- the worker (one process, many mutants) -------------------------------------------------

def worker(keys: List[str], start: int, stop: int, seed: int) -> None:
    """Print one JSON line per mutant: its key and index, the outcome, and the peak RSS so far."""
    corpus = seeds()
    run = image_target()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for i in range(start, stop):
            key = keys[i % len(keys)]
            data = mutate(key, corpus[key], i // len(keys), seed)
            path = Path(tmp) / f"mutant_{i}{SUFFIX[key]}"
            path.write_bytes(data)
            before = peak_rss_mb()
            try:
                outcome, detail = run(path), ""
            except Exception as exc:  # noqa: BLE001 - this is what we count
                outcome, detail = "escape", f"{type(exc).__name__}: {exc}"[:300]
            finally:
                path.unlink(missing_ok=True)
            rss = peak_rss_mb()
            print(json.dumps({"i": i, "key": key, "bytes": len(data), "outcome": outcome, "detail": detail,
                              "rss_mb": round(rss, 1), "grew": rss > before + 1.0}), flush=True)


def run_images(keys: List[str], count: int, seed: int, seconds: Optional[float] = None,
               hang_seconds: float = HANG_SECONDS, progress: bool = False) -> Dict:
    """Drive workers over mutants 0..count-1 (or until `seconds` run out), restarting after a hang."""
    counts: Dict[str, Dict[str, int]] = {k: {"answered": 0, "refused": 0, "escape": 0, "hang": 0} for k in keys}
    escapes: List[Dict] = []
    hangs: List[Dict] = []
    peak = {"rss_mb": 0.0}
    t_end = time.monotonic() + seconds if seconds else None
    i = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=count, unit="mutant", desc="fuzz images")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    while i < count and (t_end is None or time.monotonic() < t_end):
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fuzz", "--worker", ",".join(keys), str(i),
                                 str(count), str(seed)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                cwd=str(Path(__file__).resolve().parent.parent))
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        while True:
            if t_end is not None and time.monotonic() >= t_end:
                proc.kill()
                break
            ready = sel.select(timeout=hang_seconds)
            if not ready:  # no answer for hang_seconds: input i hangs
                proc.kill()
                key = keys[i % len(keys)]
                counts[key]["hang"] += 1
                hangs.append({"i": i, "key": key})
                i += 1
                break
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:  # the worker ended: done, or it died on input i (a crash is an escape)
                proc.wait()
                if proc.returncode != 0 and i < count:
                    key = keys[i % len(keys)]
                    counts[key]["escape"] += 1
                    escapes.append({"i": i, "key": key, "detail": f"worker died (exit {proc.returncode})"})
                    i += 1
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                rec = json.loads(line)
                counts[rec["key"]][rec["outcome"]] += 1
                if rec["outcome"] == "escape":
                    escapes.append(rec)
                if rec["rss_mb"] > peak["rss_mb"]:
                    peak = {"rss_mb": rec["rss_mb"], "i": rec["i"], "key": rec["key"], "bytes": rec["bytes"]}
                i = rec["i"] + 1
                if bar is not None:
                    bar.update(1)
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if bar is not None:
        bar.close()
    done = sum(sum(c.values()) for c in counts.values())
    return {"mutants": done, "per_format": counts, "escapes": escapes, "hangs": hangs, "peak_rss": peak}


def run_crafted(scale: float = 1.0) -> Dict[str, Dict]:
    """Each crafted bomb in a process of its own, so its peak memory is its own."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="fuzz-bombs-") as tmp:
        for name, (suffix, data) in {**crafted(scale), **crafted_metadata(scale)}.items():
            path = Path(tmp) / f"{name}{suffix}"
            path.write_bytes(data)
            res = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", "--worker-file", str(path)],
                                 capture_output=True, text=True, timeout=600,
                                 cwd=str(Path(__file__).resolve().parent.parent))
            try:
                rec = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                rec = {"outcome": "escape", "detail": f"worker exit {res.returncode}: {res.stderr[-300:]}"}
            out[name] = {"bytes": len(data), **rec}
    return out


# --- the manifest loader ---------------------------------------------------------------------

def _json_mutations(manifest: Dict, rng: np.random.Generator) -> Dict:
    """Structure-aware: a field removed, retyped or set out of range, anywhere in the tree."""
    m = json.loads(json.dumps(manifest))
    paths: List[Tuple[list, object]] = []

    def walk(node, trail):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((trail + [k], v))
                walk(v, trail + [k])
        elif isinstance(node, list):
            for j, v in enumerate(node):
                paths.append((trail + [j], v))
                walk(v, trail + [j])

    walk(m, [])
    trail, _ = paths[int(rng.integers(0, len(paths)))]
    parent = m
    for step in trail[:-1]:
        parent = parent[step]
    choice = rng.random()
    values = [None, "", "abc", "128", -1, 0, 2.0, float("nan"), float("inf"), [], {}, [1, 2], 10 ** 12, True, "../x"]
    if choice < 0.2 and isinstance(parent, dict):
        del parent[trail[-1]]
    else:
        parent[trail[-1]] = values[int(rng.integers(0, len(values)))]
    return m


def run_manifests(bundle_dir: Path, count: int, seed: int, seconds: Optional[float] = None) -> Dict:
    """Mutant manifests (raw bytes and structure-aware, resealed or not) against load_bundle."""
    import shutil

    from edge_runtime.bundle import BundleError, load_bundle
    from edge_runtime.manifest import seal

    counts = {"loaded": 0, "refused": 0, "escape": 0}
    escapes: List[Dict] = []
    t_end = time.monotonic() + seconds if seconds else None
    with tempfile.TemporaryDirectory(prefix="fuzz-bundle-") as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle_dir, copy)
        original = (copy / "manifest.json").read_bytes()
        manifest = json.loads(original)
        for i in range(count):
            if t_end is not None and time.monotonic() >= t_end:
                break
            rng = np.random.default_rng([seed, i, 7])
            r = rng.random()
            if r < 0.4:
                data = bytes(_byte_mutation(bytearray(original), rng))
            else:
                mutant = _json_mutations(manifest, rng)
                if r < 0.85 and isinstance(mutant, dict):
                    try:
                        mutant = seal(mutant)  # past the digest: the schema itself must refuse
                    except Exception:  # noqa: BLE001 - an unsealable mutant is tried as it is
                        pass
                data = json.dumps(mutant, allow_nan=True).encode()
            (copy / "manifest.json").write_bytes(data)
            try:
                load_bundle(copy, verify=rng.random() < 0.2)
                counts["loaded"] += 1
            except BundleError:
                counts["refused"] += 1
            except Exception as exc:  # noqa: BLE001 - this is what we count
                counts["escape"] += 1
                escapes.append({"i": i, "detail": f"{type(exc).__name__}: {exc}"[:300]})
    return {"mutants": sum(counts.values()), "outcomes": counts, "escapes": escapes}


# --- command line ----------------------------------------------------------------------------

def fuzz(mutations: int, seed: int, seconds: Optional[float] = None, manifest_share: float = 0.1,
         bundle: Optional[Path] = None, formats: Optional[List[str]] = None, progress: bool = False,
         bomb_scale: float = 1.0) -> Dict:
    keys = formats or list(seeds())
    from edge_runtime.bundle import default_bundle_dir

    img_seconds = seconds * (1 - manifest_share) if seconds else None
    images = run_images(keys, mutations, seed, img_seconds, progress=progress)
    manifests = run_manifests(bundle or default_bundle_dir(), max(1, int(mutations * manifest_share)), seed,
                              seconds * manifest_share if seconds else None)
    bombs = run_crafted(bomb_scale) if bomb_scale else {}
    peak = max([images["peak_rss"].get("rss_mb", 0.0)] + [b.get("rss_mb", 0.0) for b in bombs.values()])
    escapes = len(images["escapes"]) + len(manifests["escapes"]) + sum(b["outcome"] == "escape" for b in bombs.values())
    return {"bombs": bombs, "command": "python -m benchmarks.fuzz " + " ".join(sys.argv[1:]), "seed": seed,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "images": images,
            "manifests": manifests,
            "verdict": {"escapes": escapes, "hangs": len(images["hangs"]),
                        "peak_rss_mb": peak, "rss_limit_mb": MAX_RSS_MB, "rss_ok": peak <= MAX_RSS_MB}}


def markdown(result: Dict) -> str:
    v, im, ma = result["verdict"], result["images"], result["manifests"]
    lines = [f"# Fuzzing — {result['date']}", "", f"Command: `{result['command']}` (seed {result['seed']})", "",
             f"**{im['mutants']:,} image mutants and {ma['mutants']:,} manifest mutants: {v['escapes']} escapes, "
             f"{v['hangs']} hangs, peak RSS {v['peak_rss_mb']:.0f} MB (limit {v['rss_limit_mb']:.0f} MB).**", "",
             "| format | mutants | answered | refused | escapes | hangs |", "|---|---:|---:|---:|---:|---:|"]
    for key, c in im["per_format"].items():
        lines.append(f"| {key} | {sum(c.values()):,} | {c['answered']:,} | {c['refused']:,} | {c['escape']} | {c['hang']} |")
    if result.get("bombs"):
        lines += ["", "| crafted input | bytes on disk | outcome | reason | peak RSS MB |", "|---|---:|---|---|---:|"]
        for name, b in result["bombs"].items():
            lines.append(f"| {name} | {b['bytes']:,} | {b['outcome']} | {b.get('detail', '')} | {b.get('rss_mb', 0):.0f} |")
    o = ma["outcomes"]
    lines += ["", f"Manifest loader: {o['loaded']:,} loaded, {o['refused']:,} refused with a reason, {o['escape']} escapes.",
              "", f"Peak RSS reached on: {json.dumps(im['peak_rss'])}"]
    for e in (im["escapes"] + ma["escapes"])[:20]:
        lines.append(f"- escape: {json.dumps(e)}")
    for h in im["hangs"][:20]:
        lines.append(f"- hang: {json.dumps(h)}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker-file":
        path = Path(argv[1])
        try:
            outcome, detail = image_target()(path), ""
        except Exception as exc:  # noqa: BLE001 - what we count
            outcome, detail = "escape", f"{type(exc).__name__}: {exc}"[:300]
        if outcome == "refused":
            from edge_runtime.errors import ImageReadError
            from edge_runtime.inputs import read_image
            from edge_runtime.preprocess import PreprocessSpec
            try:
                read_image(path, PreprocessSpec())
            except ImageReadError as exc:
                detail = exc.reason
        print(json.dumps({"outcome": outcome, "detail": detail, "rss_mb": round(peak_rss_mb(), 1)}))
        return 0
    if argv and argv[0] == "--worker":
        keys, start, stop, seed = argv[1].split(","), int(argv[2]), int(argv[3]), int(argv[4])
        worker(keys, start, stop, seed)
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=100_000, help="image mutants (default: %(default)s)")
    ap.add_argument("--seconds", type=float, help="stop after this long (the test suite's bound)")
    ap.add_argument("--seed", type=int, default=0, help="mutation seed: the same seed makes the same inputs (default: %(default)s)")
    ap.add_argument("--formats", help="comma list of " + ", ".join(SUFFIX) + " (default: all)")
    ap.add_argument("--bundle", type=Path, help="bundle whose manifest is fuzzed (default: the runtime's default)")
    ap.add_argument("--out", type=Path, help="write fuzz.json and fuzz.md here")
    ap.add_argument("--bomb-scale", type=float, default=1.0,
                    help="size of the crafted deflated DICOM, 1 = 60 frames of 4000^2; 0 skips the bombs (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--write-crafted", type=Path, metavar="DIR",
                    help="only write the crafted inputs (at --bomb-scale) into DIR, e.g. to run them through "
                         "`python -m edge_runtime predict` under /usr/bin/time")
    args = ap.parse_args(argv)
    if args.write_crafted:
        args.write_crafted.mkdir(parents=True, exist_ok=True)
        scale = args.bomb_scale or 1.0
        for name, (suffix, data) in {**crafted(scale), **crafted_metadata(scale)}.items():
            (args.write_crafted / f"{name}{suffix}").write_bytes(data)
            print(args.write_crafted / f"{name}{suffix}")
        return 0
    result = fuzz(args.mutations, args.seed, args.seconds, bundle=args.bundle,
                  formats=args.formats.split(",") if args.formats else None, progress=sys.stderr.isatty(),
                  bomb_scale=args.bomb_scale)
    text = markdown(result)
    save(result, text, args.out, "fuzz")
    print(json.dumps(result, indent=2) if args.json else text)
    v = result["verdict"]
    return 0 if v["escapes"] == 0 and v["hangs"] == 0 and v["rss_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
