"""The bundle's manifest as typed, validated data, and the digest that seals it.

What the runtime acts on (threshold, input size, preprocessing, which file is which model, where
the Grad-CAM arrays lie in their file, every file's checksum) is parsed into frozen dataclasses and
checked for type and range at load, so a malformed manifest is refused with one line naming the
field, never a traceback at the first image. Everything else in manifest.json (provenance, check
metrics, versions) stays as export wrote it and is carried through `to_dict`.

`manifest_sha256` is the sha256 of the manifest's canonical JSON (sorted keys, no whitespace)
without that field. It catches a damaged or hand-edited manifest (a threshold moved from 0.544 to
0.944 changes every decision); it does not stop deliberate tampering, which anyone can re-digest:
that is what a bundle's signature is for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .fracture_map import MapPooling
from .labels import POSITIVE
from .preprocess import PreprocessSpec
from .scope import FILM_PREFIX, photographed_group

FORMAT = "fracture-edge-bundle"
# 2: manifest_sha256 required; 3: a fracture map may replace the prob output; 4: a calibrated
# threshold and an out-of-scope gate (a runtime that ignored them would compare an uncalibrated
# probability with a calibrated threshold, and answer what it should refuse: so older ones refuse 4);
# 5: the out-of-scope gate's outlier direction (an older runtime would let through what it refuses).
FORMAT_VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)  # each is the next without what that version added
DIGEST_KEY = "manifest_sha256"
STATUSES = ("pending", "accepted", "rejected")
ARTIFACT_FORMATS = ("tflite", "onnx")
# prob: P(fractured); map: per-cell fracture logits (edge_runtime/fracture_map.py); features and
# hidden: what the numpy Grad-CAM needs; pooled: the features the out-of-scope gate measures (scope.py).
OUTPUT_ROLES = ("prob", "map", "features", "hidden", "pooled")
CALIBRATIONS = ("platt",)
PRECISIONS = ("int8", "float32", "float16")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """The manifest is not one the runtime may act on; the message names the field."""


def canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"manifest is not plain JSON ({type(exc).__name__}: {str(exc)[:80]})") from None


def digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(manifest)).hexdigest()


def seal(manifest: Mapping[str, Any]) -> Dict[str, Any]:
    """The manifest with its digest set (export calls this last, after every other field)."""
    return {**{k: v for k, v in manifest.items() if k != DIGEST_KEY}, DIGEST_KEY: digest(manifest)}


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ManifestError(f"{where}: {what}")


def _obj(d: Any, where: str) -> Mapping[str, Any]:
    _need(isinstance(d, dict), where, f"expected an object, got {type(d).__name__}")
    return d


def _str(d: Mapping, key: str, where: str, choices: Optional[Tuple[str, ...]] = None) -> str:
    v = d.get(key)
    _need(isinstance(v, str) and v != "", f"{where}.{key}", f"expected a non-empty string, got {v!r:.40}")
    if choices is not None:
        _need(v in choices, f"{where}.{key}", f"{v!r:.40} is not one of {', '.join(choices)}")
    return v


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, where,
          f"expected an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _shape(v: Any, where: str, allow_batch: bool = False) -> Tuple[int, ...]:
    _need(isinstance(v, list) and 1 <= len(v) <= 6, where, f"expected a shape list, got {v!r:.40}")
    dims = []
    for j, n in enumerate(v):
        if allow_batch and j == 0 and (n is None or n == -1):
            dims.append(-1)
            continue
        dims.append(_int(n, f"{where}[{j}]", 1, 1 << 20))
    return tuple(dims)


def _file_name(v: Any, where: str) -> str:
    _need(isinstance(v, str) and bool(_PLAIN_NAME.match(v)), where,
          f"expected a plain file name inside the bundle, got {v!r:.60}")
    return v


def _number(v: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi, where,
          f"expected a finite number in [{lo}, {hi}], got {v!r:.40}")
    return float(v)


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the model's logit, fitted on validation at export: P = sigmoid(a * logit + b).
    The threshold and the probability people see are both calibrated (a > 0 keeps the order)."""
    a: float
    b: float

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        d = _obj(d, "decision.calibration")
        _str(d, "method", "decision.calibration", CALIBRATIONS)
        return cls(_number(d.get("a"), "decision.calibration.a", 1e-3, 1e3),
                   _number(d.get("b"), "decision.calibration.b", -1e3, 1e3))

    def apply(self, p: float) -> float:
        """The calibrated probability of a model probability (computed on its logit)."""
        p = min(max(float(p), 1e-12), 1.0 - 1e-12)
        z = self.a * math.log(p / (1.0 - p)) + self.b
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class Decision:
    threshold: float
    rule: str = ""
    positive_class: str = POSITIVE  # what p >= threshold means; read, and checked against this runtime's labels
    calibration: Optional[Calibration] = None  # the threshold is then on the calibrated probability

    @classmethod
    def from_dict(cls, d: Any) -> "Decision":
        d = _obj(d, "decision")
        t = d.get("threshold")
        _need(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 < t < 1.0,
              "decision.threshold", f"expected a finite number strictly between 0 and 1, got {t!r:.40}")
        rule = d.get("rule", "")
        _need(isinstance(rule, str), "decision.rule", "expected a string")
        positive = _str(d, "positive_class", "decision") if "positive_class" in d else POSITIVE
        _need(positive == POSITIVE, "decision.positive_class",
              f"this runtime's models answer P({POSITIVE}), the manifest says P({positive[:40]!r})")
        cal = Calibration.from_dict(d["calibration"]) if d.get("calibration") is not None else None
        return cls(float(t), rule, positive, cal)

    def to_dict(self) -> Dict[str, Any]:
        return {"threshold": self.threshold, "rule": self.rule, "positive_class": self.positive_class}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_shape: Tuple[int, ...]  # (batch or -1, size, size, 1)
    outputs: Dict[str, Tuple[int, ...]]  # role -> shape (batch first)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelInfo":
        d = _obj(d, "model")
        name = _str(d, "name", "model")
        inp = _obj(d.get("input"), "model.input")
        shape = _shape(inp.get("shape"), "model.input.shape", allow_batch=True)
        _need(len(shape) == 4 and shape[1] == shape[2] and shape[3] == 1, "model.input.shape",
              f"expected [batch, size, size, 1], got {list(shape)}")
        outs = _obj(d.get("outputs"), "model.outputs")
        _need("prob" in outs or "map" in outs, "model.outputs", "no 'prob' or 'map' output")
        outputs = {}
        for role, o in outs.items():
            _need(role in OUTPUT_ROLES, f"model.outputs.{role}", "unknown output role")
            outputs[role] = _shape(_obj(o, f"model.outputs.{role}").get("shape"), f"model.outputs.{role}.shape",
                                   allow_batch=True)
        return cls(name, shape, outputs)

    @property
    def input_size(self) -> int:
        return self.input_shape[1]


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    file: str
    format: str
    precision: str
    bytes: Optional[int]

    @classmethod
    def from_dict(cls, key: str, d: Any) -> "ArtifactInfo":
        where = f"artifacts.{key}"
        d = _obj(d, where)
        size = d.get("bytes")
        if size is not None:
            _int(size, f"{where}.bytes", 0, 1 << 40)
        return cls(key, _file_name(d.get("file"), f"{where}.file"), _str(d, "format", where, ARTIFACT_FORMATS),
                   _str(d, "precision", where, PRECISIONS), size)


