"""Signed bundles: with a trusted key configured, only bundles signed by it load."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("cryptography")

from edge_runtime.bundle import REPO_BUNDLE, BundleError, load_bundle, seal  # noqa: E402
from edge_runtime.cli import main as runtime_main  # noqa: E402
from edge_runtime.signature import SIGNATURE, TRUST_ENV  # noqa: E402
from export.signing import SigningError, generate_keypair, main as signing_main, sign_bundle  # noqa: E402


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def bundle(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(REPO_BUNDLE, copy)
    (copy / SIGNATURE).unlink(missing_ok=True)
    return copy


def test_keygen_makes_a_private_key_only_its_owner_can_read(keys):
    private, public = keys
    assert private.stat().st_mode & 0o077 == 0
    assert b"PUBLIC KEY" in public.read_bytes() and b"PRIVATE KEY" in private.read_bytes()
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(private.parent)


def test_with_a_trusted_key_only_bundles_signed_by_it_load(keys, bundle, tmp_path, monkeypatch, capsys):
    private, public = keys
    monkeypatch.setenv(TRUST_ENV, str(public))
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(bundle)

    kid = sign_bundle(bundle, private)
    assert load_bundle(bundle).signed_by == kid
    assert runtime_main(["info", "--bundle", str(bundle)]) == 0
    assert f"verified (key {kid})" in capsys.readouterr().out

    # Someone edits the threshold and recomputes the digest: the digest passes, the signature does not.
    m = json.loads((bundle / "manifest.json").read_text())
    m["decision"]["threshold"] = 0.944
    (bundle / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(bundle)

    # A bundle signed with another key.
    other_private, _ = generate_keypair(tmp_path / "other")
    (bundle / "manifest.json").write_text(json.dumps(seal({**m, "decision": {**m["decision"], "threshold": 0.5}})))
    sign_bundle(bundle, other_private)
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(bundle)
    assert runtime_main(["predict", "--bundle", str(bundle), str(bundle / "manifest.json")]) == 2
    assert "does not verify" in capsys.readouterr().err

    (bundle / SIGNATURE).write_text("{not json")
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(bundle)


def test_without_a_trusted_key_signatures_are_not_required(bundle, monkeypatch, tmp_path):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setattr("edge_runtime.signature.DEFAULT_TRUST_PATH", tmp_path / "absent.pub")
    assert load_bundle(bundle).signed_by is None


def test_signing_cli_refuses_a_damaged_bundle(keys, bundle, capsys):
    private, _ = keys
    model = next(n for n in json.loads((bundle / "manifest.json").read_text())["files"] if n.endswith(".tflite"))
    (bundle / model).write_bytes(b"changed")
    assert signing_main(["sign", str(bundle), "--key", str(private)]) == 2
    assert "sha256" in capsys.readouterr().err and not (bundle / SIGNATURE).exists()
