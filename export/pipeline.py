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
from edge_runtime.fracture_map import MapPooling, sigmoid
from edge_runtime.predictor import Predictor
from edge_runtime.preprocess import PreprocessSpec, views
from fracdata.data import PHANTOM_SOURCE, Dataset, Record, load_data, record_source
from fracdata.images import LoadedSplit, load_images
from fracdata.provenance import sha256_file, versions
from fracdata.runs import dataset_for_run
from fracdata.split import load_split, records_by_split, split_summary

from . import convert as converters
from . import probability, scope_film, scope_fit, scope_sets
from .calibration import choose_calibration, ids_sha256
from .check import Tolerances, by_source, classification, compare, content_cells, failures
from .errors import ExportError
from .gradcam_head import HeadSpec, UnsupportedHead, derive_head, head_file_bytes
from .report import render
from .rewrite import NotFoldable, check_equivalent, equalize_ranges, fold_batchnorm_after_relu
from .sources import Source

HEAD_FILE = "gradcam_head.f32"
EXPORT_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy", "pillow")
REPORT = "report.md"
REST_BOOTSTRAP = 1000  # resamples for the rest proxy's AUC interval (reported, not gated)
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
    views: Optional[str] = None  # other views than the run's (single | dihedral); the threshold is then re-chosen
    pooling: Optional[str] = None  # a fracture map's pooling, if not the run's ('topk:4'); the threshold is then re-chosen
    scope_size: int = 5000  # training images the out-of-scope gate's means and covariances are fitted on (0: no gate)
    scope_photos: int = 150  # per group, radiographs photographed for the gate's film groups (0: none; films not gated)
    scope_outliers: int = 40  # per generated out-of-scope kind, images the gate's outlier direction is fitted on (0: none)
    photo_workers: Optional[int] = None  # processes that photograph them (default: the CPUs)
    calibrate: bool = True  # Platt-scale the probability on validation
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
    fracture_map: Optional[Dict] = None  # the manifest's fracture_map section (a map model), else None
    val: Optional[LoadedSplit] = None  # the validation split: the gate's thresholds, the calibration
    scope: Optional[Dict] = None  # the manifest's scope section (thresholds filled by check), else None
    scope_blob: Optional[bytes] = None  # its float32 file
    val_film: Optional[object] = None  # scope_film.Photographed: validation radiographs photographed (film thresholds)
    test_film: Optional[object] = None  # ... and test ones (what the gate refuses of photographed films, reported)
    # the gate's training images and training photos, with their records: every threshold is chosen on
    # these, each scored by the gate refitted without its fold, and validation together (a 99% tail from
    # 45 real validation radiographs is their largest)
    scope_train: Optional[tuple] = None  # (files (n, size, size, 1), records)
    scope_train_photos: Optional[tuple] = None  # (photos (n, size, size, 1), records, groups)
    scope_cross: Optional[List[Dict]] = None  # the gate refitted without each fold (scope_fit.cross_fits)
    platt: Optional[Dict] = None  # {"a", "b"}: P = sigmoid(a * logit + b), fitted on validation
    val_probs: Optional[np.ndarray] = None  # the float model's on the validation split (the fit; its ECE)
    platt_note: Optional[str] = None  # why the probability is not calibrated


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
        out = {"threshold": float(t["value"]), "rule": t["rule"], "chosen_on": t["chosen_on"]}
        if "per_source" in t:  # a fracture map's: what the threshold reaches on each validation source
            out["validation"] = t["per_source"]
        return out
    return None


def _threshold(source: Source, model, load_val: Callable[[], LoadedSplit], changed: str = "") -> Dict:
    """The run's threshold; with other views or pooling than the run's (`changed` says which), the
    run's rule applied again on the validation split (the answers moved); without a recorded one,
    Youden on validation now."""
    recorded = recorded_threshold(source)
    if recorded is not None and not changed:
        return recorded
    from train.reference import choose_threshold, is_map_model, predict

    val = load_val()
    p = predict(model, val.images, val.spec)
    if recorded is not None and is_map_model(model):
        from train.map_evaluate import choose_map_threshold

        t = choose_map_threshold(val.records, p, recorded["rule"])
        return {"threshold": t["value"], "rule": t["rule"], "validation": t["per_source"],
                "chosen_on": f"{t['chosen_on']} (at export, for {changed})"}
    if recorded is not None:
        return {"threshold": choose_threshold(val.labels, p, recorded["rule"]), "rule": recorded["rule"],
                "chosen_on": f"validation split (at export, for {changed})"}
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