@dataclass(frozen=True)
class GradcamInfo:
    file: str
    layer: str
    feature_shape: Tuple[int, ...]
    arrays: Dict[str, Tuple[int, Tuple[int, ...]]]  # name -> (offset in float32 units, shape)

    @classmethod
    def from_dict(cls, d: Any) -> "GradcamInfo":
        d = _obj(d, "gradcam")
        feature_shape = _shape(d.get("feature_shape"), "gradcam.feature_shape")
        _need(len(feature_shape) == 3, "gradcam.feature_shape", "expected [h, w, channels]")
        arrays = {}
        for name, a in _obj(d.get("arrays"), "gradcam.arrays").items():
            _need(name in ("alpha", "mix", "w_out"), f"gradcam.arrays.{name}", "unknown array")
            a = _obj(a, f"gradcam.arrays.{name}")
            arrays[name] = (_int(a.get("offset"), f"gradcam.arrays.{name}.offset", 0, 1 << 30),
                            _shape(a.get("shape"), f"gradcam.arrays.{name}.shape"))
        _need("alpha" in arrays or {"mix", "w_out"} <= set(arrays), "gradcam.arrays",
              "needs 'alpha', or 'mix' and 'w_out'")
        channels = feature_shape[2]
        if "alpha" in arrays:
            _need(arrays["alpha"][1] == (channels,), "gradcam.arrays.alpha.shape", f"expected [{channels}]")
        else:
            mix, w_out = arrays["mix"][1], arrays["w_out"][1]
            _need(len(mix) == 2 and mix[0] == channels, "gradcam.arrays.mix.shape", f"expected [{channels}, hidden]")
            _need(w_out == (mix[1],), "gradcam.arrays.w_out.shape", f"expected [{mix[1]}]")
        return cls(_file_name(d.get("file"), "gradcam.file"), _str(d, "layer", "gradcam"), feature_shape, arrays)


