"""One model from float Keras to a checked bundle: calibrate, convert, check through the edge
runtime, then either accept (the bundle goes to OUT) or reject (it goes to OUT.rejected, marked so
that the runtime refuses it). Nothing is half-written: all work happens in a staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from edge_runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, load_bundle, seal, sha256_file
from edge_runtime.predictor import Predictor
from edge_runtime.preprocess import PreprocessSpec, views
from train.data import DataError, load_data
from train.dataset import LoadedSplit, load_images
from train.fit import versions
from train.localisation import agreement, boxed_positives, localise
from train.split import file_sha256, load_split, records_by_split, split_summary

from . import convert
from .calibration import choose_calibration, ids_sha256
from .check import Tolerances, classification, compare, failures
from .gradcam_head import UnsupportedHead, derive_head, head_file_bytes
from .report import render
from .rewrite import NotFoldable, check_equivalent, equalize_ranges, fold_batchnorm_after_relu
from .sources import Source

HEAD_FILE = "gradcam_head.f32"
EXPORT_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy", "pillow")
REPORT = "report.md"


@dataclass
class Settings:
    data: Optional[str] = None
    artifacts: Sequence[str] = convert.DEFAULT_ARTIFACTS
    calibration_size: int = 200
    seed: int = 0
    tolerances: Tolerances = Tolerances()
    overwrite: bool = False
    progress: bool = True
    command: str = "python -m export.quantize"
    calibration_override: Optional[np.ndarray] = None  # tests only: plant a wrong calibration


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rejected_path(out: Path) -> Path:
    return out.with_name(out.name + ".rejected")


def _dataset(source: Source, data_arg: Optional[str]):
    if source.run is not None:
        from train.evaluate import dataset_for_run
        return dataset_for_run(source.run, data_arg)
    return load_data(data_arg)


def _threshold(source: Source, model, load_val: Callable[[], LoadedSplit]) -> Dict:
    """The run's threshold (chosen on validation at training); else Youden on validation now."""
    if source.metrics and "threshold" in source.metrics:
        t = source.metrics["threshold"]
        return {"threshold": float(t["value"]), "rule": t["rule"], "chosen_on": t["chosen_on"]}
    from train.evaluate import predict
    from train.metrics import choose_threshold
    val = load_val()
    p = predict(model, val.images, val.spec)
    return {"threshold": choose_threshold(val.labels, p, "youden"), "rule": "youden",
            "chosen_on": "validation split (at export: the model file came without metrics.json)"}