def _layer_pooling(model) -> MapPooling:
    """How a fracture-map model's own 'logit' layer pools its map."""
    layer = model.get_layer("logit")
    return MapPooling(layer.kind, layer.r, layer.k)


def _with_pooling(model, name: str, size: int, text: str):
    """(model, the new pooling's label, or None when it is the model's own). The pooling has no
    weights: the map is the model, and how a device pools it into one answer is a deployment
    choice, measured on validation (train.map_evaluate's comparison of poolings)."""
    from train.models import build_model, get_config

    if not get_config(name).is_map:
        raise ExportError(f"--pooling {text}: {name} is not a fracture-map model (it has no map to pool)")
    try:
        wanted = MapPooling.parse(text)
    except ValueError as exc:
        raise ExportError(f"--pooling: {exc}") from None
    if _layer_pooling(model) == wanted:
        return model, None
    repooled = build_model(name, size=size, pooling=wanted)
    repooled.set_weights(model.get_weights())
    return repooled, wanted.label()


def prepare(source: Source, settings: Settings) -> Prepared:
    """Everything the bundle is made from, checked before any file is written."""
    from train.models import get_config, load_model

    started = time.time()
    tag = f"[{source.name}]"
    cfg = get_config(source.name)
    spec = source_spec(source)
    trained_views = spec.views
    if settings.views and settings.views != spec.views:
        from dataclasses import replace

        spec = replace(spec, views=settings.views)  # a deployment choice: the device averages these views
    dataset = _dataset(source, settings.data)
    parts = records_by_split(dataset, load_split(source.split_path, dataset))
    model = load_model(source.model_path)
    changed = [f"views={spec.views}"] if spec.views != trained_views else []
    if settings.pooling:
        model, repooled = _with_pooling(model, source.name, spec.size, settings.pooling)
        changed += [f"pooling={repooled}"] if repooled else []
    model_input = tuple(model.inputs[0].shape[1:])
    if model_input != (spec.size, spec.size, spec.channels):
        raise ExportError(f"{source.model_path}: takes {model_input}, but the PreprocessSpec makes "
                          f"{(spec.size, spec.size, spec.channels)}")

    calib_records, calib, calibration = _calibration(parts["train"], spec, settings, tag)
    test = load_images(parts["test"], spec, f"{tag} test images", settings.progress)
    val = load_images(parts["val"], spec, f"{tag} val images", settings.progress)
    threshold = _threshold(source, model, lambda: val, ", ".join(changed))
    data = {"name": dataset.name, "phantom": bool(dataset.phantom), "provenance": dataset.provenance,
            "real_non_fractured": sum(1 for r in dataset.records if r.label == 0 and record_source(r) != PHANTOM_SOURCE),
            "credit": dataset.provenance.get("licence_and_credit"),
            "dataset_counts": dataset.counts(), "split_sha256": sha256_file(source.split_path),
            "split_counts": split_summary(parts),
            "calibration": {"split": "train", "n": len(calib_records), "seed": settings.seed,
                            "stratified_by": "source x label x region",
                            "real": sum(1 for r in calib_records if record_source(r) != PHANTOM_SOURCE), "ids_sha256": ids_sha256(calib_records),
                            "views_per_image": spec.n_views,
                            "ids": [r.image_id for r in calib_records]}}

    exported, rewrite = _rewrite(model, calib, calibration, tag)
    head, head_note, fmap = None, None, None
    scope_layers = _scope_layers(exported, cfg.scope_layers) if settings.scope_size else []
    if settings.scope_size and len(scope_layers) < len(cfg.scope_layers):
        log(f"{tag} WARNING: the model lacks the gate's layers "
            f"{sorted(set(cfg.scope_layers) - set(scope_layers))}: " + ("the gate reads the others" if scope_layers
                                                                          else "no out-of-scope gate"))
    if cfg.is_map:
        pooling = _layer_pooling(model)
        serving = converters.map_serving_model(exported, scope_layers)
        grid = [int(d) for d in model.get_layer("map").output.shape[1:3]]
        fmap = {"output": "map", "pooling": pooling.to_dict(), "grid": grid, "stride": spec.size // grid[0],
                "heatmap": "sigmoid of each cell: P(fracture) there; the image's logit is the pooling of the "
                           "view-averaged cell logits (edge_runtime/fracture_map.py)"}
        head_note = "a fracture-map model: its own map is the heatmap (Grad-CAM is in the report, for comparison)"
    else:
        try:
            head = derive_head(exported, cfg.gradcam_layer)
        except UnsupportedHead as exc:
            head_note = str(exc)
            log(f"{tag} no Grad-CAM head: {exc}")
        serving = converters.serving_model(exported, head.layer if head else None, head.hidden_layer if head else None,
                                           scope_layers)
    prep = Prepared(source, tag, started, spec, cfg.gradcam_layer, model, serving, rewrite, head, head_note,
                    calibration, test, threshold, data, fmap, val)
    _fit_scope(prep, parts["train"], settings)
    _fit_platt(prep, settings)
    return prep