@dataclass(frozen=True)
class MapInfo:
    """The `fracture_map` section: the model's `map` output is the heatmap, and the image's logit
    is its pooling (edge_runtime/fracture_map.py)."""
    grid: Tuple[int, int]  # (h, w) of the map
    pooling: MapPooling

    @classmethod
    def from_dict(cls, d: Any, model: "ModelInfo") -> "MapInfo":
        d = _obj(d, "fracture_map")
        shape = model.outputs.get("map")
        _need(shape is not None, "fracture_map", "the model has no 'map' output")
        _need(len(shape) in (3, 4) and (len(shape) == 3 or shape[3] == 1), "model.outputs.map.shape",
              f"expected [batch, h, w] or [batch, h, w, 1], got {list(shape)}")
        _need(d.get("output", "map") == "map", "fracture_map.output", "must be 'map'")
        p = _obj(d.get("pooling"), "fracture_map.pooling")
        try:
            pooling = MapPooling.from_dict(p)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"fracture_map.pooling: {exc}") from None
        return cls((shape[1], shape[2]), pooling)


@dataclass(frozen=True)
class ScopeInfo:
    """The `scope` section: the out-of-scope gate's arrays (a float32 file), its groups, and per
    artifact one threshold per group (edge_runtime/scope.py)."""
    file: str
    groups: Tuple[str, ...]
    arrays: Dict[str, Tuple[int, Tuple[int, ...]]]  # means (G, D), precisions (G, D, D)
    thresholds: Dict[str, Tuple[float, ...]]
    colour_limit: float
    film_groups: Tuple[str, ...] = ()  # fitted on photographed films: measured on the film path only
    outlier_thresholds: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # artifact -> (file, film) logits

    @classmethod
    def from_dict(cls, d: Any, model: "ModelInfo", artifacts: Dict[str, "ArtifactInfo"], status: str) -> "ScopeInfo":
        d = _obj(d, "scope")
        _str(d, "method", "scope", ("mahalanobis",))
        pooled = model.outputs.get("pooled")
        _need(pooled is not None and len(pooled) == 2, "scope", "the model has no 'pooled' output of shape [batch, D]")
        dim = pooled[1]
        groups = d.get("groups")
        _need(isinstance(groups, list) and 1 <= len(groups) <= 64 and all(isinstance(g, str) for g in groups),
              "scope.groups", "expected a list of group names")
        g = len(groups)
        _need(len(set(groups)) == g, "scope.groups", "group names repeat")
        film_groups = d.get("film_groups", [])
        _need(isinstance(film_groups, list) and all(isinstance(f, str) and f in groups for f in film_groups)
              and len(set(film_groups)) == len(film_groups), "scope.film_groups", "expected distinct names from scope.groups")
        # a film group photographs a file group of this gate, so it cannot take a file group's place
        _need(all(photographed_group(f) in groups for f in film_groups), "scope.film_groups",
              f"each must be {FILM_PREFIX!r} + a file group's name")
        arrays = {}
        index = _obj(d.get("arrays"), "scope.arrays")
        for name in ("means", "precisions") + (("outlier",) if "outlier" in index else ()):
            a = _obj(index.get(name), f"scope.arrays.{name}")
            arrays[name] = (_int(a.get("offset"), f"scope.arrays.{name}.offset", 0, 1 << 30),
                            _shape(a.get("shape"), f"scope.arrays.{name}.shape"))
        _need(arrays["means"][1] == (g, dim), "scope.arrays.means.shape", f"expected [{g}, {dim}]")
        _need(arrays["precisions"][1] == (g, dim, dim), "scope.arrays.precisions.shape", f"expected [{g}, {dim}, {dim}]")
        _need("outlier" not in arrays or arrays["outlier"][1] == (dim + 1,), "scope.arrays.outlier.shape",
              f"expected [{dim + 1}] (the weights, then the bias)")
        # present means checked, as for the gate itself: a section without its array, or the reverse, is refused
        _need(("outlier" in arrays) == ("outlier" in d), "scope.outlier",
              "the outlier direction needs both its array and its section")
        outlier = _obj(d.get("outlier", {}), "scope.outlier")
        outlier_thresholds = {}
        for key, t in _obj(outlier.get("thresholds", {}), "scope.outlier.thresholds").items():
            where = f"scope.outlier.thresholds.{key}"
            _need(key in artifacts, where, "not an artifact of this bundle")
            t = _obj(t, where)
            outlier_thresholds[key] = (_number(t.get("file"), f"{where}.file", -50.0, 50.0),
                                       _number(t.get("film"), f"{where}.film", -50.0, 50.0))
        thresholds = {}
        for key, t in _obj(d.get("thresholds", {}), "scope.thresholds").items():
            where = f"scope.thresholds.{key}"
            _need(key in artifacts, where, "not an artifact of this bundle")
            _need(isinstance(t, list) and len(t) == g, where, f"expected {g} numbers, one per group")
            thresholds[key] = tuple(_number(v, where, 1e-9) for v in t)
        if status == "accepted":  # every artifact a device may run refuses at its own distances
            missing = sorted(set(artifacts) - set(thresholds))
            _need(not missing, "scope.thresholds", f"no thresholds for {', '.join(missing)}")
            missing = sorted(set(artifacts) - set(outlier_thresholds)) if outlier else []
            _need(not missing, "scope.outlier.thresholds", f"no thresholds for {', '.join(missing)}")
        return cls(_file_name(d.get("file"), "scope.file"), tuple(groups), arrays, thresholds,
                   _number(d.get("colour_limit"), "scope.colour_limit", 0.0, 1.0), tuple(film_groups),
                   outlier_thresholds)


