"""One model from float Keras to a checked bundle, in four steps:

- `prepare`: the data, split and PreprocessSpec the run recorded, the calibration and test images,
  the threshold, and the model rewritten for int8 (BatchNorm folded, ranges equalised) with its
  Grad-CAM head and serving outputs;
- `convert`: every artifact file and the Grad-CAM head into a staging folder, and the manifest;
- `check`: each artifact run by the edge runtime itself against the float model; the verdict;
- `publish`: the report, the sealed manifest, and the staging folder renamed to OUT when accepted,
  to OUT.rejected (which the runtime refuses) when not.

Nothing is half-written: all work happens in the staging folder, removed whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from edge_runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, load_bundle, seal
from edge_runtime.predictor import Predictor
from edge_runtime.preprocess import PreprocessSpec, views
from fracdata.data import Dataset, Record, load_data
from fracdata.images import LoadedSplit, load_images
from fracdata.provenance import sha256_file, versions
from fracdata.runs import dataset_for_run
from fracdata.split import load_split, records_by_split, split_summary

from . import convert as converters
from .calibration import choose_calibration, ids_sha256
from .check import Tolerances, classification, compare, failures
from .errors import ExportError
from .gradcam_head import HeadSpec, UnsupportedHead, derive_head, head_file_bytes
from .report import render
from .rewrite import NotFoldable, check_equivalent, equalize_ranges, fold_batchnorm_after_relu
from .sources import Source

HEAD_FILE = "gradcam_head.f32"
EXPORT_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy", "pillow")
REPORT = "report.md"
DECODE = ("edge_runtime.inputs.read_image (JPEG draft-decoded to at least size px; 16-bit scaled by its bit depth; "
          "DICOM windowed)")


@dataclass
class Settings:
    data: Optional[str] = None
    artifacts: Sequence[str] = converters.DEFAULT_ARTIFACTS
    calibration_size: int = 200
    seed: int = 0
    tolerances: Tolerances = Tolerances()
    overwrite: bool = False
    progress: bool = True
    command: str = "python -m export.quantize"


@dataclass
class Prepared:
    """What `prepare` gathers for one model; the later steps only read it."""
    source: Source
    tag: str  # "[model]", prefixing every log line
    started: float  # time.time() at the start
    spec: PreprocessSpec
    gradcam_layer: str
    model: object  # the float keras.Model, the reference
    serving: object  # the rewritten model with its named outputs, what every artifact is made from
    rewrite: Dict  # what was rewritten for int8, for the manifest
    head: Optional[HeadSpec]
    head_note: Optional[str]  # why there is no Grad-CAM head
    calibration: np.ndarray  # (n x views, size, size, 1): what both int8 converters calibrate on
    test: LoadedSplit
    threshold: Dict  # threshold, rule, chosen_on
    data: Dict  # the manifest's data section


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rejected_path(out: Path) -> Path:
    return out.with_name(out.name + ".rejected")


def _refuse_existing(out: Path, settings: Settings) -> None:
    if out.exists() and not settings.overwrite:
        raise ExportError(f"{out}: already exists; pass --overwrite to replace it")


def export_one(source: Source, out: Path, settings: Settings) -> Dict:
    """All four steps; returns the manifest with `bundle_path` (OUT, or OUT.rejected)."""
    _refuse_existing(Path(out), settings)
    return export_prepared(prepare(source, settings), Path(out), settings)


def export_prepared(prep: Prepared, out: Path, settings: Settings) -> Dict:
    """convert -> check -> publish in a staging folder beside OUT."""
    out = Path(out)
    _refuse_existing(out, settings)
    stage = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        manifest = convert(prep, stage, settings)
        check(prep, stage, manifest, settings)
        return publish(prep, stage, manifest, out, settings)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------------- prepare

def _dataset(source: Source, data_arg: Optional[str]) -> Dataset:
    return dataset_for_run(source.run, data_arg) if source.run is not None else load_data(data_arg)


def source_spec(source: Source) -> PreprocessSpec:
    """The run's PreprocessSpec (what the model was trained with); a bare model file gets its
    registry entry's."""
    from train.models import get_config

    return PreprocessSpec.from_dict(source.run["preprocess"]) if source.run else get_config(source.name).preprocess