def _scope_layers(model, wanted: Sequence[str]) -> List[str]:
    """The layers whose pooled features the gate measures: the registry's, where the model has them."""
    names = {layer.name for layer in model.layers}
    return [n for n in wanted if n in names]


def _fit_scope(prep: Prepared, train_records: List[Record], settings: Settings) -> None:
    """The out-of-scope gate's means and covariances: file groups on up to `scope_size` training
    images, film groups on up to `scope_photos` photographed ones per group (scope_film.py)."""
    if "pooled" not in prep.serving.output:
        return
    records = choose_calibration(train_records, settings.scope_size, settings.seed)
    loaded = load_images(records, prep.spec, f"{prep.tag} out-of-scope fit images", settings.progress)
    pooled = scope_fit.pooled_features(prep.serving, prep.spec, loaded.images)
    train_groups = [scope_fit.group_of(r) for r in loaded.records]
    # Real radiographs processed as other X-ray systems would, in their radiograph's group: the gate
    # must keep those in scope (docs/results.md, "Radiographs from another X-ray system").
    copies = scope_sets.acquisition_copies(loaded, scope_fit.ACQUISITION_COPIES, settings.seed)
    row_records = list(loaded.records)  # each row's radiograph: its fold for the cross-fits
    if len(copies.images):
        pooled = np.concatenate([pooled, scope_fit.pooled_features(prep.serving, prep.spec, copies.images)])
        train_groups += [scope_fit.group_of(r) for r in copies.records]
        row_records += copies.records
    val_groups = [scope_fit.group_of(r) for r in prep.val.records]
    film, film_pooled = None, np.zeros((0, pooled.shape[1]))
    if settings.scope_photos:
        shots = {}
        for split, recs in (("train", train_records), ("val", prep.val.records), ("test", prep.test.records)):
            chosen = scope_film.choose(recs, settings.scope_photos, settings.seed)
            shots[split] = scope_film.photograph(chosen, prep.spec, settings.seed, split,
                                                 f"{prep.tag} out-of-scope film photos ({split})", settings.progress,
                                                 settings.photo_workers)
        if shots["train"].records:
            film_pooled = scope_fit.pooled_features(prep.serving, prep.spec, shots["train"].images)
            pooled = np.concatenate([pooled, film_pooled])
            train_groups += shots["train"].groups
            row_records += shots["train"].records
        val_groups += shots["val"].groups
        prep.val_film, prep.test_film = shots["val"], shots["test"]
        film = {"simulator": "device/simulate.py, a scene drawn per photo over every condition a clinic produces "
                             f"({', '.join(scope_film.conditions())}), read back by device/triage.read_film",
                "per_group": settings.scope_photos, "seed": settings.seed,
                **{split: sh.summary() for split, sh in shots.items()}}
    try:
        fitted = scope_fit.fit(pooled, train_groups, val_groups)
    except ValueError as exc:
        log(f"{prep.tag} no out-of-scope gate: {exc}")
        return
    outlier = _fit_outlier(prep, pooled, film_pooled, settings) if settings.scope_outliers else None
    prep.scope_cross = scope_fit.cross_fits(pooled, train_groups, [scope_fit.fold_of(r) for r in row_records],
                                            fitted["groups"], outlier["outside"] if outlier is not None else None)
    prep.scope_train = (loaded.images, loaded.records)
    if settings.scope_photos and shots["train"].records:
        prep.scope_train_photos = (shots["train"].images, shots["train"].records, shots["train"].groups)
    prep.scope, prep.scope_blob = scope_fit.manifest_section(fitted, scope_fit.pooled_layers(prep.serving), film,
                                                             outlier)
    log(f"{prep.tag} out-of-scope gate fitted on {len(train_groups)} training images and photos "
        f"({', '.join(fitted['groups'])})")
    if film is not None and "film_groups" not in prep.scope:
        log(f"{prep.tag} WARNING: no film group has {scope_fit.MIN_GROUP} photos read in training and validation: the "
            "device will measure photos of film but not refuse them (scope.film_photos says what was read)")


