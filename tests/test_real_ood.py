"""Real out-of-scope images from installed packages (fracdata/real_ood.py), through the runtime."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pydicom", reason="pydicom (the 'dicom' or 'dev' extra) ships the real DICOM samples")


def test_the_real_set_is_copied_and_listed(tmp_path, capsys):
    from fracdata.real_ood import PYDICOM_FILES, main

    assert main(["--out", str(tmp_path / "real"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    listed = [f for files in meta["files"].values() for f in files]
    assert {f"{kind}/{name}" for name, kind, _ in PYDICOM_FILES} <= set(listed)
    assert all((tmp_path / "real" / f).is_file() for f in listed)
    assert all(meta["about"][f]["from"].split()[0] in ("pydicom", "scikit-image") for f in listed)
    assert meta["seed"] == -1 and meta == json.loads((tmp_path / "real" / "ood_set.json").read_text())


def test_real_medical_images_get_a_refusal_or_an_answer_never_a_crash(tmp_path):
    """Every file gets a record; the colour ultrasound is refused as colour, the 64-px MR as too small
    for the model, and the reference bundle's gate refuses the CT heads (the rest, measured, are in
    docs/results.md)."""
    from edge_runtime.predictor import Predictor
    from fracdata.real_ood import write_real_set

    out = write_real_set(tmp_path / "real")
    files = json.loads((out / "ood_set.json").read_text())["files"]
    pred = Predictor(backend="onnx", gradcam=False)  # the committed reference bundle
    recs = {f: pred.predict_file(out / f) for fs in files.values() for f in fs}
    assert all(r.error or r.decision for r in recs.values())
    assert "too small for this model" in recs["real_mr/MR_small.dcm"].error
    for f in ("real_us/examples_jpeg2k.dcm", "real_us/examples_rgb_color.dcm"):
        assert recs[f].out_of_scope and recs[f].scope["code"] == "colour", f
    for f in ("real_ct/693_J2KI.dcm", "real_ct/J2K_pixelrep_mismatch.dcm"):
        assert recs[f].out_of_scope and recs[f].scope["code"] == "unfamiliar", f
