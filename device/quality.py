"""The quality gate: is this photo of a film good enough to read, and if not, what should the
technician do? A refused photo gets "retake", its reasons and no probability.

Each reason has a stable code (tests, the film-agreement table and the web app use it) and a
sentence a technician can act on. Thresholds were set on simulated photos of phantom
radiographs (seeds used for tuning only; device/agreement.py and the tests use other seeds and
real radiographs), where each fault sits far from clean photos; the metric each one reads is in
`metrics` of every record, so a clinic's own photos can be checked against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from edge_runtime.preprocess import filled_side, length_along

from .film import Flattened
from .imageops import box_mean

MIN_FILM_SIDE_PX = 300  # the photo's shorter side at least; and a film's, where no model spec says otherwise
# A film must give the model this many photo pixels per input pixel along the side that fills the
# input: the long side when letterboxed, the short one when stretched. 1.5, because a phone's
# demosaicing and JPEG leave about 0.7 of its pixels' resolution, so 1.5 photo pixels keep about
# one real one per input pixel. For a 256-px letterboxed model: the film's long side >= 384 px, where
# the old fixed rule (short side >= 300) refused narrow forearm films at 2 MP (docs/results.md).
MIN_PX_PER_INPUT_PX = 1.5
MIN_DETAIL = 0.03  # p99 |gradient| over the photo's brightness, see detail(): below it a photo is blank
MAX_SATURATED = 0.5  # a blank photo with more than this share at the sensor's clip level is over-exposed
MIN_LIGHTBOX_LEVEL = 0.3  # bare lightbox, as encoded
# A photo of a screen, told apart where no film was found. A film only dims the light behind it,
# so a lightbox lights the room around it and the photo's edge; a screen glows by itself inside a
# dark housing and room. And a screen shows a picture, where a lightbox without a film found on it
# is a flat lit panel. So a screen: the photo's edge (its outer SCREEN_EDGE, at the 90th
# percentile) below SCREEN_SURROUND of the brightest level, and less than SCREEN_LIT_PANEL of the
# photo flat and bright (a SCREEN_WINDOW-px box's mean >= SCREEN_BRIGHT of the brightest level,
# its spread <= SCREEN_FLAT of it). Each limit is the midpoint between device/simulate.py's screen
# photos (tuning seeds: edge <= 0.49, lit panel <= 0.036) and the other photos the finder found no
# film in (edge >= 0.64; a bare lightbox in a dim room: edge 0.30-0.58, lit panel >= 0.28). Measured
# on screens rendered another way (device/screen_photo.py; docs/results.md).
SCREEN_EDGE = 0.04
SCREEN_SURROUND = 0.56
SCREEN_LIT_PANEL = 0.16
SCREEN_WINDOW = 4  # box radius at the finder's working size
SCREEN_BRIGHT = 0.7
SCREEN_FLAT = 0.04
SATURATED_LEVEL = 0.985  # the lightbox at the sensor's limit: its true brightness, hence the film's, is unknown
OVER_LEVEL = 0.95  # or the lightbox at least this bright ...
MAX_CLIPPED_SHARE = 0.01  # ... and more than this share of the film clipped: over-exposed
MAX_GLARE_SHARE = 0.005  # film pixels brighter than the lightbox behind them
# Camera blur, from the film's own border (a sharp step whatever the radiograph shows): its 10-90%
# width as a share of the film's short side. 1.6% is ~2 px at the model's 128 px, the blur of
# 0.8 px (Gaussian) that training's augmentation already shows the model. Simulated photos sit far
# either side (clean <= 0.7%, blurred >= 4%), and soft radiographs do not count against it.
MAX_EDGE_WIDTH = 0.016
MIN_SHARPNESS = 0.25  # fallback when no border step can be measured: detail at the model's scale
GRAY_CHROMA = 1.5  # 8-bit steps of colour spread: a gray image stored as RGB has ~0, every camera photo 3+

TEXT = {
    "photo_too_small": "photo too small ({size}): the film must be at least {min} px across; use the camera's "
                       "full resolution",
    "blank": "blank photo: nothing in the picture (lens covered, lightbox without film, or a plain surface)",
    "washed_out": "over-exposed: the photo is almost all white; lower the exposure or dim the lightbox",
    "radiograph_file": "this image has no colour: it is a radiograph file, not a photo of a film; read it "
                       "with `python -m edge_runtime predict FILE` (the file gives the better answer). If it is "
                       "a photo of a film, take it in colour, not in a black-and-white camera mode",
    "screen": "this looks like a photo of a screen (the picture glows inside a dark surround, with no lit "
              "lightbox around it), or of a film taken too close to show the lightbox. A screen cannot be read "
              "from a photo: its pixel grid, glass and colours change what the model sees; ask for the image as "
              "a file (export it from the viewer or PACS as DICOM, PNG or JPEG) and use `python -m edge_runtime "
              "predict FILE`. If it is a film, hang it on a lit lightbox and step back until the lit lightbox "
              "shows around it",
    "no_film": "no film on a lit lightbox found: hang the film on a lit lightbox and photograph it centred, with "
               "the lightbox visible around it. A photo of a screen cannot be read: export the image from the "
               "viewer as a file and use `python -m edge_runtime predict FILE`",
    "cut_off": "film cut off at the edge of the photo, so part of the anatomy may be missing: step back or "
               "centre the film",
    "off_lightbox": "part of the film hangs past the lightbox's edge, so it is not lit and cannot be read (the "
                    "answer could change with what it holds): move the whole film onto the lit area and photograph "
                    "it again",
    "film_too_small": "film too small in the photo ({px:.0f} px along its {side} side, needs {min}): move closer or "
                      "use a higher resolution",
    "under_exposed": "under-exposed (lightbox at {level:.0%} brightness): turn the lightbox on fully or raise "
                     "the exposure",
    "too_dark": "too dark to find the film (brightest part at {level:.0%}): turn the lightbox on fully or raise "
                "the exposure",
    "over_exposed": "over-exposed (lightbox at {level:.0%}, {clipped:.1%} of the film pure white): lower the "
                    "exposure or dim the lightbox",
    "glare": "glare covers {glare:.1%} of the film: tilt the camera or switch off the room light above it",
    "blur": "too blurred: hold the camera still and let it focus on the film",
    "blank_film": "the film shows nothing to read ({why}): check that this is the right film, and that it is "
                  "on the lightbox the right way round",
}


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


def reason(code: str, **values) -> Reason:
    return Reason(code, TEXT[code].format(**values))


@dataclass
class Quality:
    ok: bool
    reasons: List[Reason] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def codes(self) -> List[str]:
        return [r.code for r in self.reasons]

    def to_dict(self) -> Dict[str, object]:
        return {"ok": self.ok, "reasons": [r.text for r in self.reasons], "codes": self.codes,
                "metrics": {k: round(float(v), 4) for k, v in self.metrics.items()}}


def detail(gray: np.ndarray) -> float:
    """99th percentile of the gradient at a quarter of the working size (where sensor noise has
    averaged out and a film's edges have not) over the photo's brightness (99.5th percentile):
    how much there is to see, exposure aside."""
    h, w = gray.shape
    g = gray[:h - h % 4, :w - w % 4].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    gy, gx = np.gradient(g[1:-1, 1:-1])
    return float(np.percentile(np.hypot(gx, gy), 99) / max(float(np.percentile(gray, 99.5)), 0.1))


def sharpness(pixels: np.ndarray, side: int = 128) -> float:
    """Detail at the model's scale: 99th percentile of |Laplacian| over the 1st-99th percentile
    range, on the film resized to `side` px. Blur that the model cannot see does not count."""
    small = np.asarray(Image.fromarray(np.ascontiguousarray(pixels, np.float32)).resize((side, side), Image.Resampling.BOX),
                       np.float32)
    lo, hi = np.percentile(small, (1, 99))
    lap = 4 * small[1:-1, 1:-1] - small[:-2, 1:-1] - small[2:, 1:-1] - small[1:-1, :-2] - small[1:-1, 2:]
    return float(np.percentile(np.abs(lap), 99) / max(hi - lo, 1e-3))


def film_minimum(size: Optional[int] = None, resize: Optional[str] = None) -> Tuple[str, int]:
    """(which side of the film, its least length in photo pixels): derived from the model's input
    (its size, and whether the film is letterboxed or stretched into it); without one, the short
    side and MIN_FILM_SIDE_PX."""
    if size is None:
        return "short", MIN_FILM_SIDE_PX
    return filled_side(resize), int(math.ceil(MIN_PX_PER_INPUT_PX * size))


def film_side_shown(px: float) -> int:
    """The film's side as the message shows it, rounded half up (the web app rounds the same way)."""
    return int(math.floor(px + 0.5))


def before_finding(original_size, rgb_small: np.ndarray, gray_file: bool) -> Optional[Reason]:
    """Checks that need no film: a blank photo, a radiograph file rather than a photo (`gray_file`:
    stored gray, or RGB with no colour at all), a photo too small to hold a readable film."""
    W, H = original_size
    if min(rgb_small.shape[:2]) < 16:  # a strip: nothing a film could fill
        return reason("photo_too_small", size=f"{W}x{H} px", min=MIN_FILM_SIDE_PX)
    gray = rgb_small @ np.array([0.299, 0.587, 0.114], np.float32)
    if detail(gray) < MIN_DETAIL:
        saturated = float((rgb_small.max(axis=2) >= 0.98).mean())
        return reason("washed_out") if saturated > MAX_SATURATED else reason("blank")
    if gray_file:
        return reason("radiograph_file")
    if min(W, H) < MIN_FILM_SIDE_PX:
        return reason("photo_too_small", size=f"{W}x{H} px", min=MIN_FILM_SIDE_PX)
    return None


def screen_layout(gray: np.ndarray, top: Optional[float] = None) -> Tuple[float, float]:
    """(edge, lit panel) of a photo at the finder's working size (see SCREEN_SURROUND): how bright
    its edge is relative to its brightest level (`top`, its 99.5th percentile, when the caller
    has it), and what share of it is a flat, bright panel."""
    h, w = gray.shape
    top = float(np.percentile(gray, 99.5)) if top is None else top
    b = min(max(2, int(SCREEN_EDGE * min(h, w))), h, w)
    edge = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
    surround = float(np.percentile(edge, 90)) / max(top, 1e-6)
    r = SCREEN_WINDOW
    m = box_mean(box_mean(gray, r, 0), r, 1)
    m2 = box_mean(box_mean(gray * gray, r, 0), r, 1)
    spread = np.sqrt(np.maximum(m2 - m * m, np.float32(0)))
    lit = (m >= np.float32(SCREEN_BRIGHT * top)) & (spread <= np.float32(SCREEN_FLAT * top))
    return surround, float(np.count_nonzero(lit)) / float(lit.size)


def not_found(rgb_small: np.ndarray) -> Reason:
    """No film found: a photo too dark to see one, a photo of a screen, or one without a film on a
    lit lightbox."""
    gray = rgb_small @ np.array([0.299, 0.587, 0.114], np.float32)
    top = float(np.percentile(gray, 99.5))
    if top < MIN_LIGHTBOX_LEVEL:
        return reason("too_dark", level=top)
    surround, lit_panel = screen_layout(gray, top)
    if surround < SCREEN_SURROUND and lit_panel < SCREEN_LIT_PANEL:
        return reason("screen")
    return reason("no_film")


def assess(flat: Flattened, minimum: Optional[Tuple[str, int]] = None, flat_least: Optional[int] = None) -> Quality:
    """The gate on a found, flattened film; `minimum`: film_minimum(...) of the model that will read it;
    `flat_least`: the least pixels the flattened film itself must hold along that side (a file's
    bound, edge_runtime.preprocess.min_filled_side). The film's size is measured in the photo's
    own pixels, but the flattened film is sampled from the photo as decoded, which a large photo
    is reduced for (photo.DECODE_SIDE): a film of 400 px in a 12 MP photo flattens to ~100 px."""
    side, least = minimum or film_minimum()
    m = {"sharpness": sharpness(flat.pixels), "edge_width": flat.edge_width if flat.edge_width is not None else float("nan"),
         "glare_share": flat.glare_share, "lightbox_level": flat.lightbox_level,
         "clipped_share": flat.raw_peak_share, "film_short_side_px": flat.film_short_side_px,
         "film_long_side_px": flat.film_long_side_px,
         "film_share_of_photo": flat.film_share}
    reasons = []
    if flat.cut_off:
        reasons.append(reason("cut_off"))
    if flat.off_lightbox:
        reasons.append(reason("off_lightbox"))
    shown = film_side_shown(flat.film_long_side_px if side == "long" else flat.film_short_side_px)
    if shown < least:  # the number the message shows is the number compared: "300, needs 300" passes
        reasons.append(reason("film_too_small", px=shown, side=side, min=least))
    elif flat_least is not None:
        read = length_along(flat.pixels.shape, side)
        if read < flat_least:  # said in the photo's pixels: the film's length that flattens to enough
            reasons.append(reason("film_too_small", px=shown, side=side,
                                  min=int(math.ceil(shown * flat_least / max(read, 1)))))
    over = flat.lightbox_level >= SATURATED_LEVEL or (flat.lightbox_level >= OVER_LEVEL
                                                      and flat.raw_peak_share > MAX_CLIPPED_SHARE)
    if over:
        reasons.append(reason("over_exposed", level=flat.lightbox_level, clipped=flat.raw_peak_share))
    if flat.lightbox_level < MIN_LIGHTBOX_LEVEL:
        reasons.append(reason("under_exposed", level=flat.lightbox_level))
    if not over and flat.glare_share > MAX_GLARE_SHARE:
        reasons.append(reason("glare", glare=flat.glare_share))
    blurred = flat.edge_width > MAX_EDGE_WIDTH if flat.edge_width is not None else m["sharpness"] < MIN_SHARPNESS
    if blurred and not reasons:
        reasons.append(reason("blur"))
    return Quality(not reasons, reasons, m)