def recorded_threshold(source: Source) -> Optional[Dict]:
    """The run's threshold, chosen on validation at training (None for a bare model file)."""
    if source.metrics and "threshold" in source.metrics:
        t = source.metrics["threshold"]
        return {"threshold": float(t["value"]), "rule": t["rule"], "chosen_on": t["chosen_on"]}
    return None


def _threshold(source: Source, model, load_val: Callable[[], LoadedSplit]) -> Dict:
    """The run's threshold; else Youden on the validation split now."""
    recorded = recorded_threshold(source)
    if recorded is not None:
        return recorded
    from train.reference import choose_threshold, predict

    val = load_val()
    p = predict(model, val.images, val.spec)
    return {"threshold": choose_threshold(val.labels, p, "youden"), "rule": "youden",
            "chosen_on": "validation split (at export: the model file came without metrics.json)"}


def _calibration(train_records: List[Record], spec: PreprocessSpec, settings: Settings, tag: str):
    """(records, their loaded images, the calibration array). The model will see every view the
    runtime makes (eight orientations when the spec says so), so int8 ranges are calibrated on
    those views too: a filter for vertical bone meets horizontal bone in a turned view, and its
    range must not clip there."""
    records = choose_calibration(train_records, settings.calibration_size, settings.seed)
    train_ids = {r.image_id for r in train_records}
    strays = [r.image_id for r in records if r.image_id not in train_ids]
    if strays:  # calibrating on test images would let the check grade what the quantizer was tuned on
        raise ExportError(f"calibration images outside the training split: {', '.join(strays[:3])}")
    loaded = load_images(records, spec, f"{tag} calibration images", settings.progress)
    calibration = np.concatenate([views(x, spec) for x in loaded.images]) if len(loaded.images) else loaded.images
    return records, loaded, calibration


def _rewrite(model, calib: LoadedSplit, calibration: np.ndarray, tag: str):
    """The model rewritten for int8 where the rewrite is exact, and what was done."""
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
    return exported, rewrite


def prepare(source: Source, settings: Settings) -> Prepared:
    """Everything the bundle is made from, checked before any file is written."""
    import keras

    from train.models import get_config

    started = time.time()
    tag = f"[{source.name}]"
    cfg = get_config(source.name)
    spec = source_spec(source)
    dataset = _dataset(source, settings.data)
    parts = records_by_split(dataset, load_split(source.split_path, dataset))
    model = keras.models.load_model(source.model_path, compile=False)
    model_input = tuple(model.inputs[0].shape[1:])
    if model_input != (spec.size, spec.size, spec.channels):
        raise ExportError(f"{source.model_path}: takes {model_input}, but the PreprocessSpec makes "
                          f"{(spec.size, spec.size, spec.channels)}")

    calib_records, calib, calibration = _calibration(parts["train"], spec, settings, tag)
    test = load_images(parts["test"], spec, f"{tag} test images", settings.progress)
    threshold = _threshold(source, model, lambda: load_images(parts["val"], spec, f"{tag} val images",
                                                              settings.progress))
    data = {"name": dataset.name, "phantom": bool(dataset.phantom), "provenance": dataset.provenance,
            "dataset_counts": dataset.counts(), "split_sha256": sha256_file(source.split_path),
            "split_counts": split_summary(parts),
            "calibration": {"split": "train", "n": len(calib_records), "seed": settings.seed,
                            "stratified_by": "label x region", "ids_sha256": ids_sha256(calib_records),
                            "views_per_image": spec.n_views,
                            "ids": [r.image_id for r in calib_records]}}

    exported, rewrite = _rewrite(model, calib, calibration, tag)
    head, head_note = None, None
    try:
        head = derive_head(exported, cfg.gradcam_layer)
    except UnsupportedHead as exc:
        head_note = str(exc)
        log(f"{tag} no Grad-CAM head: {exc}")
    serving = converters.serving_model(exported, head.layer if head else None, head.hidden_layer if head else None)
    return Prepared(source, tag, started, spec, cfg.gradcam_layer, model, serving, rewrite, head, head_note,
                    calibration, test, threshold, data)


