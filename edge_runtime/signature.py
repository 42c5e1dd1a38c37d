"""Ed25519 signatures on bundles: who made a bundle, not only whether it is intact.

The manifest's digest catches damage, but anyone who edits a manifest can recompute it. A
signature over that digest, made with the project's private key, cannot be made without the key,
and the digest covers every file's sha256, so one signature vouches for the whole bundle. Where a
trusted public key is configured (`$FRACTURE_EDGE_TRUSTED_KEY`, else /etc/fracture-edge/trusted_key.pub
when present), unsigned and wrongly signed bundles are refused; where none is, signatures are not
required, and `python -m edge_runtime info` says which. The cryptography is the `cryptography`
package's (imported only when a key is configured), never our own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Union

SIGNATURE = "signature.json"
TRUST_ENV = "FRACTURE_EDGE_TRUSTED_KEY"
DEFAULT_TRUST_PATH = Path("/etc/fracture-edge/trusted_key.pub")
ALGORITHM = "ed25519"


class SignatureError(ValueError):
    """The bundle's signature is missing, malformed or does not verify; or no key can be used."""


def message(manifest_digest: str) -> bytes:
    """What is signed: the manifest digest, in a context string so the signature means only this."""
    return f"fracture-edge-bundle-manifest:{manifest_digest}".encode()


def trusted_key_path(environ: Optional[Dict[str, str]] = None) -> Optional[Path]:
    env = os.environ if environ is None else environ
    if env.get(TRUST_ENV):
        return Path(env[TRUST_ENV]).expanduser()
    return DEFAULT_TRUST_PATH if DEFAULT_TRUST_PATH.is_file() else None


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError("a trusted key is configured, but the 'cryptography' package is not installed "
                             "(pip install 'fracture-edge[signing]')") from None
    return InvalidSignature, serialization, ed25519


def load_public_key(path: Union[str, Path]):
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"trusted key {path} cannot be read as a PEM public key ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"trusted key {path} is not an Ed25519 public key")
    return key


def key_id(public_key) -> str:
    """A short fingerprint to name a key in messages and in signature.json."""
    from cryptography.hazmat.primitives import serialization
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify(bundle_dir: Union[str, Path], manifest_digest: str, key_path: Union[str, Path]) -> str:
    """The signing key's id, or SignatureError saying why the bundle must not be trusted."""
    InvalidSignature, _, _ = _crypto()
    public_key = load_public_key(key_path)
    sig_path = Path(bundle_dir) / SIGNATURE
    if not sig_path.is_file():
        raise SignatureError(f"bundle is not signed ({SIGNATURE} missing), and a trusted key is configured "
                             f"({key_path}): only signed bundles may be used")
    try:
        doc = json.loads(sig_path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM:
            raise ValueError("not an ed25519 signature file")
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except (OSError, ValueError, KeyError, UnicodeDecodeError, TypeError) as exc:
        raise SignatureError(f"{SIGNATURE} is malformed ({type(exc).__name__})") from None
    try:
        public_key.verify(signature, message(manifest_digest))
    except InvalidSignature:
        raise SignatureError(f"signature does not verify with the trusted key {key_id(public_key)} "
                             f"({key_path}): the bundle was changed after signing, or signed by another key") from None
    return key_id(public_key)
