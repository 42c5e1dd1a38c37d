"""Load and verify a bundle: manifest.json plus the model files export wrote (the DESIGN.md contract).

The runtime trusts nothing it has not checked: the manifest's own digest and typed schema
(edge_runtime/manifest.py), the sha256 of every file it lists, and that export's fidelity check
accepted the bundle. Export imports the constants here, so writer and reader cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .manifest import DIGEST_KEY, FORMAT, FORMAT_VERSION, Manifest, ManifestError, seal  # noqa: F401 (export's)
from .preprocess import PreprocessSpec
from .signature import SIGNATURE, SignatureError, trusted_key_path
from .signature import verify as verify_signature

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 2 ** 20  # export writes ~20 KB; anything this large is not ours
ENV_VAR = "FRACTURE_EDGE_BUNDLE"
# The committed reference bundle, found relative to a source checkout (installs pass --bundle or
# set $FRACTURE_EDGE_BUNDLE; device/install puts it in a fixed place and sets the variable).
REPO_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "reference-bundle"


class BundleError(ValueError):
    """A bundle that must not be used; the message names the file and the reason."""

    def __init__(self, path: Union[str, Path], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Artifact:
    key: str  # e.g. "tflite_int8"
    path: Path
    format: str  # "tflite" | "onnx"
    precision: str  # "int8" | "float32" | "float16"
    info: Dict[str, Any]


@dataclass
class Bundle:
    path: Path
    info: Manifest  # what the runtime acts on, typed and validated
    signed_by: Optional[str] = None  # the trusted key's id, when a key is configured and verified it
    real: Optional[Path] = None  # `path` resolved once at load: files are read from here, so a
    # bundle switched (device update) while this one loads cannot pair one manifest with another's model

    @property
    def root(self) -> Path:
        return self.real or self.path

    @property
    def manifest(self) -> Dict[str, Any]:
        """The manifest as export wrote it (provenance, metrics, and everything not typed)."""
        return self.info.raw

    @property
    def digest(self) -> str:
        """manifest_sha256: what identifies this exact bundle (and what a signature covers)."""
        return self.info.raw[DIGEST_KEY]

    def read_verified(self, name: str) -> bytes:
        """A bundle file's bytes, checked against the manifest as they are read: what is verified
        is exactly what the interpreter gets (a file swapped after load_bundle is refused)."""
        fpath = self.root / name
        try:
            data = fpath.read_bytes()
        except OSError as exc:
            raise BundleError(fpath, f"cannot be read ({exc.strerror or exc})") from None
        _check_sha256(fpath, hashlib.sha256(data).hexdigest(), str(self.info.files.get(name)))
        return data

    def read_arrays(self, name: str, index: Mapping[str, Any], what: str) -> Dict[str, np.ndarray]:
        """The float32 arrays of a verified bundle file (the layout pack_arrays writes), by the
        manifest's index: name -> {"offset", "shape"} (or (offset, shape)), offsets in float32 units."""
        fpath = self.root / name
        raw = self.read_verified(name)
        if len(raw) % 4:
            raise BundleError(fpath, f"{what} file is not a whole number of float32 values")
        data = np.frombuffer(raw, dtype="<f4")
        arrays = {}
        for key, a in index.items():
            offset, shape = (a["offset"], a["shape"]) if isinstance(a, Mapping) else a
            n = int(np.prod(shape))
            if offset + n > data.size:
                raise BundleError(fpath, f"array {key!r} runs past the end of the file")
            arrays[key] = data[offset:offset + n].reshape(shape).astype(np.float32)
        return arrays

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.preprocess

    @property
    def threshold(self) -> float:
        return self.info.decision.threshold

    @property
    def model_name(self) -> str:
        return self.info.model.name

    @property
    def demonstration_only(self) -> bool:
        return self.info.demonstration_only

    @property
    def fracture_map(self):
        """The manifest's MapInfo where the model's map is its heatmap and its answer, else None."""
        return self.info.fracture_map

    @property
    def calibration(self):
        """The manifest's Calibration (Platt scaling of the model's logit), or None."""
        return self.info.decision.calibration

    @property
    def gradcam(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("gradcam") if self.info.gradcam else None

    def artifacts(self) -> List[Artifact]:
        return [Artifact(k, self.root / a["file"], a["format"], a["precision"], a)
                for k, a in self.manifest["artifacts"].items()]

    def artifact(self, key: str) -> Artifact:
        for a in self.artifacts():
            if a.key == key:
                return a
        raise BundleError(self.path / MANIFEST, f"no artifact {key!r}; it has {sorted(self.manifest['artifacts'])}")

    def default_artifact(self, fmt: str) -> Optional[Artifact]:
        key = self.manifest.get("default_artifacts", {}).get(fmt)
        return self.artifact(key) if key else None


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> Tuple[bytes, Dict[str, Dict]]:
    """(bytes of a little-endian float32 file, the manifest's index of its arrays): what export
    writes for Bundle.read_arrays (the Grad-CAM head, the out-of-scope gate)."""
    index, chunks, offset = {}, [], 0
    for key, arr in arrays.items():
        index[key] = {"offset": offset, "shape": list(np.shape(arr))}
        chunks.append(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        offset += int(np.size(arr))
    return b"".join(chunks), index


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


PACKAGED_BUNDLE = "fracture_edge_bundle"  # the reference bundle as installed from the wheel


def default_bundle_dir(environ: Optional[Dict[str, str]] = None) -> Path:
    """$FRACTURE_EDGE_BUNDLE, else the reference bundle of a source checkout, else the one the
    package installed (pyproject.toml ships it as package data)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    if REPO_BUNDLE.is_dir():
        return REPO_BUNDLE
    import importlib.util
    spec = importlib.util.find_spec(PACKAGED_BUNDLE)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return REPO_BUNDLE  # not found: load_bundle names this path in its error


def _check_sha256(path: Path, actual: str, expected: str) -> None:
    _require(actual == expected, path, f"sha256 {actual[:16]}... does not match the manifest's {expected[:16]}...: "
                                       "the file was changed or damaged; reinstall the bundle")


def _require(cond: bool, path: Path, reason: str) -> None:
    if not cond:
        raise BundleError(path, reason)


TRAINING_RUN_FILES = ("model.keras", "run.json")  # what `python -m train` leaves in a run folder


def not_a_bundle(folder: Path) -> str:
    """Why a folder without a manifest is no bundle, with the next step when it is a training run."""
    folder = Path(folder)
    if any((folder / f).is_file() for f in TRAINING_RUN_FILES):
        return (f"missing: {folder} is a training run, not a bundle. Export it first "
                f"(on the training machine): python -m export.quantize {folder} --out {folder}-bundle ; "
                f"then use --bundle {folder}-bundle")
    return "missing: not a bundle folder"


def load_bundle(path: Union[str, Path, None] = None, verify: bool = True,
                 require_accepted: bool = True, trusted_key: Union[str, Path, None, bool] = None) -> Bundle:
    """Read manifest.json, check its digest, schema, status, signature and every file's sha256.

    `trusted_key`: None uses the configured one (edge_runtime/signature.py), if any; False skips
    the signature (only export's own check, on a bundle not yet signed, does that, together with
    `require_accepted=False`)."""
    given = Path(path).expanduser() if path is not None else default_bundle_dir()
    _require(given.is_dir(), given, "bundle folder not found")
    real = Path(os.path.realpath(given))  # once: every file below is read from this folder
    root = real
    mpath = root / MANIFEST
    _require(mpath.is_file(), mpath, not_a_bundle(given))
    try:
        _require(mpath.stat().st_size <= MAX_MANIFEST_BYTES, mpath, "manifest is too large to be a bundle's")
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, a 5,000-digit number
        raise BundleError(mpath, f"unreadable manifest ({type(exc).__name__}: {str(exc)[:120]})") from None
    try:
        info = Manifest.from_dict(raw)
    except ManifestError as exc:
        raise BundleError(mpath, f"invalid manifest: {exc}") from None
    _require(info.status == "accepted" or not require_accepted, mpath,
             f"bundle status is {info.status!r}: export's fidelity check did not accept it")
    key = trusted_key_path() if trusted_key is None else (trusted_key or None)
    signer = None
    if key:
        try:
            signer = verify_signature(root, info.raw[DIGEST_KEY], key)
        except SignatureError as exc:
            raise BundleError(root / SIGNATURE, str(exc)) from None
    if verify:
        for name, expected in info.files.items():
            fpath = root / name
            _require(not fpath.is_symlink(), fpath, "a bundle file may not be a symbolic link")
            _require(fpath.is_file(), fpath, "file listed in the manifest is missing")
            _check_sha256(fpath, sha256_file(fpath), expected)
    # `path` keeps the name the caller used (a service compares its target over time); files are read from `real`.
    return Bundle(given, info, signer, real)
