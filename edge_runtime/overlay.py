"""Blend a heatmap over the radiograph for a clinician to look at (numpy + Pillow only).

The saved overlay carries what a reader needs to judge it at a glance: the colour scale (a bar at
the right: from 0 to 1 for a fracture map, whose cells are probabilities; from 0 to the map's own
peak for Grad-CAM, which is relative to each image), the probability and the threshold in a
caption below, the annotated fracture boxes, when they are known (evaluation on data with boxes),
as green rectangles, and, on the device's overlays, the disclaimer below and a warning banner
above when the bundle is a demonstration model: the file may travel alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BOX_COLOUR = (0, 255, 0)  # not in the heat colormap, so a box never reads as heat
_PANEL = (24, 24, 24)
_TEXT = (235, 235, 235)
_DIM = (190, 190, 190)  # the disclaimer: readable, quieter than the answer
BANNER_COLOUR = (255, 176, 0)  # amber: a warning, and not a colour of the heat scale's top
BANNER_TEXT = (0, 0, 0)

# Anchor points of a jet-like colormap: dark blue -> cyan -> yellow -> red.
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array([[0, 0, 128], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float32)


def colormap(heat: np.ndarray) -> np.ndarray:
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    rgb = np.stack([np.interp(h, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


ALPHA = 0.4  # the heatmap's opacity where it is strongest
MASK_GAMMA = 0.8  # opacity rises as heat ** this: weak activations stay mostly transparent
_LEVELS = np.linspace(0.0, 1.0, 256, dtype=np.float32)


def _palette() -> list:
    return colormap(_LEVELS).astype(np.uint8).reshape(-1).tolist()


def blend_image(gray: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """The radiograph with the heatmap mixed in where it is strong, as an RGB image.

    Colouring and mixing run in Pillow's C loops (a palette and a composite with a mask), so a
    display-size overlay costs a few milliseconds, not more than the inference it explains."""
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g[:, :, 0]
    h, w = g.shape
    heat_img = Image.fromarray(np.ascontiguousarray(np.asarray(heat, dtype=np.float32)))
    heat_up = np.asarray(heat_img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    level = Image.fromarray((np.clip(heat_up, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    colour = level.copy()
    colour.putpalette(_palette())  # an "L" image with a palette is a "P" image
    colour = colour.convert("RGB")
    # Weak activations stay mostly transparent so the bone remains readable.
    mask = level.point([int(round(255.0 * alpha * (i / 255.0) ** MASK_GAMMA)) for i in range(256)])
    base = Image.fromarray((np.clip(g, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)).convert("RGB")
    return Image.composite(colour, base, mask)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the built-in bitmap font, one size


def _text_mid_left(draw: ImageDraw.ImageDraw, xy: Tuple[float, float], text: str, font,
                   fill: Tuple[int, int, int] = _TEXT) -> None:
    """Text with its left edge at x and its middle at y, for scalable and bitmap fonts alike
    (Pillow's `anchor` works only with FreeType fonts)."""
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0], xy[1] - (top + bottom) / 2), text, fill=fill, font=font)


def draw_boxes(img: Image.Image, boxes: Sequence[Tuple[float, float, float, float]],
               colour: Tuple[int, int, int] = BOX_COLOUR) -> Image.Image:
    """Rectangles for boxes given relative to the image (x0, y0, x1, y1 in [0, 1]), in place."""
    w, h = img.size
    width = max(2, round(max(w, h) / 300))
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * (w - 1), y0 * (h - 1), x1 * (w - 1), y1 * (h - 1)], outline=colour, width=width)
    return img