def _fit_outlier(prep: Prepared, inside: np.ndarray, film_inside: np.ndarray, settings: Settings) -> Optional[Dict]:
    """The gate's outlier direction: every training image, copy and photo above inside; outside, a
    generated out-of-scope set (fracdata.ood, its own seed), as files and, where films are
    photographed, photographed too. None (and said) when none of them could be read."""
    import tempfile

    from fracdata.ood import write_ood_set

    with tempfile.TemporaryDirectory(prefix="scope-outliers-") as tmp:
        folder = write_ood_set(Path(tmp), settings.scope_outliers, scope_fit.OUTLIER_SEED,
                               progress=settings.progress)
        files = scope_sets.read_ood(folder, prep.spec)
        outside = [scope_fit.pooled_features(prep.serving, prep.spec, files.images)] if len(files.images) else []
        photos = None
        if settings.scope_photos and len(film_inside):
            photos = scope_sets.photograph_ood(folder, prep.spec, settings.seed,
                                               f"{prep.tag} out-of-scope photos of generated images",
                                               settings.progress, settings.photo_workers)
            if len(photos.images):
                outside.append(scope_fit.pooled_features(prep.serving, prep.spec, photos.images))
    if not outside:
        log(f"{prep.tag} no outlier direction: none of the generated out-of-scope images could be read "
            f"(files: {files.unread}; photos: {photos.unread if photos is not None else 'none taken'})")
        return None
    direction = scope_fit.fit_direction(inside, np.concatenate(outside))
    fitted_on = {"inside": int(len(inside)), "generator": "fracdata.ood", "seed": scope_fit.OUTLIER_SEED,
                 "per_kind": settings.scope_outliers, "outside_files": files.by_kind(),
                 **({"outside_photos": photos.by_kind()} if photos is not None else {})}
    log(f"{prep.tag} outlier direction fitted on {len(inside)} in-scope images and photos and "
        f"{sum(len(o) for o in outside)} generated out-of-scope ones")
    return {"direction": direction, "fitted_on": fitted_on, "outside": np.concatenate(outside)}


