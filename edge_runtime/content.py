"""What a file holds, by its first bytes, never by its name.

A file's name says nothing a decoder can trust: an ICO icon named .png made Pillow decode the
13,000² PNG inside it while opening it (725 MB), and a PNG named .dcm was parsed as DICOM ("no
pixel data"). So every input is identified here by its content, and Pillow is only ever asked to
open the one format this found, from a short allow-list of formats that decode no pixels in
`open` (`imageio.open_image`). They do read metadata there, so each is walked first, within
bounds (`codestream.check_container`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .errors import ImageReadError
from .filecheck import open_regular

HEAD_BYTES = 132  # DICOM's magic is at byte 128
# What Pillow may open, by the name Pillow gives each: none of these decodes pixels inside Image.open
# (what each reads there, its metadata, is bounded first: codestream.check_container).
PILLOW_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
READABLE = "JPEG, PNG, TIFF, BMP, GIF, WebP and DICOM"

KINDS = {  # kind -> how a message names it
    "DICOM": "a DICOM file", "JPEG": "a JPEG image", "PNG": "a PNG image", "TIFF": "a TIFF image",
    "BMP": "a BMP image", "GIF": "a GIF image", "WEBP": "a WebP image",
    "ICO": "a Windows icon (ICO/CUR) file", "ICNS": "a macOS icon (ICNS) file", "PSD": "a Photoshop (PSD) file",
    "JPEG2000": "a JPEG 2000 image", "JPEGXL": "a JPEG XL image", "HEIF": "a HEIF/HEIC/AVIF image",
    "PDF": "a PDF document", "ZIP": "a ZIP archive", "GZIP": "a gzip archive", "FITS": "a FITS file",
    "PNM": "a PNM/PGM/PPM image", "QOI": "a QOI image", "DDS": "a DDS texture", "PS": "a PostScript/EPS file",
    "MARKUP": "an XML, SVG or HTML text file",
}


def sniff(head: bytes) -> Optional[str]:
    """The kind of content these first bytes begin (a key of KINDS), or None if unknown."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"  # first: the DICOM preamble may itself hold another format's header
    checks = (
        ("PNG", head.startswith(b"\x89PNG\r\n\x1a\n")),
        ("JPEG", head.startswith(b"\xff\xd8\xff")),
        ("GIF", head[:6] in (b"GIF87a", b"GIF89a")),
        ("BMP", head.startswith(b"BM")),
        ("TIFF", head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
                              b"MM*\x00", b"II\x00*")),  # the last two: invalid, but met and read by Pillow
        ("WEBP", head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
        ("ICO", head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")),
        ("ICNS", head.startswith(b"icns")),
        ("PSD", head.startswith(b"8BPS")),
        ("JPEG2000", head.startswith(b"\xff\x4f\xff\x51") or head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")),
        ("JPEGXL", head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n")),
        ("HEIF", head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif",
                                                          b"avis", b"heim", b"heis")),
        ("PDF", head.startswith(b"%PDF")),
        ("ZIP", head.startswith(b"PK\x03\x04")),
        ("GZIP", head.startswith(b"\x1f\x8b")),
        ("FITS", head.startswith(b"SIMPLE  =")),
        ("PNM", len(head) > 2 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n#"),
        ("QOI", head.startswith(b"qoif")),
        ("DDS", head.startswith(b"DDS ")),
        ("PS", head.startswith(b"%!PS") or head.startswith(b"\xc5\xd0\xd3\xc6")),
        ("MARKUP", head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"),
    )
    return next((kind for kind, hit in checks if hit), None)


def sniff_file(path: Union[str, Path]) -> Optional[str]:
    """sniff() of a file's first bytes. Callers check the file first (filecheck.check_input_file)."""
    try:
        with open_regular(path) as fh:
            return sniff(fh.read(HEAD_BYTES))
    except OSError as exc:
        from .filecheck import open_error
        raise open_error(path, exc) from None


def describe(kind: Optional[str]) -> str:
    return KINDS.get(kind or "", "not an image this runtime recognises")


def not_readable(path: Union[str, Path], kind: Optional[str]) -> ImageReadError:
    """The refusal for content that is none of the formats this runtime reads."""
    if kind is None:
        return ImageReadError(path, f"not an image, or not a format this runtime reads ({READABLE})")
    return ImageReadError(path, f"not an image this runtime reads: the content is {describe(kind)} "
                                f"(whatever its name says); it reads {READABLE}")
