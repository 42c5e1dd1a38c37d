"""The out-of-scope gate: "outside what this model reads" instead of a guess.

A screening model answers whatever it is given. Shown a chest film, a CT printout, a text page or
a phone screen, the fracture map finds no fracture there and says "no fracture found": false
reassurance about an image it was never trained to read. The gate refuses such inputs before the
answer is shown, with its own decision (labels.OUT_OF_SCOPE) and a reason code:

- `colour`: the file is a colour picture: more than a set fraction of its pixels lie far from the
  image's own median colour in the opponent channels (rg = R - G, yb = (R + G) / 2 - B).
  Radiographs are gray; a colour photo, screenshot or Doppler image is not one. Measured against
  the median, a tinted scan or a JPEG's chroma noise stays gray, and a red annotation arrow is too
  few pixels to count. Checked on the decoded file before the model runs (the film path's
  flattened film is gray by construction).
- `unfamiliar`: the model's own pooled features (the global average of a few of its layers, from
  edges to the last features: the manifest's scope.features.layers; square roots, which makes them nearer Gaussian) lie far from
  every group of training radiographs. Each group (real fractures, phantom fractures, intact
  phantoms, ...) has its own mean and covariance (Lee et al. 2018, "A simple unified framework for
  detecting out-of-distribution samples", with per-group covariances) and its own distance, the
  one that keeps 99% of that group's validation radiographs and of its training radiographs, each
  of those measured by the gate refitted without it (five folds by radiograph: a distance is
  smaller on the images it was fitted on, and 45 validation radiographs alone put the tail at
  their largest, which kept 94% of real training radiographs scored so, 92% with the direction
  below); an input is refused when it is
  beyond that distance of every group (score = min over groups of distance / group threshold,
  refused above 1). Export fits means and covariances on the training split, stores them in the
  bundle (a float32 file under the manifest's checksums, so the digest and signature cover them)
  and chooses the thresholds per artifact, through this runtime; docs/results.md says how the
  method was chosen and what it refuses.

A photographed film, flattened, lies farther from the training files than a file does (the
camera's curve, light falloff, resampling), so file groups alone would refuse good films. Bundles
made since the film gate also hold *film groups* (the manifest's `film_groups`): the same
training radiographs photographed by the simulator and flattened by the device's own film path,
each with its own threshold from photographed validation radiographs. A file is measured against
the file groups only; a flattened film against every group, and the gate is enforced on films
only when the bundle has film groups (an older bundle records its verdict, `enforced: false`).

A distance says "unlike the training radiographs", and it has to be wide enough for real
radiographs from other systems, which leaves room for radiograph-like anatomy it never saw (a
chest or skull film lay within it 10-17% of the time). Bundles made since format version 5 also
hold an *outlier direction*: a logistic regression on the same features, fitted at export with
the training radiographs (and copies processed as other X-ray systems would) on one side and a
generated set of out-of-scope kinds on the other (outlier exposure, Hendrycks et al. 2019), with
one threshold for files and one for flattened films, each keeping 99% of every source's validation
images and training images (each scored by the direction refitted without its fold). An input is refused when it lies beyond every group *or* past the
direction's threshold; the score is the larger of the two ratios (the direction's:
e^(logit - threshold), the odds of "outside" over their odds at the threshold, bounded at e^50),
so "above 1, refused" holds for both. (A ratio of probabilities would flatten out near 1 for a
high threshold and stop refusing.) docs/results.md says what each half refuses, and how it does
on kinds left out of its fit.

The distance is computed in float64 from the float32 arrays, here and in the web app, so both
runtimes refuse the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

COLOUR = "colour"
UNFAMILIAR = "unfamiliar"
REASONS = {
    COLOUR: "a colour picture, not a radiograph",
    UNFAMILIAR: "not like the radiographs this model was trained on (limb radiographs: hands, wrists, forearms, "
                "elbows, legs, hips, shoulders)",
}
# A pixel is coloured when its opponent colour lies more than CHROMA (of 255) from the image's
# median; an image is a colour picture when more than COLOUR_LIMIT of its pixels are. Chosen on
# real radiographs (the most coloured of 297, a red arrow or a MedPix mark: 1.4%) and generated
# colour photos and screenshots of a tuning seed (docs/results.md, "Out of scope").
CHROMA = 40.0
COLOUR_LIMIT = 0.05
SCOPE_FILE = "scope.f32"
RATIO_LOG_BOUND = 50.0  # the direction's ratio e^(logit - threshold) stays within e^(+-50): finite in a record
FILM_PREFIX = "film/"  # a film group's name: FILM_PREFIX + the name of the file group it photographs


def photographed_group(name: str) -> Optional[str]:
    """The file group a film group photographs; None for a file group."""
    return name[len(FILM_PREFIX):] if name.startswith(FILM_PREFIX) else None


def colour_fraction(rgb: np.ndarray) -> float:
    """The fraction of an (h, w, 3) image's pixels (0..255) whose opponent colour lies more than
    CHROMA from the image's median opponent colour."""
    a = np.asarray(rgb, dtype=np.float32)[..., :3].reshape(-1, 3)
    if not a.size:
        return 0.0
    rg = a[:, 0] - a[:, 1]
    yb = 0.5 * (a[:, 0] + a[:, 1]) - a[:, 2]
    far = (rg - np.median(rg)) ** 2 + (yb - np.median(yb)) ** 2 > CHROMA * CHROMA
    return float(np.count_nonzero(far)) / float(far.size)