# ----------------------------------------------------------------------------------- convert

def convert(prep: Prepared, stage: Path, settings: Settings) -> Dict:
    """Write every artifact and the Grad-CAM head into `stage`; return the pending manifest."""
    artifacts: Dict[str, Dict] = {}
    for key, path, seconds in converters.write_artifacts(settings.artifacts, prep.serving, stage, prep.calibration):
        kind = converters.ARTIFACTS[key]
        artifacts[key] = {"file": path.name, "format": kind.format, "precision": kind.precision,
                          "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        log(f"{prep.tag} wrote {path.name} ({path.stat().st_size / 1e6:.2f} MB, {seconds:.1f} s)")
    artifacts = {k: artifacts[k] for k in settings.artifacts}
    files = {a["file"]: a["sha256"] for a in artifacts.values()}
    gradcam = None
    head = prep.head
    if head is not None:
        blob, index = head_file_bytes(head)
        (stage / HEAD_FILE).write_bytes(blob)
        files[HEAD_FILE] = sha256_file(stage / HEAD_FILE)
        gradcam = {"method": "Grad-CAM (channel weights = spatial mean of d logit / d features)",
                   "layer": head.layer, "feature_shape": list(head.feature_shape), "file": HEAD_FILE,
                   "dtype": "float32 little-endian", "arrays": index,
                   "needs": ["features"] + (["hidden"] if head.hidden_layer else []),
                   "hidden_layer": head.hidden_layer}
    source, spec = prep.source, prep.spec
    run = source.run or {}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "status": "pending",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "title": f"{source.name} on " + ("PHANTOM data: DEMONSTRATION ONLY, not for patients"
                                         if source.phantom else run.get("data", {}).get("name", "unknown data")),
        "demonstration_only": bool(source.phantom or prep.data["phantom"]),
        "model": {"name": source.name, "description": run.get("model", {}).get("description"),
                  "complexity": run.get("model", {}).get("complexity"),
                  "input": {"name": "image", "shape": [1, spec.size, spec.size, 1], "dtype": "float32",
                            "range": [0.0, 1.0]},
                  "outputs": converters.output_spec(prep.serving), "export_rewrite": prep.rewrite,
                  "source": source.origin},
        "preprocess": preprocess_section(spec),
        "decision": decision_section(prep.threshold),
        "gradcam": gradcam, "gradcam_unavailable": prep.head_note,
        "artifacts": artifacts,
        "data": prep.data,
        "provenance": {"export_command": settings.command, "versions": versions(EXPORT_PACKAGES),
                       "training_command": run.get("command"), "training_seed": run.get("training", {}).get("seed"),
                       "trained_with": run.get("versions")},
        "files": files,
    }
    (stage / MANIFEST).write_text(json.dumps(seal(manifest), indent=2) + "\n")  # pending, for the check
    return manifest


def preprocess_section(spec: PreprocessSpec) -> Dict:
    """The manifest's `preprocess`: the spec the device follows, and how files are decoded."""
    return {**spec.to_dict(), "decode": DECODE}


def decision_section(threshold: Dict) -> Dict:
    """The manifest's `decision`: the threshold, its rule, and what the output means."""
    return {**threshold, "positive_class": "fractured", "output": "prob = P(fractured), sigmoid"}


# ------------------------------------------------------------------------------------- check

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


