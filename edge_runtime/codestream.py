"""A compressed frame's own header, read before any decoder sees the frame.

A DICOM header's Rows and Columns say nothing about what its compressed frame decodes to: the
decoder (Pillow, pylibjpeg, GDCM, pydicom's RLE) sizes its buffers from the codestream itself.
A DICOM saying 512 x 512 whose JPEG 2000 frame says 13,000 x 13,000 x 3 (648 bytes will do) took
3.26 GB before pydicom noticed the mismatch; a JPEG frame, 1.73 GB. So the codestream's header is
parsed here, in plain Python, whatever decoder is installed, and the frame is refused unless it
agrees with the DICOM header: JPEG and JPEG-LS frame headers (SOFn), JPEG 2000 SIZ (and a JP2's ihdr),
RLE segment counts and decoded lengths. What a decoder holds beyond the samples (JPEG 2000's
per-tile and per-code-block structures: 4 x 4 code-blocks cost openjpeg ~400 bytes each) is
estimated from the same header, so it can be budgeted before decoding.

The containers Pillow opens for picture files (JPEG, PNG, TIFF, BMP, GIF, WebP) are walked here
too, before Pillow opens them (`check_container`): their openers hold metadata and structure,
not pixels, before any image budget can be checked.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# Transfer syntaxes by codestream family; any other encapsulated syntax is refused unread.
JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70"}
JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                "1.2.840.10008.1.2.4.203"}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
CHECKED_SYNTAXES = JPEG_SYNTAXES | JPEG_LS_SYNTAXES | J2K_SYNTAXES | {RLE_SYNTAX}

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_J2K_TILES = 65535  # the standard's own limit (Isot is 16 bits)
J2K_TILE_BYTES = 16 * 1024  # measured ~9 KB per tile in openjpeg (62,500 tiles: 572 MB)
J2K_CODEBLOCK_BYTES = 640  # measured ~400 bytes per code-block (4 x 4 blocks on 3000^2: 218 MB)
MAX_METADATA_BYTES = 16 * 2 ** 20  # a container's metadata (containers section below)
MAX_SEGMENTS = 4096  # JPEG segments before the first scan: a camera JPEG has tens (APPn, up to 255 ICC chunks)
_NOT_FF = re.compile(b"[^\xff]")


class CodestreamError(ValueError):
    """A frame whose header is malformed, or disagrees with its container."""


class MetadataError(CodestreamError):
    """More metadata or structure than any radiograph carries, in a container that Pillow would
    hold in memory while opening it: refused before Pillow opens the file."""


@dataclass
class FrameHeader:
    kind: str  # "JPEG", "JPEG-LS", "JPEG 2000"
    width: int
    height: int
    components: int
    precision: int
    progressive: bool = False
    decoder_bytes: int = 0  # what the decoder holds beside the samples, beyond the usual

    def size_text(self) -> str:
        return f"{self.width}x{self.height} px, {self.components} component(s) of {self.precision} bits"


def _u16(data, pos: int) -> int:
    if pos + 2 > len(data):
        raise CodestreamError("ends inside its header")
    return struct.unpack_from(">H", data, pos)[0]


def _u32(data, pos: int) -> int:
    if pos + 4 > len(data):
        raise CodestreamError("ends inside its header")
    return struct.unpack_from(">I", data, pos)[0]


# --- JPEG and JPEG-LS ----------------------------------------------------------------------------

def _next_marker(fh) -> Optional[int]:
    """The code of the marker at the reader's position (fill bytes skipped: a run of 0xFF may be
    megabytes, searched at C speed a block at a time), or None at the end of the data."""
    at = fh.tell()
    first = fh.read(1)
    if not first:
        return None
    if first != b"\xff":
        raise CodestreamError(f"has no marker where one must be (byte {at})")
    want = 16  # the code is almost always the next byte: read little, more only while the run goes on
    while True:
        block = fh.read(want)
        if not block:
            return None
        found = _NOT_FF.search(block)
        if found is not None:
            fh.seek(found.start() + 1 - len(block), 1)  # just after the marker's code
            return block[found.start()]
        want = min(want * 16, 1 << 20)


def _jpeg_walk(fh, until_scan: bool) -> FrameHeader:
    """Walk a JPEG's marker segments from the reader's start, a segment header at a time (nothing
    is held but the frame header), to its frame header (SOFn or JPEG-LS SOF55), or on to its first
    scan (`until_scan`: what Pillow gathers inside Image.open). APP and COM segments over
    MAX_METADATA_BYTES together, or more than MAX_SEGMENTS segments, are a MetadataError."""
    if fh.read(2) != b"\xff\xd8":
        raise CodestreamError("does not start with a JPEG start-of-image marker")
    metadata, frame = 0, None
    for _ in range(MAX_SEGMENTS):
        marker = _next_marker(fh)
        if marker is None:
            raise CodestreamError("ends before its frame header" if frame is None else "ends before its first scan")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            continue
        if marker in (0xD9, 0xDA) and frame is None:
            raise CodestreamError("has no frame header before its image data")
        if marker in (0xD9, 0xDA):
            return frame
        if marker == 0xDE and frame is None:
            raise CodestreamError("is a hierarchical JPEG, which no decoder here reads")
        head = fh.read(2)
        if len(head) < 2:
            raise CodestreamError("ends inside its header")
        length = struct.unpack(">H", head)[0]
        if length < 2:
            raise CodestreamError("has a marker segment of impossible length")
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            metadata += length
            if metadata > MAX_METADATA_BYTES:
                raise MetadataError(f"carries more than {MAX_METADATA_BYTES // 2 ** 20} MB of metadata before its "
                                    "image")
        if marker in _SOF and frame is None:
            body = fh.read(length - 2)
            if length < 8 or len(body) < length - 2:
                raise CodestreamError("has a truncated frame header")
            precision, height, width, comps = struct.unpack_from(">BHHB", body, 0)
            if length != 8 + 3 * comps:
                raise CodestreamError("has a frame header whose length disagrees with its component count")
            if height == 0:
                raise CodestreamError("defines its height later in the stream (DNL), which is not read here")
            if width == 0 or comps == 0 or not 2 <= precision <= 16:
                raise CodestreamError("has impossible dimensions or precision in its frame header")
            frame = FrameHeader("JPEG-LS" if marker == 0xF7 else "JPEG", width, height, comps, precision,
                                progressive=marker in _PROGRESSIVE)
            if not until_scan:
                return frame
        else:
            fh.seek(length - 2, 1)
    raise MetadataError(f"has more than {MAX_SEGMENTS:,} marker segments before its image (metadata)")


def jpeg_header(data) -> FrameHeader:
    """The frame header (SOFn, or JPEG-LS SOF55) of a JPEG codestream; what Pillow/libjpeg,
    pylibjpeg, GDCM or CharLS allocate from."""
    return _jpeg_walk(io.BytesIO(data), until_scan=False)


def check_jpeg_file(fh) -> FrameHeader:
    """A JPEG file as Pillow's opener reads it: every segment up to the first scan, where APP
    segments after the frame header are gathered as well as those before it."""
    return _jpeg_walk(fh, until_scan=True)


# --- JPEG 2000 -----------------------------------------------------------------------------------

def _jp2_codestream(data) -> Tuple[int, Tuple[int, int, int, int]]:
    """(offset of the contiguous codestream, ihdr's (height, width, components, bits)) of a JP2 file."""
    pos, ihdr, limit = 0, None, len(data)
    for _ in range(10_000):
        if pos + 8 > limit:
            break
        size, kind = _u32(data, pos), bytes(data[pos + 4:pos + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0] if pos + 16 <= limit else 0, 16
        elif size == 0:
            size = limit - pos
        if size < head:
            raise CodestreamError("has a JP2 box of impossible length")
        if kind == b"jp2h":
            inner, end = pos + head, min(pos + size, limit)
            while inner + 8 <= end:
                bsize, bkind = _u32(data, inner), bytes(data[inner + 4:inner + 8])
                if bkind == b"ihdr" and inner + 22 <= end:
                    h, w, nc, bpc = struct.unpack_from(">IIHB", data, inner + 8)
                    ihdr = (h, w, nc, (bpc & 0x7F) + 1)
                if bsize < 8:
                    break
                inner += bsize
        if kind == b"jp2c":
            if ihdr is None:
                raise CodestreamError("is a JP2 file with no image header (ihdr) before its codestream")
            return pos + head, ihdr
        pos += size
    raise CodestreamError("is a JP2 file with no codestream")


def _coding_style(data, pos: int, csiz: int, component_style: bool) -> Tuple[int, int, int, int]:
    """(decomposition levels, code-block width and height exponents, smallest precinct exponent)
    of a COD or COC segment at `pos` (its marker)."""
    seg = pos + 4
    if component_style:
        seg += 1 if csiz < 257 else 2
        scod = data[seg] if seg < len(data) else 0
        sp = seg + 1
    else:
        scod = data[seg] if seg < len(data) else 0
        sp = seg + 5  # Scod, progression order, layers (2), MCT
    if sp + 5 > len(data):
        raise CodestreamError("has a truncated coding style segment")
    levels, xcb, ycb = data[sp], data[sp + 1] + 2, data[sp + 2] + 2
    if levels > 32 or not 2 <= xcb <= 10 or not 2 <= ycb <= 10 or xcb + ycb > 12:
        raise CodestreamError("has impossible coding parameters (decomposition levels or code-block size)")
    precinct = 15
    if scod & 1:
        end = sp + 5 + levels + 1
        if end > len(data):
            raise CodestreamError("has a truncated precinct list")
        precinct = min(min(b & 0x0F, b >> 4) for b in bytes(data[sp + 5:end]))
    return levels, xcb, ycb, precinct


def j2k_header(data) -> FrameHeader:
    """The SIZ of a JPEG 2000 codestream (or of a JP2 file's codestream, which must agree with its
    ihdr), with the tile count and an upper bound on code-blocks from every COD/COC, main header
    and tile-part headers alike (a tile-part may set its own code-block size)."""
    start, ihdr = 0, None
    if bytes(data[:12]) == JP2_SIGNATURE:
        start, ihdr = _jp2_codestream(data)
    if bytes(data[start:start + 4]) != b"\xff\x4f\xff\x51":
        raise CodestreamError("does not start with a JPEG 2000 codestream header (SOC, SIZ)")
    lsiz = _u16(data, start + 4)
    if start + 4 + lsiz > len(data) or lsiz < 41:
        raise CodestreamError("has a truncated image header (SIZ)")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = struct.unpack_from(">8I", data, start + 8)
    csiz = _u16(data, start + 40)
    if lsiz != 38 + 3 * csiz or csiz == 0:
        raise CodestreamError("has an image header (SIZ) whose length disagrees with its component count")
    if not (xsiz > xo and ysiz > yo and xt > 0 and yt > 0 and xto <= xo and yto <= yo
            and xto + xt > xo and yto + yt > yo):
        raise CodestreamError("has impossible image or tile dimensions")
    comps = [struct.unpack_from(">BBB", data, start + 42 + 3 * i) for i in range(csiz)]
    if any(dx == 0 or dy == 0 for _, dx, dy in comps):
        raise CodestreamError("has a component with a sub-sampling factor of zero")
    precision = max((s & 0x7F) + 1 for s, _, _ in comps)
    width, height = xsiz - xo, ysiz - yo
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    if tiles > MAX_J2K_TILES:
        raise CodestreamError(f"declares {tiles:,} tiles, more than the standard allows")
    if ihdr is not None and ihdr[:3] != (height, width, csiz):
        raise CodestreamError(f"is a JP2 file whose header says {ihdr[1]}x{ihdr[0]} px, {ihdr[2]} component(s) "
                              f"but whose codestream says {width}x{height} px, {csiz} component(s)")
    levels, xcb, ycb, precinct = _scan_coding_styles(data, start + 4 + lsiz, csiz)
    tw, th = min(xt, width), min(yt, height)
    blocks = 0  # per tile, an upper bound: every band of every resolution, +1 block per edge
    for _, dx, dy in comps:
        cw, ch = -(-tw // dx), -(-th // dy)
        for r in range(levels + 1):
            scale = 2 ** (levels - r + (1 if r else 0))
            pp = max(0, precinct - (1 if r else 0))  # a code-block never straddles a precinct
            cbw, cbh = 2 ** min(xcb, pp), 2 ** min(ycb, pp)
            blocks += (1 if r == 0 else 3) * (-(-cw // scale // cbw) + 1) * (-(-ch // scale // cbh) + 1)
    return FrameHeader("JPEG 2000", width, height, csiz, precision,
                       decoder_bytes=tiles * J2K_TILE_BYTES + tiles * blocks * J2K_CODEBLOCK_BYTES)


def _scan_coding_styles(data, pos: int, csiz: int) -> Tuple[int, int, int, int]:
    """The worst (most levels, smallest code-blocks and precincts) of every COD and COC, from the
    main header through each tile-part header, hopping tile-part to tile-part by Psot as a decoder
    does; whatever follows the last tile-part a decoder does not read either."""
    levels, xcb, ycb, precinct = 0, 10, 10, 15
    seen_cod, in_tiles, parts, end = False, False, 0, len(data)

    def style(at: int, component: bool) -> None:
        nonlocal levels, xcb, ycb, precinct
        lv, x, y, pp = _coding_style(data, at, csiz, component)
        levels, xcb, ycb, precinct = max(levels, lv), min(xcb, x), min(ycb, y), min(precinct, pp)

    while pos + 4 <= end:
        marker = _u16(data, pos)
        if marker == 0xFF90:  # SOT: this tile-part's header, then the next tile-part
            in_tiles, parts = True, parts + 1
            if parts > MAX_J2K_TILES:
                raise CodestreamError(f"has more than {MAX_J2K_TILES:,} tile-parts")
            psot = _u32(data, pos + 6)
            inner = pos + 2 + _u16(data, pos + 2)
            while inner + 4 <= end and _u16(data, inner) != 0xFF93:  # until SOD: the tile's data
                m = _u16(data, inner)
                if m >> 8 != 0xFF:
                    raise CodestreamError("has a malformed tile-part header")
                if m in (0xFF52, 0xFF53):
                    style(inner, m == 0xFF53)
                inner += 2 + _u16(data, inner + 2)
            if psot == 0:
                break  # the last tile-part runs to the end of the codestream
            if psot < 14:
                raise CodestreamError("has a tile-part of impossible length")
            pos += psot
            continue
        if in_tiles or marker == 0xFFD9:  # EOC, or what follows the last tile-part
            break
        if marker >> 8 != 0xFF:
            raise CodestreamError("has a malformed main header")
        if marker in (0xFF52, 0xFF53):
            style(pos, marker == 0xFF53)
            seen_cod = seen_cod or marker == 0xFF52
        pos += 2 + _u16(data, pos + 2)
    if not seen_cod:
        raise CodestreamError("has no coding style (COD) in its main header")
    return levels, xcb, ycb, precinct


# --- RLE -----------------------------------------------------------------------------------------

def _rle_decoded_length(seg, limit: int) -> int:
    """How many bytes a PackBits segment decodes to, counted without decoding (stops past `limit`).
    A 2-byte run makes 128 bytes, so a short segment cannot exceed the limit and is not walked."""
    n = len(seg)
    if 64 * n + 128 <= limit:
        return 0
    pos = out = noops = 0
    while pos < n:
        h = seg[pos]
        if h < 128:
            out += h + 1
            pos += h + 2
        elif h > 128:
            out += 257 - h
            pos += 2
        else:
            pos, noops = pos + 1, noops + 1
            if noops > 1024:  # each header makes a byte, or pads: a megabyte of padding is a walk, not data
                raise CodestreamError("has an RLE segment made of no-op runs")
        if out > limit:
            break
    return out


def rle_check(data, rows: int, cols: int, segments: int) -> None:
    """DICOM RLE: the segment count its header gives must be the one Rows, Columns, samples and bits
    call for, and no segment may decode to more than one plane (pydicom's decoder grows a buffer
    for whatever a segment holds: 64 times its compressed size)."""
    if len(data) < 64:
        raise CodestreamError("is shorter than the RLE header")
    count = struct.unpack_from("<I", data, 0)[0]
    if count != segments:
        raise CodestreamError(f"has {count} RLE segments where the DICOM header's samples and bits call for {segments}")
    offsets = list(struct.unpack_from(f"<{count}I", data, 4)) + [len(data)]
    if offsets[0] != 64 or any(b < a for a, b in zip(offsets, offsets[1:])) or offsets[-2] > len(data):
        raise CodestreamError("has RLE segment offsets out of order or outside the frame")
    plane = rows * cols
    limit = plane + rows + 1  # some encoders pad each row, or the segment, by a byte
    view = memoryview(data)
    for a, b in zip(offsets, offsets[1:]):
        got = _rle_decoded_length(view[a:b], limit)
        if got > limit:
            raise CodestreamError(f"has an RLE segment that decodes to more than the {cols}x{rows} px "
                                  "the DICOM header declares")


# --- against the DICOM header --------------------------------------------------------------------

def frame_header(syntax: str, data) -> Optional[FrameHeader]:
    """The codestream header of one compressed frame, by what the bytes are (a J2K stream under a
    JPEG syntax is still decoded as J2K by Pillow), checked against the family the syntax names."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8"):
        found = jpeg_header(data)
    elif head.startswith(b"\xff\x4f\xff\x51") or head == JP2_SIGNATURE:
        found = j2k_header(data)
    else:
        raise CodestreamError("is not a JPEG, JPEG-LS or JPEG 2000 codestream")
    wanted = ("JPEG" if syntax in JPEG_SYNTAXES else "JPEG-LS" if syntax in JPEG_LS_SYNTAXES else "JPEG 2000")
    if found.kind != wanted:
        raise CodestreamError(f"is a {found.kind} codestream where its transfer syntax says {wanted}")
    return found


def check_frame(syntax: str, data, rows: int, cols: int, samples: int, bits_allocated: int) -> Dict[str, int]:
    """Refuse (CodestreamError) a frame whose own header disagrees with the DICOM header; return
    what decoding it costs beyond the decoded samples: {"decoder_bytes", "sample_bytes"}."""
    if syntax == RLE_SYNTAX:
        if bits_allocated % 8:
            raise CodestreamError(f"is RLE, which cannot hold the {bits_allocated} bits per sample its DICOM header "
                                  "allocates")
        rle_check(data, rows, cols, samples * (bits_allocated // 8))
        return {"decoder_bytes": 0, "sample_bytes": bits_allocated // 8}
    h = frame_header(syntax, data)
    if (h.width, h.height, h.components) != (cols, rows, samples):
        raise CodestreamError(f"is {h.size_text()}, but the DICOM header says {cols}x{rows} px, "
                              f"{samples} sample(s) per pixel")
    if h.precision > max(bits_allocated, 8):
        raise CodestreamError(f"has {h.precision}-bit samples where the DICOM header allocates {bits_allocated}")
    extra = h.decoder_bytes + (2 * rows * cols * samples if h.progressive else 0)  # full-size coefficients
    return {"decoder_bytes": extra, "sample_bytes": 1 if h.precision <= 8 else 2}



# --- containers Pillow opens: what it holds before any image budget is checked ----------------
#
# Pillow's openers read more than a header: TIFF unpacks tags and makes a tile per strip, GIF
# keeps comments, PNG reads (and keeps) every chunk before the image data, WebP reads the whole
# file, BMP reads whatever length its header declares, JPEG gathers APP segments up to the first
# scan. A TIFF whose StripOffsets listed 3,000,000 entries (24 MB) took 569 MB inside
# Image.open. So each container is walked here first, a header at a time, within bounds, and
# refused (MetadataError) when what Pillow would hold exceeds MAX_METADATA_BYTES.

MAX_PAGES = 1024  # TIFF pages or GIF frames (Pillow walks every one to count them)
MAX_CHUNKS = 2 ** 17  # PNG or WebP chunks (a 256 MB PNG in libpng's 8 KB chunks has 32,768)
MAX_TIFF_TAGS = 4096  # entries in one TIFF directory (a scanner's TIFF has tens)
MAX_GIF_EXTENSION_BYTES = 2 ** 20  # GIF comments and other extensions, and stray bytes between blocks
MAX_GIF_SUB_BLOCKS = 2 ** 21  # 512 MB of full (255-byte) sub-blocks; 1-byte ones would take Python minutes
INFLATED_CHUNK_BYTES = 2 ** 20  # what Pillow may inflate each compressed PNG text/ICC chunk to (MAX_TEXT_CHUNK)
# What Pillow holds per item of a TIFF's tags, measured with tracemalloc (Pillow 11-13): a number
# unpacked into a tuple ~36 bytes, a rational ~152, one strip or tile of its tile list ~325.
TIFF_VALUE_BYTES, TIFF_RATIONAL_BYTES, TIFF_PIECE_BYTES = 40, 160, 330
_TIFF_UNIT = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}  # types Pillow reads
_TIFF_BYTES = {1, 2, 6, 7}  # kept as bytes or text, not unpacked into numbers
_TIFF_STRIPS, _TIFF_TILES = (273, 279), (324, 325)  # StripOffsets/ByteCounts, TileOffsets/ByteCounts
_BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)  # the info header sizes Pillow reads
_WEBP_IMAGE = (b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF")


def _too_much(what: str, amount: int, limit: int) -> MetadataError:
    return MetadataError(f"carries about {amount / 2 ** 20:,.1f} MB of {what}, more than the {limit / 2 ** 20:g} MB "
                         "any radiograph needs")


def check_container(kind: str, fh, size: int) -> None:
    """Walk the container `kind` (content.sniff's name) in `fh` (a file of `size` bytes) as
    Pillow's opener would read it, without holding it; raise MetadataError for metadata or
    structure beyond the limits above. Malformed headers are left to Pillow's own words."""
    check = {"JPEG": lambda: check_jpeg_file(fh), "TIFF": lambda: tiff_check(fh, size),
             "GIF": lambda: gif_check(fh), "PNG": lambda: png_check(fh),
             "WEBP": lambda: webp_check(fh, size), "BMP": lambda: bmp_check(fh)}.get(kind)
    if check is None:
        return
    fh.seek(0)
    try:
        check()
    except MetadataError:
        raise
    except (CodestreamError, struct.error, OSError, OverflowError, ValueError, IndexError):
        pass  # truncated or malformed: Pillow says so in its own words, having read no more than this did
    finally:
        fh.seek(0)


def tiff_check(fh, size: int) -> int:
    """Every directory Pillow's TIFF opener reads (it walks them all to count pages): at most
    MAX_PAGES, MAX_TIFF_TAGS entries each, no more strips or tiles than each page's size needs,
    and what its tags and tile list take in Python at most MAX_METADATA_BYTES. Returns that."""
    head = fh.read(16)
    big = head[2] == 43  # as Pillow decides it
    endian = "<" if head[:2] == b"II" else ">"
    nxt = struct.unpack(endian + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
    seen, cost = set(), 0
    while nxt and nxt not in seen and nxt < size:
        if len(seen) >= MAX_PAGES:
            raise MetadataError(f"holds more than {MAX_PAGES:,} pages")
        seen.add(nxt)
        fh.seek(nxt)
        count_bytes = fh.read(8 if big else 2)
        if len(count_bytes) < (8 if big else 2):
            break
        count = struct.unpack(endian + ("Q" if big else "H"), count_bytes)[0]
        if count > MAX_TIFF_TAGS:
            raise MetadataError(f"has {count:,} tags in page {len(seen)}, more than the {MAX_TIFF_TAGS:,} any image has")
        width = 20 if big else 12
        table = fh.read(count * width)
        entries = [struct.unpack_from(endian + ("HHQ8s" if big else "HHI4s"), table, i * width)
                   for i in range(len(table) // width)]
        cost += _tiff_page_cost(entries, len(seen), size, big, endian)
        if cost > MAX_METADATA_BYTES:
            raise _too_much("tags and strip lists as the decoder holds them", cost, MAX_METADATA_BYTES)
        if len(table) < count * width:
            break  # Pillow stops at a truncated directory too
        link = fh.read(8 if big else 4)
        nxt = struct.unpack(endian + ("Q" if big else "I"), link)[0] if len(link) == (8 if big else 4) else 0
    return cost


def _tiff_page_cost(entries, page: int, size: int, big: bool, endian: str) -> int:
    """What Pillow holds for one directory's tags and tile list; MetadataError when it lists more
    strips or tiles than the page's own size needs."""
    inline, small, pieces, cost = (8 if big else 4), {}, {}, 0
    for tag, typ, count, field in entries:
        unit = _TIFF_UNIT.get(typ)
        if unit is None:
            continue  # Pillow skips types it does not know
        nbytes = count * unit
        if nbytes <= inline:
            if count >= 1 and typ in (3, 4, 16) and tag not in small:
                small[tag] = struct.unpack_from(endian + {3: "H", 4: "I", 16: "Q"}[typ], field)[0]
            held = nbytes
        else:
            offset = struct.unpack(endian + ("Q" if big else "I"), field)[0]
            held = max(0, min(nbytes, size - offset))  # Pillow reads what is there, up to the file's end
        if tag in _TIFF_STRIPS + _TIFF_TILES:
            pieces[tag] = max(pieces.get(tag, 0), count)
        cost += 2 * held if typ in _TIFF_BYTES else held + (held // unit) * (
            TIFF_RATIONAL_BYTES if typ in (5, 10) else TIFF_VALUE_BYTES)
    w, h = small.get(256, 0), small.get(257, 0)
    planes = small.get(277, 1) if small.get(284, 1) == 2 else 1
    rows = max(1, min(small.get(278, h) or h or 1, h or 1))
    need = {"strip": -(-h // rows) * planes,
            "tile": -(-w // max(1, small.get(322, 1))) * -(-h // max(1, small.get(323, 1))) * planes}
    for tag, count in pieces.items():
        what = "strip" if tag in _TIFF_STRIPS else "tile"
        if count > max(1, need[what]):
            raise MetadataError(f"lists {count:,} {what}s in page {page} where its {w}x{h} px need "
                                f"{max(1, need[what]):,}")
    return cost + max([0] + [pieces[t] for t in (273, 324) if t in pieces]) * TIFF_PIECE_BYTES


def _gif_blocks(fh, counted: list) -> int:
    """Skip a run of GIF data sub-blocks; their total length. `counted[0]`: sub-blocks so far."""
    total = 0
    while True:
        n = fh.read(1)
        if not n or n[0] == 0:
            return total
        total += n[0]
        counted[0] += 1
        if counted[0] > MAX_GIF_SUB_BLOCKS:
            raise MetadataError(f"is cut into more than {MAX_GIF_SUB_BLOCKS:,} data blocks")
        fh.seek(n[0], 1)


def gif_check(fh) -> None:
    """Every block, as Pillow's GIF opener reads them counting frames: at most MAX_PAGES frames,
    MAX_GIF_EXTENSION_BYTES of comments, other extensions and stray bytes, which Pillow keeps
    (comments) or reads a byte at a time, and MAX_GIF_SUB_BLOCKS sub-blocks (each a Python step,
    here and in Pillow's frame count)."""
    head = fh.read(13)
    if len(head) < 13:
        return
    if head[10] & 0x80:
        fh.seek(3 << ((head[10] & 7) + 1), 1)
    extensions = frames = 0
    counted = [0]
    while True:
        b = fh.read(1)
        if not b or b == b";":
            return
        if b == b"!":
            label = fh.read(1)
            n = _gif_blocks(fh, counted)
            extensions += 0 if label == b"\xf9" else n  # a graphic control block: 4 bytes a frame
        elif b == b",":
            frames += 1
            if frames > MAX_PAGES:
                raise MetadataError(f"holds more than {MAX_PAGES:,} frames")
            desc = fh.read(9)
            if len(desc) < 9:
                return
            if desc[8] & 0x80:
                fh.seek(3 << ((desc[8] & 7) + 1), 1)
            fh.read(1)  # LZW minimum code size
            _gif_blocks(fh, counted)
        else:
            extensions += 1  # a byte that begins no block: Pillow skips it, one read at a time
        if extensions > MAX_GIF_EXTENSION_BYTES:
            raise MetadataError(f"carries more than {MAX_GIF_EXTENSION_BYTES // 2 ** 20} MB of comments, "
                                "extensions or stray bytes beside its image")


def png_check(fh) -> None:
    """Every chunk's header (Pillow reads, and keeps or parses, every chunk but the image data,
    before and after it): at most MAX_CHUNKS chunks and MAX_METADATA_BYTES of non-image chunks,
    a compressed text or ICC chunk counted at what Pillow may inflate it to."""
    fh.seek(8)
    metadata = 0
    for _ in range(MAX_CHUNKS):
        head = fh.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        if kind not in (b"IDAT", b"fdAT"):
            metadata += length + (INFLATED_CHUNK_BYTES if kind in (b"zTXt", b"iTXt", b"iCCP") else 0)
            if metadata > MAX_METADATA_BYTES:
                raise _too_much("chunks other than its image (the decoder reads them all)", metadata, MAX_METADATA_BYTES)
        fh.seek(length + 4, 1)
    raise MetadataError(f"has more than {MAX_CHUNKS:,} chunks")


def webp_check(fh, size: int) -> None:
    """Pillow reads a WebP file whole and copies its ICC, EXIF and XMP chunks out: everything but
    the image chunks (metadata, unknown chunks, bytes past the RIFF's end) at most
    MAX_METADATA_BYTES; at most MAX_CHUNKS chunks."""
    head = fh.read(12)
    end = min(size, 8 + struct.unpack("<I", head[4:8])[0])
    pos, image = 12, 12
    for _ in range(MAX_CHUNKS):
        if pos + 8 > end:
            break
        fh.seek(pos)
        kind, length = struct.unpack("<4sI", fh.read(8))
        step = 8 + length + (length & 1)
        if kind in _WEBP_IMAGE:
            image += min(step, end - pos)
        pos += step
    else:
        raise MetadataError(f"has more than {MAX_CHUNKS:,} chunks")
    if size - image > MAX_METADATA_BYTES:
        raise _too_much("metadata and bytes besides its image (the decoder reads the whole file)", size - image,
                        MAX_METADATA_BYTES)


def bmp_check(fh) -> None:
    """Pillow reads as many bytes as a BMP's info header says it has before checking that length."""
    head = fh.read(18)
    if len(head) == 18:
        declared = struct.unpack("<I", head[14:18])[0]
        if declared not in _BMP_HEADERS:
            raise MetadataError(f"declares a {declared:,}-byte BMP header, which no BMP has "
                                f"({', '.join(map(str, _BMP_HEADERS))})")