def _fit_platt(prep: Prepared, settings: Settings) -> None:
    """Platt scaling of the float model's validation probabilities (needs both classes there)."""
    if not settings.calibrate:
        prep.platt_note = "not asked for (--no-calibrate)"
        return
    from train.reference import predict, predict_maps

    prep.val_probs = (predict_maps(prep.model, prep.val.images, prep.spec)[0] if prep.fracture_map is not None
                      else predict(prep.model, prep.val.images, prep.spec))
    try:
        prep.platt = probability.fit_platt(prep.val_probs, prep.val.labels)
    except ValueError as exc:
        prep.platt_note = str(exc)
        log(f"{prep.tag} probabilities not calibrated: {exc}")


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
    if prep.scope is not None:
        (stage / scope_fit.SCOPE_FILE).write_bytes(prep.scope_blob)
        files[scope_fit.SCOPE_FILE] = sha256_file(stage / scope_fit.SCOPE_FILE)
    source, spec = prep.source, prep.spec
    run = source.run or {}
    # the lowest version that describes it: runtimes that predate the map, or the gate and the
    # calibration, still read the others
    version = (FORMAT_VERSION if prep.scope is not None and "outlier" in prep.scope
               else 4 if prep.scope is not None or prep.platt is not None
               else 3 if prep.fracture_map is not None else 2)
    manifest = {
        "format": FORMAT, "format_version": version, "status": "pending",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "title": title(source, prep.data),
        "demonstration_only": bool(source.phantom or prep.data["phantom"] or not prep.data["real_non_fractured"]),
        "model": {"name": source.name, "description": run.get("model", {}).get("description"),
                  "complexity": run.get("model", {}).get("complexity"),
                  "input": {"name": "image", "shape": [1, spec.size, spec.size, 1], "dtype": "float32",
                            "range": [0.0, 1.0]},
                  "outputs": converters.output_spec(prep.serving), "export_rewrite": prep.rewrite,
                  "source": source.origin},
        "preprocess": preprocess_section(spec),
        "decision": decision_section(prep.threshold, prep.fracture_map is not None, prep.platt, prep.platt_note),
        "gradcam": gradcam, "gradcam_unavailable": prep.head_note,
        **({"fracture_map": prep.fracture_map} if prep.fracture_map else {}),
        **({"scope": dict(prep.scope)} if prep.scope else {}),
        "artifacts": artifacts,
        "data": prep.data,
        "provenance": {"export_command": settings.command, "versions": versions(EXPORT_PACKAGES),
                       "training_command": run.get("command"), "training_seed": run.get("training", {}).get("seed"),
                       "trained_with": run.get("versions")},
        "files": files,
    }
    (stage / MANIFEST).write_text(json.dumps(seal(manifest), indent=2) + "\n")  # pending, for the check
    return manifest


def title(source: Source, data: Dict) -> str:
    """What a person reads first: what the model was trained on, and whether it may meet patients."""
    if source.phantom or data["phantom"]:
        return f"{source.name} on PHANTOM data: DEMONSTRATION ONLY, not for patients"
    name = data.get("name", "unknown data")
    if not data["real_non_fractured"]:
        return (f"{source.name} on {name}: trained on real radiographs of fractures only (no real non-fractured "
                "radiographs, so its false alarms on them are unmeasured): a research demonstration, NOT for patients")
    return f"{source.name} on {name}"


def preprocess_section(spec: PreprocessSpec) -> Dict:
    """The manifest's `preprocess`: the spec the device follows, and how files are decoded."""
    return {**spec.to_dict(), "decode": DECODE}


def decision_section(threshold: Dict, fracture_map: bool = False, platt: Optional[Dict] = None,
                     platt_note: Optional[str] = None) -> Dict:
    """The manifest's `decision`: the threshold, its rule, and what the output means. Calibrated,
    the threshold is the model's own carried onto the calibrated scale (the same images pass it)."""
    output = ("P(fractured) = sigmoid(pooling of the view-averaged map of cell logits), fracture_map.pooling"
              if fracture_map else "prob = P(fractured), sigmoid")
    out = {**threshold, "positive_class": "fractured", "output": output}
    if platt is not None:
        t = float(probability.apply(np.array([threshold["threshold"]]), platt)[0])
        out.update(threshold=t, threshold_model=threshold["threshold"],
                   calibration={"method": "platt", "a": platt["a"], "b": platt["b"], "fitted_on": "validation split",
                                "formula": "P = sigmoid(a * logit(model probability) + b)"},
                   output=output + "; then calibrated (decision.calibration); the threshold is on the calibrated "
                                   "scale, threshold_model on the model's own")
    elif platt_note:
        out["calibration_unavailable"] = platt_note
    return out


# ------------------------------------------------------------------------------------- check

