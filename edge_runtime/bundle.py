"""Load and verify a bundle: manifest.json plus the model files export wrote (the DESIGN.md contract).

The runtime trusts nothing it has not checked: the format version, the sha256 of every file the
manifest lists, and that export's fidelity check accepted the bundle. Export imports the constants
here, so writer and reader cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .preprocess import PreprocessSpec

FORMAT = "fracture-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
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
    manifest: Dict[str, Any]

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["decision"]["threshold"])

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def demonstration_only(self) -> bool:
        return bool(self.manifest.get("demonstration_only", True))

    @property
    def gradcam(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("gradcam")

    def artifacts(self) -> List[Artifact]:
        return [Artifact(k, self.path / a["file"], a["format"], a["precision"], a)
                for k, a in self.manifest["artifacts"].items()]

    def artifact(self, key: str) -> Artifact:
        for a in self.artifacts():
            if a.key == key:
                return a
        raise BundleError(self.path / MANIFEST, f"no artifact {key!r}; it has {sorted(self.manifest['artifacts'])}")

    def default_artifact(self, fmt: str) -> Optional[Artifact]:
        key = self.manifest.get("default_artifacts", {}).get(fmt)
        return self.artifact(key) if key else None


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_bundle_dir(environ: Optional[Dict[str, str]] = None) -> Path:
    """$FRACTURE_EDGE_BUNDLE, else the committed reference bundle of a source checkout."""
    env = os.environ if environ is None else environ
    return Path(env[ENV_VAR]).expanduser() if env.get(ENV_VAR) else REPO_BUNDLE


def _require(cond: bool, path: Path, reason: str) -> None:
    if not cond:
        raise BundleError(path, reason)


def load_bundle(path: Union[str, Path, None] = None, verify: bool = True,
                require_accepted: bool = True) -> Bundle:
    """Read manifest.json, check its format version, status and every file's sha256.

    Only export's own check opens a bundle before it is accepted (`require_accepted=False`)."""
    root = Path(path).expanduser() if path is not None else default_bundle_dir()
    mpath = root / MANIFEST
    _require(root.is_dir(), root, "bundle folder not found")
    _require(mpath.is_file(), mpath, "manifest.json missing: not a bundle folder")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(mpath, f"unreadable manifest ({exc})") from None
    _require(isinstance(manifest, dict) and manifest.get("format") == FORMAT, mpath,
             f"not a {FORMAT} manifest")
    version = manifest.get("format_version")
    _require(version == FORMAT_VERSION, mpath,
             f"format version {version!r}, this runtime reads version {FORMAT_VERSION}; "
             "re-export the bundle or update the runtime")
    _require(manifest.get("status") == "accepted" or not require_accepted, mpath,
             f"bundle status is {manifest.get('status')!r}: export's fidelity check did not accept it")
    for key in ("model", "preprocess", "decision", "artifacts", "files"):
        _require(key in manifest, mpath, f"manifest lacks {key!r}")
    try:
        PreprocessSpec.from_dict(manifest["preprocess"])
    except (TypeError, ValueError) as exc:
        raise BundleError(mpath, f"bad preprocess section ({exc})") from None
    files = manifest["files"]
    for art in manifest["artifacts"].values():
        _require(art.get("file") in files, mpath, f"artifact file {art.get('file')!r} has no checksum")
    if manifest.get("gradcam"):
        _require(manifest["gradcam"].get("file") in files, mpath, "Grad-CAM head file has no checksum")
    if verify:
        for name, expected in files.items():
            fpath = root / name
            _require(Path(name).name == name and fpath.is_file(), fpath, "file listed in the manifest is missing")
            actual = sha256_file(fpath)
            _require(actual == expected, fpath,
                     f"sha256 {actual[:16]}... does not match the manifest's {expected[:16]}...: "
                     "the file was changed or damaged; reinstall the bundle")
    return Bundle(root, manifest)
