"""The phone web app: the bundle, run offline in the phone's browser (ONNX Runtime Web, WASM).

`build_site` assembles every file of the site in memory: the app's sources (webapp/src), the
vendored WASM runtime (webapp/vendor: in a wheel built after `npm run vendor`, or fetched without
Node by `python -m device webapp --fetch-runtime`, see device/webapp_runtime.py),
the bundle's manifest, ONNX model and Grad-CAM head, a `config.json` generated from the Python
modules that define the constants the app ports (labels, disclaimer, input limits, the film
reader's and quality gate's thresholds and reason texts, the overlay's colours), the web app
manifest, icons, and the service worker with the list of files it caches.

`python -m device webapp --out DIR` writes the site (with .gz beside each compressible file, for
a server that serves pre-compressed files); `python -m device serve` serves it at /app/ from
memory, built from whichever bundle the service is using.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.environment import package_version

from .webapp_runtime import VENDOR_INFO

ARTIFACT_PREFERENCE = ("onnx_int8", "onnx_float")  # the app runs ONNX Runtime Web: int8 where export accepted it
VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".json": "application/json", ".webmanifest": "application/manifest+json",
                 ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                 ".f32": "application/octet-stream", ".png": "image/png"}
COMPRESSIBLE = (".html", ".js", ".mjs", ".css", ".json", ".webmanifest", ".wasm", ".onnx", ".f32")
THEME = "#1d3557"
MARKER = ".fracture-edge-webapp"  # in a written site: only such a folder is replaced by a new build


class WebAppError(RuntimeError):
    """The site cannot be built: the WASM runtime is not vendored, or the bundle has nothing to run."""


class RuntimeMissing(WebAppError):
    """The WASM runtime is not in place (`--fetch-runtime` puts it there)."""


def webapp_root() -> Path:
    """webapp/ in a checkout, or the installed data package `fracture_edge_webapp`."""
    try:
        import fracture_edge_webapp
        return Path(fracture_edge_webapp.__file__).resolve().parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "webapp"


def _in_checkout(root: Path) -> bool:
    """A source tree (npm can vendor the runtime there), not an installed package."""
    return (root / "scripts" / "vendor.mjs").is_file() and "site-packages" not in root.parts


def _vendor_files(root: Path) -> Dict[str, bytes]:
    """The runtime's files, each checked against the sha256 VENDOR.json records for it (a file cut
    short by a power cut, or replaced half-way, is refused, not served)."""
    from .webapp_runtime import VendorMismatch, read_vendor

    vendor = _vendor_dir(root)
    try:
        return read_vendor(vendor, VENDOR_FILES)[1]
    except VendorMismatch as exc:
        raise RuntimeMissing(f"the phone app's WASM runtime file {exc} (damaged or half replaced): "
                             "run `python -m device webapp --fetch-runtime --force`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeMissing(f"the phone app's WASM runtime in {vendor} has no usable VENDOR.json ({exc}): "
                             "run `python -m device webapp --fetch-runtime --force`") from None


def _vendor_dir(root: Path) -> Path:
    vendor = root / "vendor"
    missing = [f for f in (*VENDOR_FILES, VENDOR_INFO) if not (vendor / f).is_file()]
    if missing:
        how = ("run `python -m device webapp --fetch-runtime` (downloads the version pinned in "
               "package-lock.json from the npm registry and checks its sha512; offline: add --from FILE.tgz)")
        if _in_checkout(root):
            how += f", or `npm ci && npm run vendor` in {root}"
        raise RuntimeMissing(f"the phone app's WASM runtime is missing ({', '.join(missing)} not in {vendor}): {how}")
    return vendor


def runtime_stamp() -> tuple:
    """Changes when the runtime's files appear, go or are replaced: a service retries at once."""
    vendor = webapp_root() / "vendor"
    stamp = []
    for name in (*VENDOR_FILES, VENDOR_INFO):
        try:
            st = (vendor / name).stat()
            stamp.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stamp.append((name, None))
    return tuple(stamp)


