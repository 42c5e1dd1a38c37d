"""`python -m train.evaluate --bundle DIR --data DATA`: a bundle run by the edge runtime, exactly as
a device runs it (its decoding, preprocessing, interpreters and Grad-CAM), on any data the
readers read, with every artifact the bundle holds side by side.

- Both classes present: ROC AUC with its bootstrap CI, sensitivity and specificity at the
  bundle's threshold. Positives only (a set of fractures, such as the forearm radiographs): no
  AUC can exist; sensitivity at the threshold with its Wilson 95% CI, and the distribution of
  probabilities. Unlabelled images (--unboxed unknown) get their distribution reported apart.
- Localisation on every fractured image with boxes, per artifact and per region (pointing game,
  energy in boxes, chance levels; train/localisation.py), and how each artifact's maps agree with
  the first float artifact's (the reference: on an int8 artifact this is the on-device int8
  Grad-CAM next to the float one).
- OUT/metrics.json, OUT/predictions.csv, and overlays of a few cases with their boxes drawn in
  OUT/overlays/ (OUT defaults to runs/eval/<bundle>_on_<data>/, never inside the repository's
  tracked files: the overlays hold the radiographs' pixels).

TensorFlow is not imported.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_runtime.backends import BackendError
from edge_runtime.bundle import load_bundle, sha256_file
from edge_runtime.errors import ImageReadError
from edge_runtime.imageio import read_grayscale
from edge_runtime.inputs import read_image
from edge_runtime.overlay import save_overlay
from edge_runtime.predictor import OVERLAY_SIDE, Predictor
from edge_runtime.preprocess import checked_input

from . import metrics as M
from fracdata.data import UNLABELLED, DataError, Dataset, Record
from fracdata.progress import progress as progress_of
from .localisation import agreement, heat_on_image, score, summarise

QUANTILES = (0, 5, 25, 50, 75, 95, 100)


def distribution(p: Sequence[float], threshold: float) -> Dict[str, object]:
    p = np.asarray(p, dtype=np.float64)
    if not len(p):
        return {"n": 0}
    hist, _ = np.histogram(p, bins=10, range=(0.0, 1.0))
    return {"n": int(len(p)), "mean": float(p.mean()), "sd": float(p.std()),
            **{f"p{q}": float(np.percentile(p, q)) for q in QUANTILES},
            "at_or_above_threshold": float((p >= threshold).mean()),
            "histogram_0_to_1_by_0.1": [int(h) for h in hist]}


def classification(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int) -> Dict[str, object]:
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    out: Dict[str, object] = {"n": int(len(y)), "fractured": pos, "non_fractured": neg, "threshold": threshold}
    if pos and neg:
        out["roc_auc"] = M.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
        out["at_threshold"] = M.at_threshold(y, p, threshold)
    else:
        out["roc_auc"] = None
        out["why_no_auc"] = ("no non-fractured images: an AUC needs both classes" if pos else
                             "no fractured images: an AUC needs both classes")
    if pos:
        tp = int(((p >= threshold) & (y == 1)).sum())
        out["sensitivity"] = tp / pos
        out["sensitivity_ci95"] = M.wilson_interval(tp, pos)
        out["fractures_flagged"] = tp
    if neg:
        tn = int(((p < threshold) & (y == 0)).sum())
        out["specificity"] = tn / neg
        out["specificity_ci95"] = M.wilson_interval(tn, neg)
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def honest_label(manifest: Dict, ds: Dataset) -> str:
    trained = manifest.get("data", {}).get("name", "unknown data")
    if manifest.get("demonstration_only") and not ds.phantom:
        return (f"A model trained on PHANTOM (synthetic) radiographs — a demonstration model — run on "
                f"{ds.name} ({'real radiographs' if not ds.phantom else 'phantoms'}). It never saw a real "
                "radiograph: these numbers show how far phantom training carries, not how well a real model "
                "finds fractures.")
    if manifest.get("demonstration_only"):
        return f"A PHANTOM-trained demonstration model on phantom data ({ds.name}): a demonstration only."
    return f"A model trained on {trained}, run on {ds.name}."


def _same_data(manifest: Dict, ds: Dataset) -> bool:
    prov = manifest.get("data", {}).get("provenance", {}) or {}
    if ds.phantom and manifest.get("data", {}).get("phantom"):
        return (prov.get("phantom_images"), prov.get("phantom_seed")) == (
            ds.provenance.get("phantom_images"), ds.provenance.get("phantom_seed")) or \
            Path(str(prov.get("path", ""))).resolve() == Path(ds.root).resolve()
    return bool(prov.get("path")) and Path(str(prov["path"])).resolve() == Path(ds.root).resolve()


def select(ds: Dataset, subset: str, assignment: Optional[Dict[str, str]], limit: Optional[int]) -> List[Record]:
    records = sorted(ds.records + ds.unlabelled, key=lambda r: r.image_id)
    if subset != "all":
        if assignment is not None:
            records = [r for r in records if assignment.get(r.image_id) == subset]
        elif all(r.split is not None for r in records):
            records = [r for r in records if r.split == subset]
        else:
            raise DataError(f"--subset {subset}: {ds.root} has no split folders; pass --split FILE")
    if limit and len(records) > limit:
        step = len(records) / limit
        records = [records[int(k * step)] for k in range(limit)]
    return records


def evaluate_bundle(bundle_dir: Path, ds: Dataset, out_dir: Path, artifacts: Optional[Sequence[str]] = None,
                    subset: str = "all", assignment: Optional[Dict[str, str]] = None, limit: Optional[int] = None,
                    n_overlays: int = 8, n_boot: int = 2000, seed: int = 0, progress: bool = False,
                    command: str = "", allow_rejected: bool = False, backend: str = "auto") -> Dict:
    from .duplicates import PHANTOM_NOTE, find_duplicates, image_hashes

    bundle = load_bundle(bundle_dir, require_accepted=not allow_rejected)
    manifest = bundle.manifest
    spec, threshold = bundle.spec, bundle.threshold
    keys = list(artifacts) if artifacts else list(bundle.manifest["artifacts"])
    unknown = [k for k in keys if k not in manifest["artifacts"]]
    if unknown:
        raise DataError(f"{bundle_dir}: no artifact {', '.join(unknown)} (has {', '.join(manifest['artifacts'])})")
    predictors: Dict[str, Predictor] = {}
    not_run: Dict[str, str] = {}
    for k in keys:
        try:
            predictors[k] = Predictor(bundle, backend, k, gradcam=True)
        except BackendError as exc:
            not_run[k] = str(exc)
    if not predictors:
        raise DataError(f"{bundle_dir}: no artifact can run here ({'; '.join(not_run.values())})")
    floats = [k for k in predictors if manifest["artifacts"][k]["precision"] == "float32"]
    reference = floats[0] if floats else next(iter(predictors))
    has_cam = predictors[reference].has_heatmap  # the model's own fracture map, or Grad-CAM
    absolute = predictors[reference].map is not None

    records = select(ds, subset, assignment, limit)
    if not records:
        raise DataError(f"{ds.root}: no images to evaluate (subset {subset})")
    rows, skipped, refused = [], [], []
    probs: Dict[str, List[float]] = {k: [] for k in predictors}
    raws: Dict[str, List[Optional[np.ndarray]]] = {k: [] for k in predictors}
    loc: Dict[str, List[Dict]] = {k: [] for k in predictors}
    loc_rows: List[int] = []
    hashes, digests = [], []
    for r in progress_of(records, "images", enabled=progress):
        try:
            decoded = read_image(r.path, spec)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        x, problem, small = checked_input(decoded.pixels, spec)
        if problem:
            refused.append(f"{r.path}: {problem}")
            continue
        row = {"record": r, "shape": tuple(decoded.pixels.shape[:2])}
        scored = r.label == 1 and bool(r.boxes) and has_cam
        for k, pred in predictors.items():
            p_model, raw, pooled = pred.assess(x)
            p = pred.calibrated(p_model)
            probs[k].append(p)
            raws[k].append(raw)
            row[k] = {"p": p}
            if pred.gate is not None:  # the device's out-of-scope gate, as predict_pixels applies it to a file
                row[k]["scope"] = pred.gate.check(pooled, decoded.colour)
            if scored:
                s = score(heat_on_image(raw, spec, row["shape"]), r.boxes)
                loc[k].append(s)
                row[k].update(peak_in_box=s["peak_in_box"], energy_in_boxes=s["energy_in_boxes"])
        if scored:
            loc_rows.append(len(rows))
        rows.append(row)
        hashes.append(image_hashes(small))
        digests.append(sha256_file(r.path))
    if not rows:
        raise DataError(f"{ds.root}: none of {len(records)} image(s) could be read (first: {(skipped + refused)[0]})")

    recs = [row["record"] for row in rows]
    labelled = np.array([r.label != UNLABELLED for r in recs])
    y = np.array([r.label for r in recs])
    loc_regions = [recs[i].region for i in loc_rows]
    per_artifact: Dict[str, Dict] = {}
    for k in predictors:
        p = np.array(probs[k])
        entry: Dict[str, object] = {
            "file": manifest["artifacts"][k]["file"], "precision": manifest["artifacts"][k]["precision"],
            "backend": predictors[k].backend,
            "classification": classification(y[labelled], p[labelled], threshold, n_boot, seed),
            "probabilities": {name: distribution(p[m], threshold) for name, m in (
                ("fractured", y == 1), ("non_fractured", y == 0), ("unlabelled", ~labelled)) if m.any()},
            "localisation": summarise(loc[k], loc_regions) if loc[k] else None,
        }
        if predictors[k].gate is not None:
            entry["out_of_scope"] = _gate_summary([row[k]["scope"] for row in rows], y, p, labelled, threshold)
        regions = [r.region for r, known in zip(recs, labelled) if known]
        if len(set(regions)) > 1:  # a map that fires on anatomy it has not learnt shows up per region
            entry["per_region"] = M.per_group(y[labelled], p[labelled], regions, threshold)
        if k != reference:
            d = np.abs(p - np.array(probs[reference]))
            corrs = [c for c in (_corr(a, b) for a, b in zip(raws[k], raws[reference]) if a is not None and b is not None)
                     if c is not None]
            entry["vs_reference"] = {
                "reference": reference, "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
                "agreement": float(((p >= threshold) == (np.array(probs[reference]) >= threshold)).mean()),
                # the heatmaps' per-image correlation: Grad-CAM, or the fracture map itself
                "heatmap": "fracture map" if absolute else "Grad-CAM",
                "heatmap_correlation_mean": float(np.mean(corrs)) if corrs else None,
                "heatmap_correlation_min": float(np.min(corrs)) if corrs else None,
                "localisation": agreement(loc[k], loc[reference]) if loc[k] else None}
        per_artifact[k] = entry

    dup = find_duplicates([r.image_id for r in recs], np.stack(hashes), digests,
                          [r.split for r in recs] if any(r.split for r in recs) else None)
    if ds.phantom:
        dup["note"] = PHANTOM_NOTE
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(out_dir / "predictions.csv", rows, list(predictors))
    overlays = _write_overlays(out_dir / "overlays", rows, raws[reference], reference, spec, threshold,
                               loc_rows, n_overlays, absolute) if has_cam else []
    label = honest_label(manifest, ds)
    if manifest.get("status") != "accepted":
        label = (f"A bundle REJECTED by export's gate ({manifest.get('status')}; never shipped, measured here "
                 f"only): {label}")
    result = {
        "label": label,
        "command": command,
        "bundle": {"path": str(bundle_dir), "model": bundle.model_name, "manifest_sha256": manifest.get("manifest_sha256"),
                   "status": manifest.get("status"),
                   "demonstration_only": bool(manifest.get("demonstration_only")),
                   "trained_on": manifest.get("data", {}).get("name"), "threshold": threshold,
                   "threshold_rule": manifest.get("decision", {}).get("rule"),
                   "artifacts_run": list(predictors), "artifacts_not_run": not_run,
                   "int8_artifacts": [k for k, a in manifest["artifacts"].items() if a["precision"] == "int8"],
                   "gradcam_reference": reference},
        "data": {"name": ds.name, "root": str(ds.root), "format": ds.format, "phantom": ds.phantom,
                 "counts": ds.counts(), "notes": ds.notes, "provenance": ds.provenance, "subset": subset,
                 "evaluated": len(rows), "skipped_unreadable": skipped, "refused_by_content_check": refused,
                 "includes_the_bundles_training_data": _same_data(manifest, ds) and subset != "test",
                 "localised": f"{len(loc_rows)} fractured image(s) with boxes"},
        "duplicates": {k: v for k, v in dup.items()},
        "artifacts": per_artifact,
        "overlays": overlays,
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_plain))
    return result


def _gate_summary(scopes: List[Dict], y: np.ndarray, p: np.ndarray, labelled: np.ndarray, threshold: float) -> Dict:
    """What the bundle's out-of-scope gate refuses of these images (a device gives them no answer),
    per label and per reason, and the sensitivity over the fractures it does answer."""
    from collections import Counter

    refused = np.array([not s["in_scope"] for s in scopes])
    out: Dict[str, object] = {"n": int(len(scopes)), "refused": int(refused.sum()), "rate": float(refused.mean()),
                              "by_code": dict(Counter(s["code"] for s in scopes if not s["in_scope"])),
                              "by_label": {name: {"n": int(m.sum()), "refused": int((refused & m).sum())}
                                           for name, m in (("fractured", y == 1), ("non_fractured", y == 0),
                                                           ("unlabelled", ~labelled)) if m.any()}}
    answered = (y == 1) & ~refused
    if answered.any():
        flagged = int((p[answered] >= threshold).sum())
        out["sensitivity_of_answered"] = {"fractured_answered": int(answered.sum()), "flagged": flagged,
                                          "sensitivity": flagged / int(answered.sum()),
                                          "ci95": M.wilson_interval(flagged, int(answered.sum()))}
    return out


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, Path):
        return str(v)
    raise TypeError(type(v).__name__)


def _write_predictions(path: Path, rows: List[Dict], keys: List[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        head = ["image_id", "split", "label", "region", "boxes"]
        for k in keys:
            head += [f"p_{k}", f"peak_in_box_{k}", f"energy_in_boxes_{k}", f"scope_{k}"]
        w.writerow(head)
        for row in rows:
            r = row["record"]
            line = [r.image_id, r.split or "", "" if r.label == UNLABELLED else r.label, r.region,
                    "" if r.boxes is None else len(r.boxes)]
            for k in keys:
                e = row[k]
                line += [f"{e['p']:.6f}", "" if "peak_in_box" not in e else int(e["peak_in_box"]),
                         "" if "energy_in_boxes" not in e else f"{e['energy_in_boxes']:.4f}",
                         "" if "scope" not in e else ("in" if e["scope"]["in_scope"] else e["scope"]["code"])]
            w.writerow(line)


def _pick_cases(rows: List[Dict], reference: str, loc_rows: List[int], n: int) -> List[int]:
    """A few telling cases: the best and worst localised fractures, the most and least confident
    fractures, the most confident non-fractured image and an unlabelled one."""
    if n <= 0:
        return []
    by_energy = sorted(loc_rows, key=lambda i: -rows[i][reference]["energy_in_boxes"])
    hits = [i for i in by_energy if rows[i][reference]["peak_in_box"]]
    misses = [i for i in reversed(by_energy) if not rows[i][reference]["peak_in_box"]]
    frac = sorted((i for i, r in enumerate(rows) if r["record"].label == 1), key=lambda i: -rows[i][reference]["p"])
    neg = sorted((i for i, r in enumerate(rows) if r["record"].label == 0), key=lambda i: -rows[i][reference]["p"])
    unl = [i for i, r in enumerate(rows) if r["record"].label == UNLABELLED]
    chosen: List[int] = []
    for group in (hits[:2], misses[:2], frac[:1], frac[-1:], neg[:1], unl[:1], hits[2:], misses[2:]):
        for i in group:
            if i not in chosen and len(chosen) < n:
                chosen.append(i)
    return chosen


def _write_overlays(folder: Path, rows: List[Dict], raws: List[Optional[np.ndarray]], reference: str, spec,
                    threshold: float, loc_rows: List[int], n: int, absolute: bool = False) -> List[str]:
    """A few telling cases with their boxes; a fracture map is drawn on its own 0-1 scale, Grad-CAM
    relative to its peak."""
    from edge_runtime.predictor import relative

    written = []
    for i in _pick_cases(rows, reference, loc_rows, n):
        r, raw = rows[i]["record"], raws[i]
        if raw is None:
            continue
        heat = heat_on_image(raw if absolute else relative(raw), spec, rows[i]["shape"])
        e = rows[i][reference]
        tag = ("hit" if e["peak_in_box"] else "miss") if "peak_in_box" in e else (
            "unlabelled" if r.label == UNLABELLED else ("nobox" if r.label == 1 else "negative"))
        name = f"{Path(r.image_id).stem}_p{e['p']:.2f}_{tag}.jpg"
        try:
            display = read_grayscale(r.path, draft_size=(OVERLAY_SIDE, OVERLAY_SIDE)).pixels
        except ImageReadError:
            continue
        save_overlay(folder / name, display, heat, max_side=OVERLAY_SIDE, boxes=r.boxes or None,
                     probability=e["p"], threshold=threshold, absolute=absolute)
        written.append(str(Path("overlays") / name))
    return written


def summary_lines(result: Dict) -> List[str]:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [result["label"], f"data: {result['data']['name']} ({result['data']['format']}), "
             f"{result['data']['evaluated']} image(s) evaluated; {result['data']['localised']}"]
    for k, a in result["artifacts"].items():
        c = a["classification"]
        head = f"{k:<13} threshold {c['threshold']:.3f}:"
        if c.get("roc_auc"):
            au = c["roc_auc"]
            head += f" AUC {fmt(au['auc'])} [{fmt(au['ci_low'])}, {fmt(au['ci_high'])}]"
        elif "why_no_auc" in c:
            head += f" no AUC ({c['why_no_auc']})"
        if "sensitivity" in c:
            lo, hi = c["sensitivity_ci95"]
            head += f"; sensitivity {c['sensitivity']:.3f} [{lo:.3f}, {hi:.3f}] ({c['fractures_flagged']}/{c['fractured']})"
        if "specificity" in c:
            lo, hi = c["specificity_ci95"]
            head += f"; specificity {c['specificity']:.3f} [{lo:.3f}, {hi:.3f}]"
        lines.append(head)
        for name, d in a["probabilities"].items():
            lines.append(f"  P(fractured) on {name} ({d['n']}): median {d['p50']:.3f}, middle half "
                         f"{d['p25']:.3f}-{d['p75']:.3f}, {d['at_or_above_threshold']:.1%} at or above the threshold")
        if a.get("per_region"):
            lines.append("  non-fractured called fractured, per region: " + "; ".join(
                f"{g} {1 - r['specificity']:.3f} of {r['n'] - r['fractured']}" for g, r in a["per_region"].items()
                if r.get("specificity") is not None))
        g = a.get("out_of_scope")
        if g:
            lines.append(f"  out-of-scope gate: refused {g['refused']} of {g['n']} ({g['rate']:.1%})"
                         + (" - " + ", ".join(f"{c} {n}" for c, n in g["by_code"].items()) if g["by_code"] else "")
                         + ("; sensitivity of the answered fractures "
                            f"{g['sensitivity_of_answered']['sensitivity']:.3f}" if "sensitivity_of_answered" in g else ""))
        if a["localisation"]:
            from .evaluate import localisation_line
            lines.append("  " + localisation_line(a["localisation"]))
        v = a.get("vs_reference")
        if v:
            lines.append(f"  vs {v['reference']}: mean |dp| {v['mean_abs_diff']:.4f}, agreement {v['agreement']:.3f}, "
                         f"{v['heatmap']} r {fmt(v['heatmap_correlation_mean'])}"
                         + (f", same pointing verdict {v['localisation']['same_pointing_verdict']:.3f}"
                            if v.get("localisation") else ""))
    d = result["duplicates"]
    if d["pairs"]:
        lines.append(f"near-duplicates among the evaluated images: {d['pairs']} pair(s) ({d['exact_pairs']} exact)"
                     + (" - phantom look-alikes, not copies" if "note" in d else ""))
    if result["data"]["includes_the_bundles_training_data"]:
        lines.append("WARNING: this is the data the bundle was trained on; pass --split FILE --subset test")
    return lines


def print_summary(result: Dict, stream=sys.stdout) -> None:
    for line in summary_lines(result):
        print(line, file=stream)