def _run_artifact(bundle, key: str, test: LoadedSplit, with_cam: bool):
    """Probabilities, raw Grad-CAM maps and pooled features (or None) of one artifact on the test
    split, run by the edge runtime itself; and the open Predictor."""
    pred = Predictor(bundle, artifact=key, gradcam=with_cam)
    probs, cams, pooled = [], [], []
    for x in test.images:
        p, cam, f = pred.assess(x)  # the model's own probability, as the float reference's
        probs.append(p)
        if with_cam:
            cams.append(cam)
        pooled.append(f)
    return (np.array(probs), (np.stack(cams) if with_cam else None),
            (pooled if pred.gate is not None else None), pred)


def _rests(prep: Prepared, p: np.ndarray, logits: np.ndarray, threshold: float) -> Dict:
    """Per real source: the rest of each fractured test radiograph (its boxes and their ring left
    out) called fractured at the threshold, and the fractured images ranked above those rests
    (train.map_evaluate.rest_by_source); the same for the float model and each artifact."""
    from train.map_evaluate import rest_by_source

    return rest_by_source(prep.test, p, logits, MapPooling.from_dict(prep.fracture_map["pooling"]), threshold,
                          n_boot=REST_BOOTSTRAP)


def _scope_threshold(prep: Prepared, pred, manifest: Dict, key: str, test_pooled: List) -> Dict:
    """One artifact's gate thresholds, chosen through the runtime (files for the file groups,
    photographed films for the film groups) on validation and on the training images each scored by
    the gate refitted without its fold (scope_fit.cross_fits); what it refuses of the test split, per
    source, and of photographed test radiographs (reported: a split of a few hundred cannot gate
    a rate of 1%)."""
    import dataclasses

    gate = pred.gate
    film = prep.val_film if gate.covers_film else None
    val_files = [pred.assess(x)[2] for x in prep.val.images]
    val_photos = [pred.assess(x)[2] for x in film.images] if film is not None else []
    val = np.stack([gate.distances(p) for p in val_files + val_photos])
    val_groups = [scope_fit.group_of(r) for r in prep.val.records] + (film.groups if film is not None else [])
    # the training images (and photos), each scored by the gate refitted without its fold
    train_files, train_records = prep.scope_train if prep.scope_train is not None else ([], [])
    held_groups = [scope_fit.group_of(r) for r in train_records]
    held_d, held_z = scope_fit.held_out(prep.scope_cross or [], [pred.assess(x)[2] for x in train_files],
                                        held_groups, [scope_fit.fold_of(r) for r in train_records], gate.groups)
    photo_d, photo_z, photo_sources = np.zeros(0), np.zeros(0), []
    if film is not None and prep.scope_train_photos is not None:
        photos, photo_records, photo_groups = prep.scope_train_photos
        photo_d, photo_z = scope_fit.held_out(prep.scope_cross or [], [pred.assess(x)[2] for x in photos],
                                              photo_groups, [scope_fit.fold_of(r) for r in photo_records],
                                              gate.groups)
        held_groups += list(photo_groups)
        photo_sources = scope_fit.sources_of(photo_records)
    t = np.asarray(scope_fit.thresholds(val, val_groups, gate.groups, held=np.r_[held_d, photo_d],
                                        held_groups=held_groups))
    manifest["scope"]["thresholds"][key] = t.tolist()
    out: Dict = {"thresholds": dict(zip(gate.groups, t.tolist()))}
    outlier = None
    if gate.outlier is not None:  # a logit for files, and one for flattened films (the file's where none)
        t_file = scope_fit.direction_threshold([gate.outlier_logit(p) for p in val_files] + list(held_z),
                                               scope_fit.sources_of(prep.val.records) + scope_fit.sources_of(train_records))
        t_film = t_file
        if val_photos:
            t_film = scope_fit.direction_threshold([gate.outlier_logit(p) for p in val_photos] + list(photo_z),
                                                   scope_fit.sources_of(film.records) + list(photo_sources))
        outlier = (t_file, t_film)
        manifest["scope"]["outlier"]["thresholds"][key] = {"file": t_file, "film": t_film}
        out["outlier_thresholds"] = {"file": t_file, "film": t_film}
    if np.isfinite(held_d).any():  # training files kept out of fold, by their own group's distance (the runtime measures
        # every group: a lower bound on what it keeps) and the direction
        own = np.array([t[list(gate.groups).index(g)] if g in gate.groups else np.nan
                        for g in held_groups[:len(held_d)]])
        kept_files = (held_d <= own) & ((held_z <= outlier[0]) if outlier is not None else True)
        out["training_out_of_fold_kept"] = float(np.mean(kept_files[np.isfinite(held_d)]))
    chosen = dataclasses.replace(gate, thresholds=t, outlier_thresholds=outlier)
    kept = np.array([chosen.score(p) <= 1.0 for p in val_files] + [chosen.score(p, True) <= 1.0 for p in val_photos])
    test = np.array([chosen.score(p) for p in test_pooled])
    out.update(validation_kept=float(np.mean(kept[:len(val_files)])),
               test_refused=scope_fit.refused_by_source(test, scope_fit.sources_of(prep.test.records)))
    if film is not None and prep.test_film is not None and prep.test_film.records:
        photo_scores = np.array([chosen.score(pred.assess(x)[2], True) for x in prep.test_film.images])
        out["validation_photos_kept"] = float(np.mean(kept[len(val_files):])) if val_photos else None
        out["test_photos_refused"] = scope_fit.refused_by_source(photo_scores,
                                                                 scope_fit.sources_of(prep.test_film.records))
    return out