def caption_lines(probability: Optional[float], threshold: Optional[float], boxes: bool) -> list:
    lines = []
    if probability is not None:
        if threshold is None:
            lines.append(f"P(fractured) {probability:.3f}")
        else:
            lines.append(f"P(fractured) {probability:.3f} {'>=' if probability >= threshold else '<'} "
                         f"threshold {threshold:.3f}")
    if boxes:
        lines.append("green: annotated fracture")
    return lines


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> List[str]:
    """`text` broken between words into lines no wider than `width`; a word wider than that on
    its own is broken between characters, so nothing runs off the image."""
    def fits(t: str) -> bool:
        return draw.textbbox((0, 0), t, font=font)[2] <= width

    lines: List[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while not fits(word) and len(word) > 1:
            k = max(1, max(i for i in range(1, len(word) + 1) if fits(word[:i]) or i == 1))
            lines.append(word[:k])
            word = word[k:]
        lines.append(word)
    return lines


def _line_height(size: int) -> int:
    return size + max(2, size // 3)


def add_legend(img: Image.Image, probability: Optional[float] = None, threshold: Optional[float] = None,
               boxes: bool = False, absolute: bool = False, banner: Optional[str] = None,
               footer: Optional[str] = None) -> Image.Image:
    """The image with a colour bar at its right (0 to 1 when the map is `absolute`, P(fracture) per
    place; else 0 to the map's peak), a caption below it when there is anything to say (probability
    against the threshold, what the boxes are, then `footer`: the disclaimer), and `banner` on a
    warning strip above it (a demonstration model): an overlay file that travels alone still says
    what it is. Every text wraps to the overlay's width, however narrow the image."""
    top_label = "1" if absolute else "peak"
    w, h = img.size
    fs = max(9, min(22, round(max(w, h) / 48)))
    font = _font(fs)
    measure = ImageDraw.Draw(img)
    label_w = max(measure.textbbox((0, 0), t, font=font)[2] for t in (top_label, "0"))
    pad = max(3, fs // 4)
    bar_w = max(8, fs // 2 + 4)
    panel_w = bar_w + label_w + 3 * pad
    room = w + panel_w - 2 * pad
    lines = caption_lines(probability, threshold, boxes)
    if lines and measure.textbbox((0, 0), "   ".join(lines), font=font)[2] <= room:
        lines = ["   ".join(lines)]
    cap = [t for line in lines for t in _wrap(measure, line, font, room)]
    small_size = max(8, fs - 2)  # the footer: quieter than the caption
    small = _font(small_size)
    foot = _wrap(measure, footer, small, room) if footer else []
    ban = _wrap(measure, banner, font, room) if banner else []
    line_h, foot_h = _line_height(fs), _line_height(small_size)
    cap_h = (len(cap) * line_h + len(foot) * foot_h + 2 * pad) if cap or foot else 0
    ban_h = len(ban) * line_h + 2 * pad if ban else 0
    out = Image.new("RGB", (w + panel_w, ban_h + h + cap_h), _PANEL)
    out.paste(img, (0, ban_h))
    draw = ImageDraw.Draw(out)
    if ban:
        draw.rectangle([0, 0, w + panel_w - 1, ban_h - 1], fill=BANNER_COLOUR)
        for k, t in enumerate(ban):
            _text_mid_left(draw, (pad, pad + k * line_h + line_h // 2), t, font, fill=BANNER_TEXT)
    top, bottom = ban_h + pad + fs // 2, ban_h + h - pad - fs // 2
    if bottom - top >= 8:
        levels = np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
        out.paste(Image.fromarray(colormap(levels)), (w + pad, top))
        draw.rectangle([w + pad - 1, top - 1, w + pad + bar_w, bottom], outline=_TEXT, width=1)
        x_text = w + 2 * pad + bar_w
        _text_mid_left(draw, (x_text, top), top_label, font)
        _text_mid_left(draw, (x_text, bottom - 1), "0", font)
    y = ban_h + h + pad
    for t in cap:
        _text_mid_left(draw, (pad, y + line_h // 2), t, font)
        y += line_h
    for t in foot:
        _text_mid_left(draw, (pad, y + foot_h // 2), t, small, fill=_DIM)
        y += foot_h
    return out


def save_overlay(path: Union[str, Path], gray: np.ndarray, heat: np.ndarray, alpha: float = ALPHA,
                 max_side: Optional[int] = None, boxes: Optional[Sequence[Tuple[float, float, float, float]]] = None,
                 probability: Optional[float] = None, threshold: Optional[float] = None,
                 legend: bool = True, absolute: bool = False, banner: Optional[str] = None,
                 footer: Optional[str] = None) -> Path:
    """Write the overlay (JPEG or PNG by the path's suffix), shrunk first to `max_side`: it is drawn
    at the size it will be looked at, never at the radiograph's full size. Boxes (relative to the
    image) are drawn when given; `legend` adds the colour bar and the caption (add_legend), whose
    scale is 0 to 1 for an `absolute` map (a fracture map) and 0 to the peak otherwise, and the
    `banner` (above) and `footer` (below) lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g[:, :, 0]
    if max_side and max(g.shape) > max_side:
        scale = max_side / max(g.shape)
        size = (max(1, round(g.shape[1] * scale)), max(1, round(g.shape[0] * scale)))
        g = np.asarray(Image.fromarray(np.ascontiguousarray(g)).resize(size, Image.Resampling.BOX), np.float32)
    img = blend_image(g, heat, alpha)
    if boxes:
        draw_boxes(img, boxes)
    if legend:
        img = add_legend(img, probability, threshold, bool(boxes), absolute, banner, footer)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_image(img, path, "JPEG", quality=90)
    else:
        save_image(img, path, "PNG", compress_level=1)  # zlib's fastest level: 3x quicker, files ~20% larger
    return path


def save_image(img: Image.Image, path: Union[str, Path], fmt: str, **options) -> Path:
    """Write `img` to a new file beside `path`, then rename it over `path`: a link someone left at
    that name is replaced, never followed (an output folder may be shared, e.g. under /tmp), and
    a reader never sees half an image. Permissions follow the umask, as a plain save's would."""
    import os
    import secrets

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format=fmt, **options)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
