"""python -m export.signing: make an Ed25519 key pair, and sign a bundle with it.

    python -m export.signing keygen --out ~/fracture-edge-keys          # signing.key (keep it secret) + trusted_key.pub
    python -m export.signing sign models/reference-bundle --key ~/fracture-edge-keys/signing.key
    python -m export.quantize ... --sign ~/fracture-edge-keys/signing.key   # sign what export accepts

The private key never leaves the machine that exports; clinics get trusted_key.pub (install.sh
--trusted-key puts it in /etc/fracture-edge/), after which their runtime, service and web app only
load bundles signed with it. The signature covers the manifest's digest, which covers every file.
Set $FRACTURE_EDGE_KEY_PASSPHRASE to encrypt the private key at keygen and to unlock it when signing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from edge_runtime.bundle import MANIFEST, BundleError, load_bundle
from edge_runtime.signature import ALGORITHM, SIGNATURE, key_id, message

PASSPHRASE_ENV = "FRACTURE_EDGE_KEY_PASSPHRASE"


class SigningError(ValueError):
    pass


def _passphrase() -> Optional[bytes]:
    p = os.environ.get(PASSPHRASE_ENV)
    return p.encode() if p else None


def generate_keypair(out_dir: Path) -> Tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / "signing.key", out_dir / "trusted_key.pub"
    if private.exists():
        raise SigningError(f"{private} already exists: refusing to overwrite a signing key")
    key = ed25519.Ed25519PrivateKey.generate()
    pw = _passphrase()
    enc = serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=_passphrase())
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: cannot read the signing key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def sign_bundle(bundle_dir: Path, key_path: Path) -> str:
    """Verify the bundle (digest, schema, checksums), then write signature.json; returns the key id."""
    bundle = load_bundle(bundle_dir, trusted_key=False)
    key = load_private_key(key_path)
    digest = bundle.digest
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "signed": MANIFEST,
           "manifest_sha256": digest, "signature": base64.b64encode(key.sign(message(digest))).decode()}
    tmp = Path(bundle_dir) / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, Path(bundle_dir) / SIGNATURE)
    return doc["key_id"]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.signing", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="make signing.key and trusted_key.pub",
                       description="Make an Ed25519 key pair: signing.key (private, mode 0600) for whoever exports, "
                                   "trusted_key.pub for the clinics' devices (install.sh --trusted-key).")
    k.add_argument("--out", type=Path, required=True,
                   help="folder for the key pair, refused if it holds one already (keep it off shared drives)")
    s = sub.add_parser("sign", help="sign an accepted bundle",
                       description="Verify an accepted bundle (digest, schema, every file's sha256), then write its "
                                   "signature.json over the manifest's digest.")
    s.add_argument("bundle", type=Path, help="the bundle folder to sign (export accepted it)")
    s.add_argument("--key", type=Path, required=True,
                   help=f"the private signing.key (its passphrase, if any, from ${PASSPHRASE_ENV})")
    args = ap.parse_args(argv)
    try:
        if args.command == "keygen":
            private, public = generate_keypair(args.out)
            print(f"private key: {private} (mode 0600; keep it secret)\npublic key:  {public} "
                  f"(give this to clinics: install.sh --trusted-key {public.name})")
        else:
            kid = sign_bundle(args.bundle, args.key)
            print(f"signed {args.bundle} with key {kid} -> {args.bundle / SIGNATURE}")
    except (SigningError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError:
        print("error: signing needs the 'cryptography' package (pip install 'fracture-edge[signing]')", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