@dataclass(frozen=True)
class Manifest:
    status: str
    demonstration_only: bool
    model: ModelInfo
    preprocess: PreprocessSpec
    decision: Decision
    artifacts: Dict[str, ArtifactInfo]
    default_artifacts: Dict[str, str]
    gradcam: Optional[GradcamInfo]
    files: Dict[str, str]
    raw: Dict[str, Any] = field(repr=False, compare=False)
    fracture_map: Optional[MapInfo] = None
    scope: Optional[ScopeInfo] = None

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        d = _obj(d, "manifest")
        _need(d.get("format") == FORMAT, "format", f"not a {FORMAT} manifest")
        version = d.get("format_version")
        _need(version in READABLE_VERSIONS, "format_version",
              f"format version {version!r:.20}, this runtime reads versions "
              f"{', '.join(map(str, READABLE_VERSIONS))}; re-export the bundle or update the runtime")
        expected = d.get(DIGEST_KEY)
        _need(isinstance(expected, str) and bool(_HEX64.match(expected)), DIGEST_KEY, "missing or malformed")
        _need(digest(d) == expected, DIGEST_KEY,
              "does not match the manifest's content: the manifest was edited or damaged; reinstall the bundle")
        status = _str(d, "status", "manifest", STATUSES)
        demo = d.get("demonstration_only", True)
        _need(isinstance(demo, bool), "demonstration_only", "expected true or false")
        model = ModelInfo.from_dict(d.get("model"))
        try:
            spec = PreprocessSpec.from_dict(_obj(d.get("preprocess"), "preprocess"))
        except (TypeError, ValueError, KeyError) as exc:
            raise ManifestError(f"preprocess: {exc}") from None
        _need(spec.size == model.input_size, "preprocess.size",
              f"{spec.size} px, but the model takes {model.input_size} px")
        decision = Decision.from_dict(d.get("decision"))
        files = _obj(d.get("files"), "files")
        for name, sha in files.items():
            _file_name(name, f"files[{name!r:.40}]")
            _need(isinstance(sha, str) and bool(_HEX64.match(sha)), f"files.{name}", "expected a sha256 hex digest")
        arts = _obj(d.get("artifacts"), "artifacts")
        _need(len(arts) > 0, "artifacts", "no model file")
        artifacts = {k: ArtifactInfo.from_dict(k, a) for k, a in arts.items()}
        for a in artifacts.values():
            _need(a.file in files, f"artifacts.{a.key}.file", f"{a.file!r} has no checksum in files")
        defaults = _obj(d.get("default_artifacts", {}), "default_artifacts")
        for fmt, key in defaults.items():
            _need(fmt in ARTIFACT_FORMATS and isinstance(key, str) and key in artifacts
                  and artifacts[key].format == fmt, f"default_artifacts.{fmt}", f"{key!r:.40} is not a {fmt} artifact")
        gradcam = GradcamInfo.from_dict(d["gradcam"]) if d.get("gradcam") else None
        if gradcam is not None:
            _need(gradcam.file in files, "gradcam.file", f"{gradcam.file!r} has no checksum in files")
            feats = model.outputs.get("features")
            _need(feats is not None and tuple(feats[1:]) == gradcam.feature_shape, "gradcam.feature_shape",
                  "does not match the model's features output")
        fmap = MapInfo.from_dict(d["fracture_map"], model) if d.get("fracture_map") else None
        _need(fmap is not None or "prob" in model.outputs, "fracture_map",
              "the model has no 'prob' output, so the manifest must say how its map is pooled")
        _need(fmap is None or version >= 3, "format_version", "a fracture map needs format version 3")
        # present means checked: an empty or malformed section is refused, never read as "no gate"
        scope = ScopeInfo.from_dict(d["scope"], model, artifacts, status) if d.get("scope") is not None else None
        _need((scope is None and decision.calibration is None) or version >= 4, "format_version",
              "a calibrated threshold or an out-of-scope gate needs format version 4")
        _need(scope is None or "outlier" not in scope.arrays or version >= 5, "format_version",
              "the out-of-scope gate's outlier direction needs format version 5")
        if scope is not None:
            _need(scope.file in files, "scope.file", f"{scope.file!r} has no checksum in files")
        if d.get("self_test") is not None:
            st = _obj(d["self_test"], "self_test")
            n = _int(st.get("n"), "self_test.n", 1, 64)
            for key, probs in _obj(st.get("probabilities"), "self_test.probabilities").items():
                where = f"self_test.probabilities.{key}"
                _need(key in artifacts, where, "not an artifact of this bundle")
                _need(isinstance(probs, list) and len(probs) == n and all(
                    isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0 for p in probs),
                    where, f"expected {n} probabilities in [0, 1]")
            for key, zs in _obj(st.get("scope_outlier_logits", {}), "self_test.scope_outlier_logits").items():
                where = f"self_test.scope_outlier_logits.{key}"  # the logits along the gate's outlier direction
                _need(key in artifacts, where, "not an artifact of this bundle")
                _need(isinstance(zs, list) and len(zs) == n and all(
                    isinstance(z, (int, float)) and not isinstance(z, bool) and math.isfinite(z) for z in zs),
                    where, f"expected {n} finite logits")
            for section in ("scope_scores", "scope_scores_film"):  # the gate's scores: files, and films
                for key, scores in _obj(st.get(section, {}), f"self_test.{section}").items():
                    where = f"self_test.{section}.{key}"
                    _need(key in artifacts, where, "not an artifact of this bundle")
                    _need(isinstance(scores, list) and len(scores) == n and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < float("inf")
                        for v in scores), where, f"expected {n} finite scores >= 0")
        return cls(status, demo, model, spec, decision, artifacts, dict(defaults), gradcam, dict(files), dict(d), fmap,
                   scope)

    def to_dict(self) -> Dict[str, Any]:
        """The manifest as JSON data: the raw document, with the typed sections as parsed."""
        out = dict(self.raw)
        out.update(status=self.status, demonstration_only=self.demonstration_only,
                   preprocess={**self.raw.get("preprocess", {}), **self.preprocess.to_dict()},
                   files=dict(self.files), default_artifacts=dict(self.default_artifacts))
        out["decision"] = {**self.raw.get("decision", {}), **self.decision.to_dict()}
        return out