def check(prep: Prepared, stage: Path, manifest: Dict, settings: Settings) -> bool:
    """Run each artifact of the staged bundle through the edge runtime against the float model on
    the test split; record the metrics, the verdict and (when accepted) the self-test answers in
    `manifest`. Returns whether every artifact passed."""
    from train.reference import agreement, boxed_positives, gradcam_reference, localise, predict

    bundle = load_bundle(stage, require_accepted=False, trusted_key=False)  # signed after acceptance
    test, spec, head, tag = prep.test, prep.spec, prep.head, prep.tag
    threshold = prep.threshold["threshold"]
    is_map = prep.fracture_map is not None
    if is_map:  # the map is the heatmap: compared cell by cell, P(fracture) against P(fracture)
        from train.reference import predict_maps

        p_float, logits = predict_maps(prep.model, test.images, spec)
        cams_ref = sigmoid(logits).astype(np.float32)
    else:
        p_float = predict(prep.model, test.images, spec)
        cams_ref = gradcam_reference(prep.model, head.layer, test.images, spec) if head else None
    real = np.array([record_source(r) != PHANTOM_SOURCE for r in test.records], bool)
    sources = np.array([r.source or "" for r in test.records])
    cells = (np.stack([content_cells(sh, spec, cams_ref.shape[1:]) for sh in test.shapes])
             if is_map and test.shapes and len(test.shapes) == len(test.records) else None)
    ref = classification(test.labels, p_float, threshold)
    ref_by_source = by_source(test.labels, p_float, threshold, sources)
    boxed = boxed_positives(test.records) if cams_ref is not None else []
    boxed_records = [test.records[i] for i in boxed]
    boxed_shapes = [test.shapes[i] for i in boxed] if test.shapes else None
    loc_ref = localise(cams_ref[boxed], boxed_records, spec, boxed_shapes) if boxed else None
    passed = True
    for key, entry in manifest["artifacts"].items():
        t0 = time.time()
        p_art, cams, dist, pred = _run_artifact(bundle, key, test, cams_ref is not None)
        backend, io = pred.backend, pred.session.io_spec()
        m = compare(test.labels, p_float, p_art, threshold, cams_ref, cams, "map" if is_map else "gradcam", real, sources, cells)
        if dist is not None:
            m["scope"] = _scope_threshold(prep, pred, manifest, key, dist)
        if loc_ref is not None:  # reported beside the float reference's, not gated
            scores, summary = localise(cams[boxed], boxed_records, spec, boxed_shapes)
            m["localisation"] = {**summary, "vs_float_keras": agreement(scores, loc_ref[0])}
        if is_map:  # the rest of each real radiograph, its boxes left out (reported, not gated)
            rest = _rests(prep, p_art, probability.logit(cams), threshold)  # the heatmap's P back to cell logits
            if rest:
                m["box_free_rest"] = rest
        bad = failures(m, settings.tolerances, entry["precision"])
        passed &= not bad
        entry.update(metrics=m, check={"passed": not bad, "failures": bad, "backend": backend})
        if io:
            entry["io"] = io
        auc_text = ("AUC per source in the report" if "by_source" in m
                    else f"AUC {m['auc'] if m['auc'] is None else round(m['auc'], 4)}")
        log(f"{tag} {key}: {auc_text}, agreement "
            f"{m['agreement']:.3f}, mean |Δp| {m['mean_abs_diff']:.4f} -> {'pass' if not bad else 'FAIL ' + '; '.join(bad)}"
            f" ({time.time() - t0:.1f} s)")
    model_path = prep.source.model_path
    manifest["reference"] = {"float_keras": {**ref, "n": int(len(test.labels)), "file": model_path.name,
                                             "bytes": model_path.stat().st_size, "sha256": sha256_file(model_path)}}
    if ref_by_source:
        manifest["reference"]["float_keras"]["by_source"] = ref_by_source
    if loc_ref is not None:
        manifest["reference"]["float_keras"]["localisation"] = loc_ref[1]
    if is_map:
        rest = _rests(prep, p_float, logits, threshold)
        if rest:
            manifest["reference"]["float_keras"]["box_free_rest"] = rest
    if prep.platt is not None:
        manifest["decision"]["calibration"]["ece"] = {
            "validation": probability.summary(prep.val_probs, prep.val.labels, prep.platt,
                                              scope_fit.sources_of(prep.val.records)),
            "test": probability.summary(p_float, test.labels, prep.platt, scope_fit.sources_of(test.records)),
            "bins": probability.BINS, "plot": probability.PLOT}
        probability.plot(stage / probability.PLOT, p_float, test.labels, prep.platt,
                         f"{prep.source.name}: reliability on the test split (n={len(test.labels)})")
        manifest["files"][probability.PLOT] = sha256_file(stage / probability.PLOT)
    if is_map and boxed:  # what Grad-CAM of the same float model would have shown, for comparison
        cams = gradcam_reference(prep.model, prep.gradcam_layer, test.images[boxed], spec)
        manifest["reference"]["float_keras"]["gradcam_localisation_for_comparison"] = \
            localise(cams, boxed_records, spec, boxed_shapes)[1]
    manifest["check"] = {"split": "test", "n": int(len(test.labels)), "skipped": test.skipped,
                         "tolerances": settings.tolerances.to_dict(), "passed": bool(passed),
                         "runtime": "edge_runtime: its own image loading, preprocessing, interpreters and "
                                    + ("fracture map" if is_map else "Grad-CAM")}
    manifest["status"] = "accepted" if passed else "rejected"
    manifest["default_artifacts"] = _default_artifacts(manifest["artifacts"])
    if passed:
        manifest["self_test"] = _self_test(bundle, list(manifest["artifacts"]), manifest)
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


def _self_test(bundle, keys, manifest: Dict) -> Dict:
    """Each artifact's answers on the runtime's fixed self-test images (and its gate's scores),
    recorded so that a device can check it reproduces them before it switches to this bundle
    (python -m device update). The staged bundle was loaded before check chose the gate's
    thresholds: each predictor's gate gets its artifact's from the manifest."""
    import dataclasses

    from edge_runtime import selftest
    from edge_runtime.backends import BackendError

    predictors = {}
    for key in keys:
        try:
            pred = Predictor(bundle, "auto", key, threads=1, gradcam=False)
        except BackendError:  # no interpreter for this format here: that artifact is not self-tested
            continue
        scope = manifest.get("scope") or {}
        chosen = scope.get("thresholds", {}).get(key)
        outlier = (scope.get("outlier") or {}).get("thresholds", {}).get(key)
        if pred.gate is not None and chosen is not None:
            pred.gate = dataclasses.replace(pred.gate, thresholds=np.asarray(chosen, np.float64),
                                            outlier_thresholds=None if outlier is None else
                                            (float(outlier["file"]), float(outlier["film"])))
        predictors[key] = pred
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