def app_config(bundle: Bundle, trusted_key_b64: Optional[str]) -> Dict:
    """Every constant the JavaScript ports, read from the Python modules that define it."""
    from edge_runtime import imageio, labels, manifest, overlay, preprocess, scope, selftest, signature
    from edge_runtime.predictor import OVERLAY_SIDE, UNFAMILIAR_PHOTO

    from . import photo
    from .webapp_constants import film_constants

    return {
        "APP_VERSION": _app_version(),
        "BUNDLE_FORMAT": "fracture-edge-bundle", "FORMAT_VERSIONS": list(manifest.READABLE_VERSIONS),
        "DIGEST_KEY": manifest.DIGEST_KEY, "SIGNATURE_FILE": signature.SIGNATURE,
        "SIGNED_PREFIX": signature.message("").decode(), "TRUSTED_KEY": trusted_key_b64,
        "ARTIFACT_PREFERENCE": list(ARTIFACT_PREFERENCE), "SELFTEST_GENERATOR": selftest.GENERATOR,
        "SELFTEST_SCOPE_TOLERANCE": dict(selftest.SCOPE_TOLERANCE),
        "POSITIVE": labels.POSITIVE, "NEGATIVE": labels.NEGATIVE, "RETAKE": labels.RETAKE,
        "OUT_OF_SCOPE": labels.OUT_OF_SCOPE, "OUT_OF_SCOPE_ADVICE": labels.OUT_OF_SCOPE_ADVICE,
        "SCOPE": {"REASONS": dict(scope.REASONS), "UNFAMILIAR_PHOTO": UNFAMILIAR_PHOTO},
        "LABELS": dict(labels.WORDING), "LABELS_SHORT": {**labels.SHORT, "error": labels.WORDING["error"]},
        "DISCLAIMER": labels.DISCLAIMER,
        "CONTENT_LIMITS": {"MIN_CONTRAST": preprocess.MIN_CONTRAST, "MIN_STRUCTURE": preprocess.MIN_STRUCTURE,
                           "MIN_FILL": preprocess.MIN_FILL},
        "IMAGE_LIMITS": {"MAX_PIXELS": imageio.MAX_PIXELS, "MIN_SIDE": imageio.MIN_SIDE,
                         "MAX_ASPECT": imageio.MAX_ASPECT, "DECODE_SIDE": photo.DECODE_SIDE,
                         "MAX_PHOTO_PIXELS": photo.MAX_PHOTO_PIXELS, "CHROMA": scope.CHROMA},
        "OVERLAY": {"stops": overlay._STOPS.tolist(), "colours": overlay._COLOURS.tolist(),
                    "alpha": overlay.ALPHA, "gamma": overlay.MASK_GAMMA, "max_side": OVERLAY_SIDE,
                    "panel": list(overlay._PANEL), "text": list(overlay._TEXT)},
        "FILM": film_constants(),
    }


def _app_version() -> str:
    return package_version("fracture-edge") or "source"  # "source": a tree without package metadata