def features(pooled: np.ndarray) -> np.ndarray:
    """The pooled output as the gate measures it: square roots (ReLU averages are >= 0; an int8
    output may round a hair below)."""
    return np.sqrt(np.maximum(np.asarray(pooled, dtype=np.float64).reshape(-1), 0.0))


@dataclass(frozen=True)
class ScopeGate:
    """Per group of training radiographs: the mean (G, D) and precision (G, D, D) of the gate's
    features, and (for one artifact) the distance that keeps 99% of its validation images and of
    its training images scored out of fold; and,
    where the bundle has one, the outlier direction (D + 1: weights, then the bias) and its logit
    thresholds for files and films."""
    groups: Tuple[str, ...]
    means: np.ndarray
    precisions: np.ndarray
    thresholds: Optional[np.ndarray]  # (G,); None while export is still choosing them: nothing refused
    colour_limit: float = COLOUR_LIMIT
    film_groups: Tuple[str, ...] = ()  # groups of photographed films: measured on the film path only
    outlier: Optional[np.ndarray] = None  # (D + 1,)
    outlier_thresholds: Optional[Tuple[float, float]] = None  # (file, film) logits; None: the direction refuses nothing

    @property
    def covers_film(self) -> bool:
        """Whether the gate was fitted on photographed films, hence may refuse them."""
        return bool(self.film_groups)

    def applies(self, film: bool = False) -> np.ndarray:
        """(G,) which groups an input is measured against: files, the file groups; films, all."""
        return np.array([film or g not in self.film_groups for g in self.groups], bool)

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """(G,) Mahalanobis distances from the pooled features to each group."""
        diff = features(pooled)[None, :] - self.means
        d2 = np.einsum("gi,gij,gj->g", diff, self.precisions, diff)
        return np.sqrt(np.maximum(d2, 0.0))

    def outlier_logit(self, pooled: np.ndarray) -> Optional[float]:
        """The logit of P(outside) along the outlier direction, or None for a gate without one."""
        if self.outlier is None:
            return None
        return float(features(pooled) @ self.outlier[:-1] + self.outlier[-1])

    def ratios(self, pooled: np.ndarray, film: bool = False) -> Tuple[float, Optional[float]]:
        """(min over the groups that apply of distance / that group's threshold: above 1, outside
        every group; e^(logit - the direction's threshold), bounded to [e^-50, e^50]: above 1, past
        it, or None without a direction or its thresholds)."""
        d = float(np.min((self.distances(pooled) / self.thresholds)[self.applies(film)]))
        z = self.outlier_logit(pooled)
        if z is None or self.outlier_thresholds is None:
            return d, None
        return d, float(np.exp(np.clip(z - self.outlier_thresholds[1 if film else 0], -RATIO_LOG_BOUND,
                                       RATIO_LOG_BOUND)))  # NaN stays NaN

    def score(self, pooled: np.ndarray, film: bool = False) -> float:
        """The larger of the two ratios; above 1: refused."""
        d, o = self.ratios(pooled, film)
        return d if o is None else float(np.maximum(d, o))  # NaN stays NaN

    def check(self, pooled: Optional[np.ndarray], colour: Optional[float], film: bool = False) -> Dict:
        """The record's `scope`: {"in_scope", "score"?, "outlier_logit"?, "colour"?, "code"?,
        "reason"?}; `film`: a flattened film photo."""
        out: Dict = {"in_scope": True}
        if colour is not None:
            refused = colour_refusal(colour, self.colour_limit)
            if refused:
                return refused
            out["colour"] = round(float(colour), 4)
        if pooled is not None and self.thresholds is not None:
            out["score"] = round(self.score(pooled, film), 4)
            z = self.outlier_logit(pooled)
            if z is not None:  # the log-odds of "outside" along the direction: its threshold is on this scale
                out["outlier_logit"] = round(z, 4)
            if not out["score"] <= 1.0:  # NaN too: a score that cannot be computed is not "in scope"
                return {**out, "in_scope": False, "code": UNFAMILIAR, "reason": REASONS[UNFAMILIAR]}
        return out


def colour_refusal(colour: Optional[float], limit: float = COLOUR_LIMIT) -> Optional[Dict]:
    """The gate's colour half alone, before the model runs: a refusal, or None."""
    if colour is not None and colour > limit:
        return {"in_scope": False, "code": COLOUR, "reason": REASONS[COLOUR], "colour": round(float(colour), 4)}
    return None


def load_gate(bundle, artifact: str) -> Optional[ScopeGate]:
    """The bundle's gate for one artifact, or None for a bundle made without one."""
    from .bundle import BundleError

    info = bundle.info.scope
    if info is None:
        return None
    arrays = {k: a.astype(np.float64) for k, a in bundle.read_arrays(info.file, info.arrays, "out-of-scope").items()}
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise BundleError(bundle.root / info.file, f"array {name!r} holds non-finite values")
    t = info.thresholds.get(artifact)
    ot = info.outlier_thresholds.get(artifact)
    return ScopeGate(info.groups, arrays["means"], arrays["precisions"],
                     None if t is None else np.asarray(t, np.float64), info.colour_limit, info.film_groups,
                     arrays.get("outlier"), None if ot is None else (float(ot[0]), float(ot[1])))