def check(prep: Prepared, stage: Path, manifest: Dict, settings: Settings) -> bool:
    """Run each artifact of the staged bundle through the edge runtime against the float model on
    the test split; record the metrics, the verdict and (when accepted) the self-test answers in
    `manifest`. Returns whether every artifact passed."""
    from train.reference import agreement, boxed_positives, gradcam_reference, localise, predict

    bundle = load_bundle(stage, require_accepted=False, trusted_key=False)  # signed after acceptance
    test, spec, head, tag = prep.test, prep.spec, prep.head, prep.tag
    threshold = prep.threshold["threshold"]
    p_float = predict(prep.model, test.images, spec)
    cams_ref = gradcam_reference(prep.model, head.layer, test.images, spec) if head else None
    ref = classification(test.labels, p_float, threshold)
    boxed = boxed_positives(test.records) if head else []
    boxed_records = [test.records[i] for i in boxed]
    boxed_shapes = [test.shapes[i] for i in boxed] if test.shapes else None
    loc_ref = localise(cams_ref[boxed], boxed_records, spec, boxed_shapes) if boxed else None
    passed = True
    for key, entry in manifest["artifacts"].items():
        t0 = time.time()
        p_art, cams, backend, io = _run_artifact(bundle, key, test, head is not None)
        m = compare(test.labels, p_float, p_art, threshold, cams_ref, cams)
        if loc_ref is not None:  # reported beside the float reference's, not gated
            scores, summary = localise(cams[boxed], boxed_records, spec, boxed_shapes)
            m["localisation"] = {**summary, "vs_float_keras": agreement(scores, loc_ref[0])}
        bad = failures(m, settings.tolerances, entry["precision"])
        passed &= not bad
        entry.update(metrics=m, check={"passed": not bad, "failures": bad, "backend": backend})
        if io:
            entry["io"] = io
        log(f"{tag} {key}: AUC {m['auc'] if m['auc'] is None else round(m['auc'], 4)}, agreement "
            f"{m['agreement']:.3f}, mean |Δp| {m['mean_abs_diff']:.4f} -> {'pass' if not bad else 'FAIL ' + '; '.join(bad)}"
            f" ({time.time() - t0:.1f} s)")
    model_path = prep.source.model_path
    manifest["reference"] = {"float_keras": {**ref, "n": int(len(test.labels)), "file": model_path.name,
                                             "bytes": model_path.stat().st_size, "sha256": sha256_file(model_path)}}
    if loc_ref is not None:
        manifest["reference"]["float_keras"]["localisation"] = loc_ref[1]
    manifest["check"] = {"split": "test", "n": int(len(test.labels)), "skipped": test.skipped,
                         "tolerances": settings.tolerances.to_dict(), "passed": bool(passed),
                         "runtime": "edge_runtime: its own image loading, preprocessing, interpreters and Grad-CAM"}
    manifest["status"] = "accepted" if passed else "rejected"
    manifest["default_artifacts"] = _default_artifacts(manifest["artifacts"])
    if passed:
        manifest["self_test"] = _self_test(bundle, list(manifest["artifacts"]))
    return bool(passed)


def _default_artifacts(artifacts: Dict[str, Dict]) -> Dict[str, str]:
    """Per format, the int8 artifact where there is one, else the first of that format."""
    out = {}
    for fmt in ("tflite", "onnx"):
        of_format = [k for k, a in artifacts.items() if a["format"] == fmt]
        int8 = [k for k in of_format if artifacts[k]["precision"] == "int8"]
        if of_format:
            out[fmt] = (int8 or of_format)[0]
    return out


def _self_test(bundle, keys) -> Dict:
    """Each artifact's answers on the runtime's fixed self-test images, recorded so that a device
    can check it reproduces them before it switches to this bundle (python -m device update)."""
    from edge_runtime import selftest
    from edge_runtime.backends import BackendError

    predictors = {}
    for key in keys:
        try:
            predictors[key] = Predictor(bundle, "auto", key, threads=1, gradcam=False)
        except BackendError:  # no interpreter for this format here: that artifact is not self-tested
            continue
    return selftest.record(bundle, predictors)


# ----------------------------------------------------------------------------------- publish

def publish(prep: Prepared, stage: Path, manifest: Dict, out: Path, settings: Settings) -> Dict:
    """Write the report, seal the manifest, and move the staged bundle to OUT (accepted) or
    OUT.rejected; returns the manifest with `bundle_path`."""
    manifest["export_seconds"] = round(time.time() - prep.started, 1)
    (stage / REPORT).write_text(render([manifest], settings.command))
    manifest["files"][REPORT] = sha256_file(stage / REPORT)
    (stage / MANIFEST).write_text(json.dumps(seal(manifest), indent=2) + "\n")
    target = out if manifest["status"] == "accepted" else rejected_path(out)
    for old in (out, rejected_path(out)):
        if old.exists():
            shutil.rmtree(old)
    stage.rename(target)
    manifest["bundle_path"] = str(target)
    return manifest