def _reference_cams(model, layer: str, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    from train.gradcam import gradcam_views
    return np.concatenate([gradcam_views(model, images[i:i + 32], layer, spec)[0] for i in range(0, len(images), 32)])


def _run_artifact(bundle, key: str, test: LoadedSplit, with_cam: bool):
    """Probabilities and raw Grad-CAM maps of one artifact, run by the edge runtime itself."""
    pred = Predictor(bundle, artifact=key, gradcam=with_cam)
    probs, cams = [], []
    for x in test.images:
        p, cam = pred.answer(x)
        probs.append(p)
        if with_cam:
            cams.append(cam)
    return np.array(probs), (np.stack(cams) if with_cam else None), pred.backend, pred.session.io_spec()


def export_one(source: Source, out: Path, settings: Settings) -> Dict:
    import keras

    from train.models import get_config

    out = Path(out)
    if out.exists() and not settings.overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    t_start = time.time()
    cfg = get_config(source.name)
    dataset = _dataset(source, settings.data)
    parts = records_by_split(dataset, load_split(source.split_path, dataset))
    spec = PreprocessSpec.from_dict(source.run["preprocess"]) if source.run else PreprocessSpec(size=cfg.input_size)
    model = keras.models.load_model(source.model_path, compile=False)
    tag = f"[{source.name}]"

    calib_records = choose_calibration(parts["train"], settings.calibration_size, settings.seed)
    assert {r.image_id for r in calib_records} <= {r.image_id for r in parts["train"]}
    calib = load_images(calib_records, spec, f"{tag} calibration images", settings.progress)
    # The model will see every view the runtime makes (eight orientations when the spec says so),
    # so int8 ranges are calibrated on those views too: a filter for vertical bone meets
    # horizontal bone in a turned view, and its range must not clip there.
    calibration = np.concatenate([views(x, spec) for x in calib.images]) if len(calib.images) else calib.images
    if settings.calibration_override is not None:
        calibration = settings.calibration_override
    test = load_images(parts["test"], spec, f"{tag} test images", settings.progress)
    threshold = _threshold(source, model, lambda: load_images(parts["val"], spec, f"{tag} val images",
                                                              settings.progress))
    data = {"name": dataset.name, "phantom": bool(dataset.phantom), "provenance": dataset.provenance,
            "dataset_counts": dataset.counts(), "split_sha256": file_sha256(source.split_path),
            "split_counts": split_summary(parts),
            "calibration": {"split": "train", "n": len(calib_records), "seed": settings.seed,
                            "stratified_by": "label x region", "ids_sha256": ids_sha256(calib_records),
                            "views_per_image": spec.n_views,
                            "ids": [r.image_id for r in calib_records],
                            "planted_fault": settings.calibration_override is not None}}

    exported, rewrite = model, {"applied": False}
    try:
        folded = fold_batchnorm_after_relu(model)
        worst = check_equivalent(model, folded, calib.images[:64])
        exported, rewrite = folded, {"applied": True, "what": "BatchNorm-after-ReLU folded into the next layer "
                                     "(export/rewrite.py)", "max_abs_diff_float": worst}
        log(f"{tag} folded BatchNorm-after-ReLU for int8 (float outputs agree to {worst:.1e})")
    except NotFoldable as exc:
        rewrite["reason"] = str(exc)
    try:
        equalized = equalize_ranges(exported, calibration[: min(len(calibration), 256)])
        worst = check_equivalent(model, equalized, calib.images[:64])
        exported = equalized
        rewrite["equalized"] = {"what": "conv output ranges equalised across channels, consumer weights divided "
                                        "(export/rewrite.py, equalize_ranges)", "max_abs_diff_float": worst}
        log(f"{tag} equalised channel ranges for int8 (float outputs agree to {worst:.1e})")
    except NotFoldable as exc:
        rewrite["equalized"] = {"reason": str(exc)}
    head, head_note = None, None
    try:
        head = derive_head(exported, cfg.gradcam_layer)
    except UnsupportedHead as exc:
        head_note = str(exc)
        log(f"{tag} no Grad-CAM head: {exc}")
    serving = convert.serving_model(exported, head.layer if head else None, head.hidden_layer if head else None)

    stage = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        manifest = _write_stage(stage, source, serving, head, head_note, calibration, spec, threshold,
                                data, rewrite, settings, tag)
        (stage / MANIFEST).write_text(json.dumps(seal(manifest), indent=2) + "\n")  # pending, for the check
        bundle = load_bundle(stage, require_accepted=False, trusted_key=False)  # signed after acceptance
        from train.evaluate import predict
        p_float = predict(model, test.images, spec)
        cams_ref = _reference_cams(model, head.layer, test.images, spec) if head else None
        ref = classification(test.labels, p_float, threshold["threshold"])
        boxed = boxed_positives(test.records) if head else []
        boxed_records = [test.records[i] for i in boxed]
        boxed_shapes = [test.shapes[i] for i in boxed] if test.shapes else None
        loc_ref = localise(cams_ref[boxed], boxed_records, spec, boxed_shapes) if boxed else None
        passed = True
        for key in manifest["artifacts"]:
            t0 = time.time()
            p_art, cams, backend, io = _run_artifact(bundle, key, test, head is not None)
            m = compare(test.labels, p_float, p_art, threshold["threshold"], cams_ref, cams)
            if loc_ref is not None:  # reported beside the float reference's, not gated
                scores, summary = localise(cams[boxed], boxed_records, spec, boxed_shapes)
                m["localisation"] = {**summary, "vs_float_keras": agreement(scores, loc_ref[0])}
            bad = failures(m, settings.tolerances, manifest["artifacts"][key]["precision"])
            passed &= not bad
            entry = manifest["artifacts"][key]
            entry.update(metrics=m, check={"passed": not bad, "failures": bad, "backend": backend})
            if io:
                entry["io"] = io
            log(f"{tag} {key}: AUC {m['auc'] if m['auc'] is None else round(m['auc'], 4)}, agreement "
                f"{m['agreement']:.3f}, mean |Δp| {m['mean_abs_diff']:.4f} -> {'pass' if not bad else 'FAIL ' + '; '.join(bad)}"
                f" ({time.time() - t0:.1f} s)")
        manifest["reference"] = {"float_keras": {**ref, "n": int(len(test.labels)), "file": source.model_path.name,
                                                 "bytes": source.model_path.stat().st_size,
                                                 "sha256": sha256_file(source.model_path)}}
        if loc_ref is not None:
            manifest["reference"]["float_keras"]["localisation"] = loc_ref[1]
        manifest["check"] = {"split": "test", "n": int(len(test.labels)), "skipped": test.skipped,
                             "tolerances": settings.tolerances.to_dict(), "passed": bool(passed),
                             "runtime": "edge_runtime: its own image loading, preprocessing, interpreters and Grad-CAM"}
        manifest["status"] = "accepted" if passed else "rejected"
        manifest["default_artifacts"] = {
            fmt: next((k for k, a in manifest["artifacts"].items() if a["format"] == fmt and a["precision"] == "int8"),
                      next((k for k, a in manifest["artifacts"].items() if a["format"] == fmt), None))
            for fmt in ("tflite", "onnx")}
        manifest["default_artifacts"] = {k: v for k, v in manifest["default_artifacts"].items() if v}
        if passed:
            manifest["self_test"] = _self_test(bundle, list(manifest["artifacts"]))
        manifest["export_seconds"] = round(time.time() - t_start, 1)
        (stage / REPORT).write_text(render([manifest], settings.command))
        manifest["files"][REPORT] = sha256_file(stage / REPORT)
        (stage / MANIFEST).write_text(json.dumps(seal(manifest), indent=2) + "\n")
        target = out if passed else rejected_path(out)
        for old in (out, rejected_path(out)):
            if old.exists():
                shutil.rmtree(old)
        stage.rename(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest["bundle_path"] = str(target)
    return manifest


def _self_test(bundle, keys) -> Dict:
    """Each artifact's answers on the runtime's fixed self-test images, recorded so that a device
    can check it reproduces them before it switches to this bundle (python -m device update)."""
    from edge_runtime import selftest
    from edge_runtime.backends import BackendError
    from edge_runtime.predictor import Predictor

    predictors = {}
    for key in keys:
        try:
            predictors[key] = Predictor(bundle, "auto", key, threads=1, gradcam=False)
        except BackendError:  # no interpreter for this format here: that artifact is not self-tested
            continue
    return selftest.record(bundle, predictors)


def _write_stage(stage: Path, source: Source, serving, head, head_note, calibration, spec, threshold,
                 data: Dict, rewrite: Dict, settings: Settings, tag: str) -> Dict:
    artifacts: Dict[str, Dict] = {}
    for key, path, seconds in convert.write_artifacts(settings.artifacts, serving, stage, calibration):
        fmt, precision = convert.ARTIFACTS[key]
        artifacts[key] = {"file": path.name, "format": fmt, "precision": precision,
                          "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        log(f"{tag} wrote {path.name} ({path.stat().st_size / 1e6:.2f} MB, {seconds:.1f} s)")
    artifacts = {k: artifacts[k] for k in settings.artifacts}
    files = {a["file"]: a["sha256"] for a in artifacts.values()}
    gradcam = None
    if head is not None:
        blob, index = head_file_bytes(head)
        (stage / HEAD_FILE).write_bytes(blob)
        files[HEAD_FILE] = sha256_file(stage / HEAD_FILE)
        gradcam = {"method": "Grad-CAM (channel weights = spatial mean of d logit / d features)",
                   "layer": head.layer, "feature_shape": list(head.feature_shape), "file": HEAD_FILE,
                   "dtype": "float32 little-endian", "arrays": index,
                   "needs": ["features"] + (["hidden"] if head.hidden_layer else []),
                   "hidden_layer": head.hidden_layer}
    run = source.run or {}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "status": "pending",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "title": f"{source.name} on " + ("PHANTOM data: DEMONSTRATION ONLY, not for patients"
                                         if source.phantom else run.get("data", {}).get("name", "unknown data")),
        "demonstration_only": bool(source.phantom or data["phantom"]),
        "model": {"name": source.name, "description": run.get("model", {}).get("description"),
                  "complexity": run.get("model", {}).get("complexity"),
                  "input": {"name": "image", "shape": [1, spec.size, spec.size, 1], "dtype": "float32",
                            "range": [0.0, 1.0]},
                  "outputs": convert.output_spec(serving), "export_rewrite": rewrite,
                  "source": source.origin},
        "preprocess": {**spec.to_dict(), "decode": "edge_runtime.inputs.read_image (JPEG draft-decoded to at "
                                                  "least size px; 16-bit scaled by its bit depth; DICOM windowed)"},
        "decision": {**threshold, "positive_class": "fractured", "output": "prob = P(fractured), sigmoid"},
        "gradcam": gradcam, "gradcam_unavailable": head_note,
        "artifacts": artifacts,
        "data": data,
        "provenance": {"export_command": settings.command, "versions": versions(EXPORT_PACKAGES),
                       "training_command": run.get("command"), "training_seed": run.get("training", {}).get("seed"),
                       "trained_with": run.get("versions")},
        "files": files,
    }
    return manifest