def _icon(size: int) -> bytes:
    """A plain icon drawn here (no image file to keep in step): a bone on the app's colour."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), THEME)
    d = ImageDraw.Draw(img)
    s = size / 16
    d.rounded_rectangle([6.5 * s, 3 * s, 9.5 * s, 13 * s], radius=1.5 * s, fill="white")
    for cx, cy in ((6.5, 3.2), (9.5, 3.2), (6.5, 12.8), (9.5, 12.8)):
        d.ellipse([(cx - 1.6) * s, (cy - 1.6) * s, (cx + 1.6) * s, (cy + 1.6) * s], fill="white")
    d.line([5 * s, 8.6 * s, 11 * s, 7.4 * s], fill="#c1121f", width=max(2, int(0.6 * s)))
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _web_manifest(bundle: Bundle) -> bytes:
    doc = {"name": "Fracture screening", "short_name": "Fracture screen",
           "description": "Screening aid for fractures on radiographs and photos of film, offline.",
           "start_url": "./", "scope": "./", "display": "standalone", "orientation": "portrait",
           "background_color": "#f4f4f4", "theme_color": THEME,
           "icons": [{"src": f"icon-{n}.png", "sizes": f"{n}x{n}", "type": "image/png", "purpose": "any"}
                     for n in (192, 512)]}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _trusted_key_b64(path: Optional[Path]) -> Optional[str]:
    """The raw Ed25519 public key, base64, for WebCrypto; None where no key is configured."""
    from edge_runtime.signature import load_public_key, trusted_key_path

    path = path or trusted_key_path()
    if path is None:
        return None
    import base64

    from cryptography.hazmat.primitives import serialization
    raw = load_public_key(path).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass
class Site:
    files: Dict[str, bytes]  # relative path -> content
    version: str
    artifact: str

    def size(self, compressed: bool = True) -> int:
        return sum(len(gzipped(p, b)) if compressed else len(b) for p, b in self.files.items())


def gzipped(path: str, content: bytes) -> bytes:
    if not path.endswith(COMPRESSIBLE):
        return content
    return gzip.compress(content, compresslevel=9, mtime=0)


def build_site(bundle: Optional[Bundle] = None, trusted_key: Optional[Path] = None) -> Site:
    """Every file of the app for `bundle` (default: the default bundle), checked as the device
    checks it (digest, sha256, signature where a key is configured)."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    root = webapp_root()
    runtime = _vendor_files(root)
    src = root / "src"
    files: Dict[str, bytes] = {}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and p.suffix in (".html", ".js", ".css") and rel != "sw.js":
            files[rel] = p.read_bytes()
    for name, content in runtime.items():
        files[f"vendor/{name}"] = content
    arts = bundle.manifest["artifacts"]
    usable = [k for k in ARTIFACT_PREFERENCE if k in arts and (arts[k].get("check") or {}).get("passed")]
    if not usable:
        raise WebAppError(f"{bundle.root}: no ONNX artifact accepted by export's check "
                          f"(the app needs one of {', '.join(ARTIFACT_PREFERENCE)})")
    artifact = usable[0]
    # Every accepted ONNX artifact ships: the app runs the first whose self-test passes in this
    # browser (int8 where it does, else float), so a WASM build that rounds int8 differently
    # falls back instead of answering wrongly.
    wanted = {arts[k]["file"] for k in usable}
    if bundle.gradcam:
        wanted.add(bundle.gradcam["file"])
    if bundle.info.scope is not None:  # the out-of-scope gate's arrays: the app refuses as the Pi does
        wanted.add(bundle.info.scope.file)
    files["bundle/manifest.json"] = (bundle.root / "manifest.json").read_bytes()
    for name in sorted(wanted):
        files[f"bundle/{name}"] = bundle.read_verified(name)
    from edge_runtime.signature import SIGNATURE
    if (bundle.root / SIGNATURE).is_file():
        files[f"bundle/{SIGNATURE}"] = (bundle.root / SIGNATURE).read_bytes()
    digests: Dict[str, bytes] = {}  # each file hashed once (the runtime is 14 MB; serve rebuilds on updates)

    def digest(rel: str) -> bytes:
        if rel not in digests:
            digests[rel] = hashlib.sha256(files[rel]).digest()
        return digests[rel]

    build = hashlib.sha256(b"".join(digest(rel) for rel in sorted(files))).hexdigest()[:16]
    config = {**app_config(bundle, _trusted_key_b64(trusted_key)), "APP_BUILD": build,  # the app's own files
              "ARTIFACTS_SHIPPED": usable}
    files["config.json"] = (json.dumps(config, indent=1, ensure_ascii=False) + "\n").encode()
    files["manifest.webmanifest"] = _web_manifest(bundle)
    files["icon-192.png"], files["icon-512.png"] = _icon(192), _icon(512)
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + digest(rel))
    version = h.hexdigest()[:16]
    # Every file with its sha256 ("./" is index.html, as the server answers it)
    cached = {"./": digest("index.html").hex(), **{rel: digest(rel).hex() for rel in sorted(files)}}
    sw = (src / "sw.js").read_text(encoding="utf-8")
    sw = sw.replace('"__VERSION__"', json.dumps(version)).replace("__FILES__", json.dumps(cached, indent=0))
    files["sw.js"] = sw.encode()
    return Site(files, version, artifact)


def write_site(site: Site, out: Path, overwrite: bool = False) -> Path:
    """Write the site (and .gz copies) to `out`, replacing it whole: never a mix of two builds."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite and not (out / MARKER).is_file():
        raise WebAppError(f"{out} is not empty and holds no earlier build of the app: choose an empty folder "
                          "(or --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, content in site.files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
            z = gzipped(rel, content)
            if z is not content:
                (tmp / f"{rel}.gz").write_bytes(z)
        (tmp / MARKER).write_text(f"{site.version}\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def content_type(path: str) -> str:
    return CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream")
