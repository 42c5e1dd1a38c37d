"""Evaluate a fracture-map model honestly, per data source, on its test split.

A run may mix real radiographs with phantoms; their numbers are never pooled into one figure:
- a source with both classes (phantoms; FracAtlas): ROC AUC with its bootstrap CI, the paper's
  per-class table and the confusion at the chosen threshold, per region;
- a source of fractures only (the forearm set): no AUC and no specificity can exist; sensitivity
  at the threshold with its Wilson CI, and the distribution of probabilities; image-level
  specificity on real radiographs is stated as unmeasurable;
- every fractured image with boxes: localisation of the map (pointing game, energy in boxes,
  location AUC with a bootstrap CI over images, how often the peak lies outside every box),
  and, for comparison, the same scores of Grad-CAM on the same model;
- a source with both classes and several regions: how often a non-fractured image of each
  region is called fractured (a map that fires on anatomy it has not seen shows up here).

The threshold is chosen on the validation split (never on test) by the run's rule, for each
source that has fractures, and the lowest is kept: `sensitivity=0.9` then reaches 0.9 on the real
fractures and on the phantom ones alike.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.fracture_map import MapPooling, sigmoid
from edge_runtime.overlay import save_overlay
from fracdata.data import PHANTOM_SOURCE as PHANTOM, record_source
from fracdata.images import LoadedSplit
from fracdata.targets import MARGIN_CELLS

from . import metrics as M
from .localisation import boxed_positives, heat_on_image, score, summarise

OVERLAY_DIR_REAL = "overlays-real"  # never committed (.gitignore): real radiographs' pixels
OVERLAY_DIR_PHANTOM = "overlays"
CROP_ZOOM = 2.0  # box-free crops: half the side of the model's input, shown at full size
CROPS_PER_IMAGE = 3
POOLINGS_COMPARED = ("max", "lse:2", "lse:4", "lse:8", "topk:4", "topk:16")


def box_free_crops(split: LoadedSplit, seed: int = 0, per_image: int = CROPS_PER_IMAGE, stride: float = 8.0):
    """(crops (n, size, size, 1) normalised, source image index per crop): squares of half the
    input's side, from real radiographs with boxes, that keep one cell's margin clear of every box,
    enlarged to the input size. Real anatomy (bone, joints, casts, markers) with no annotated
    fracture: the closest thing to real negatives a set of fractures holds. They are parts of
    radiographs shown twice as large, not whole radiographs: a proxy, reported as such."""
    from PIL import Image

    from edge_runtime.preprocess import content_problem, normalize_intensity
    from fracdata.targets import input_boxes

    size = split.spec.size
    side = int(round(size / CROP_ZOOM))
    margin = MARGIN_CELLS * stride  # one map cell of the input, as training's ignored ring
    rng = np.random.default_rng(seed)
    crops, owner = [], []
    for i, r in enumerate(split.records):
        if record_source(r) == PHANTOM or r.label != 1 or not r.boxes:
            continue
        boxes = input_boxes(r.boxes, split.shapes[i], split.spec)
        got = 0
        for _ in range(60):
            if got >= per_image:
                break
            x0, y0 = rng.integers(0, size - side + 1, 2)
            if any(x0 < b[2] + margin and x0 + side > b[0] - margin and y0 < b[3] + margin and y0 + side > b[1] - margin
                   for b in boxes):
                continue
            patch = split.resized[i][y0:y0 + side, x0:x0 + side]
            big = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BILINEAR),
                             np.float32)
            if content_problem(big):  # padding or background only: nothing a clinic would send
                continue
            crops.append(normalize_intensity(big, split.spec)[:, :, None])
            owner.append(i)
            got += 1
    if not crops:
        return np.zeros((0, size, size, 1), np.float32), []
    return np.stack(crops).astype(np.float32), owner


def box_free_rest(split: LoadedSplit, maps: np.ndarray) -> Tuple[List[int], List[np.ndarray]]:
    """(indices of real fractured images with boxes, each one's cell logits clear of every box and
    its one-cell ring): the rest of a real radiograph, at its own scale, with its fracture left
    out. Pooled as the device pools a whole map, it asks what the map answers about real anatomy
    without an annotated fracture; a proxy like the crops (unboxed fractures, casts and swelling
    stay in), with no enlargement."""
    from fracdata.targets import cell_targets, input_boxes

    idx, rests = [], []
    for i, r in enumerate(split.records):
        if record_source(r) == PHANTOM or r.label != 1 or not r.boxes:
            continue
        grid = maps[i].shape[0]
        target, weight = cell_targets(input_boxes(r.boxes, split.shapes[i], split.spec), split.spec.size, grid)
        keep = (weight > 0) & (target == 0)
        if keep.any():
            idx.append(i)
            rests.append(np.asarray(maps[i])[keep])
    return idx, rests


REST_WHAT = ("each fractured test image's map without its boxes and their one-cell ring, pooled as the device pools "
             "a whole map: the rest of a real radiograph at its own scale, a proxy for a real radiograph without a "
             "fracture (unboxed fractures, casts and swelling stay in)")


def rest_by_source(split: LoadedSplit, p: np.ndarray, maps: np.ndarray, pooling: MapPooling, threshold: float,
                   n_boot: int = 2000, seed: int = 0) -> Dict[str, Dict]:
    """Per real source with boxed fractures: how many rests (box_free_rest) the threshold calls
    fractured, and the AUC of the source's fractured images (`p`) above those rests, each
    radiograph drawn with its own rest. `maps`: cell logits, as the device pools them."""
    idx, rests = box_free_rest(split, maps)
    src = np.array([record_source(r) for r in split.records])
    y = np.array([r.label for r in split.records])
    out = {}
    for s in sorted(set(src[idx].tolist())) if idx else []:
        mine = [k for k, i in enumerate(idx) if src[i] == s]
        pr = np.array([sigmoid(pooling.pool(rests[k])) for k in mine])
        fractured = np.flatnonzero((src == s) & (y == 1))
        fp = int((pr >= threshold).sum())
        out[s] = {"what": REST_WHAT, "n": len(pr), "called_fractured": fp / len(pr),
                  "called_fractured_ci95": M.wilson_interval(fp, len(pr)), "median_p": float(np.median(pr)),
                  "auc_fractured_vs_rest": M.clustered_auc_ci(p[fractured], fractured, pr, [idx[k] for k in mine],
                                                              n_boot, seed)}
    return out


def compare_poolings(val_maps: np.ndarray, val: LoadedSplit, crop_maps: np.ndarray, target: float = 0.9) -> Dict:
    """For each pooling of the same validation maps: the threshold reaching `target` sensitivity on
    every validation source's fractures, and what it then calls fractured among phantom
    non-fractured images, box-free crops of real radiographs, and the box-free rest of each real
    radiograph (box_free_rest). The pooling that keeps the fewest false alarms at equal sensitivity
    is the one to ship (docs/results.md)."""
    from .fit import parse_pooling

    rests = box_free_rest(val, val_maps)[1]
    y = np.array([r.label for r in val.records])
    src = np.array([record_source(r) for r in val.records])
    out = {}
    for name in POOLINGS_COMPARED:
        pool = parse_pooling(name)
        p = np.array([sigmoid(pool.pool(m)) for m in val_maps])
        pc = np.array([sigmoid(pool.pool(m)) for m in crop_maps])
        pr = np.array([sigmoid(pool.pool(m)) for m in rests])
        ts = [sensitivity_threshold(p[(src == s) & (y == 1)], target) for s in sorted(set(src[y == 1].tolist()))]
        t = min(t for t in ts if t is not None)
        neg = (y == 0)
        real_pos = p[(src != PHANTOM) & (y == 1)]
        both = lambda other: M.auc(np.r_[np.ones(len(real_pos)), np.zeros(len(other))],  # noqa: E731
                                   np.r_[real_pos, other]) if len(real_pos) and len(other) else None
        out[name] = {"threshold": t,
                     # threshold-free: real fractured radiographs ranked above the proxies of real negatives
                     "auc_real_fractures_vs_crops": both(pc), "auc_real_fractures_vs_rests": both(pr),
                     "phantom_negatives_called_fractured": float((p[neg] >= t).mean()) if neg.any() else None,
                     "real_crops_called_fractured": float((pc >= t).mean()) if len(pc) else None,
                     "real_rest_called_fractured": float((pr >= t).mean()) if len(pr) else None,
                     "n_phantom_negatives": int(neg.sum()), "n_real_crops": int(len(pc)), "n_real_rest": int(len(pr))}
    return out


def sensitivity_threshold(p_pos: Sequence[float], target: float) -> Optional[float]:
    """The highest threshold at which at least `target` of these fractures score at or above it."""
    p = np.sort(np.asarray(p_pos, np.float64))[::-1]
    if not len(p):
        return None
    k = max(1, int(math.ceil(target * len(p) - 1e-9)))
    return float(p[k - 1])


def choose_map_threshold(records, p: np.ndarray, rule: str) -> Dict[str, object]:
    """{value, rule, chosen_on, per_source}: per source with fractures, the rule's threshold; the
    lowest of them (every source reaches the rule's sensitivity)."""
    kind, target = M.parse_rule(rule)
    y = np.array([r.label for r in records])
    src = np.array([record_source(r) for r in records])
    per: Dict[str, Dict[str, object]] = {}
    for s in sorted(set(src.tolist())):
        m = src == s
        if not (y[m] == 1).any():
            continue
        if kind == "sensitivity":
            t = sensitivity_threshold(p[m & (y == 1)], target)
        elif (y[m] == 0).any():
            t = M.choose_threshold(y[m], p[m], rule)
        else:
            continue  # Youden needs both classes
        per[s] = {"threshold": t, "fractured": int((m & (y == 1)).sum()), "non_fractured": int((m & (y == 0)).sum())}
    if not per:
        raise ValueError(f"threshold rule {rule!r}: no validation source has what it needs")
    value = float(min(v["threshold"] for v in per.values()))
    value = min(max(value, 1e-6), 1 - 1e-6)  # the manifest wants 0 < t < 1
    for s, v in per.items():
        m = src == s
        v.update(M.sens_spec(y[m], (p[m] >= value).astype(int)))
    return {"value": value, "rule": rule, "chosen_on": "validation split, each source with fractures; the lowest",
            "per_source": per}


def _classification(y: np.ndarray, p: np.ndarray, regions: List[str], threshold: float, n_boot: int,
                    seed: int) -> Dict[str, object]:
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    out: Dict[str, object] = {"n": int(len(y)), "fractured": pos, "non_fractured": neg}
    if pos and neg:
        out.update(roc_auc=M.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed),
                   at_chosen_threshold=M.at_threshold(y, p, threshold),
                   at_0_5=M.at_threshold(y, p, 0.5),
                   per_region=M.per_group(y, p, regions, threshold))
    else:
        out["roc_auc"] = None
        out["why_no_auc"] = "fractured images only: an AUC and a specificity need non-fractured images"
    if pos:
        tp = int(((p >= threshold) & (y == 1)).sum())
        out.update(sensitivity=tp / pos, sensitivity_ci95=M.wilson_interval(tp, pos), fractures_flagged=tp)
    if neg:
        fp = int(((p >= threshold) & (y == 0)).sum())
        out.update(false_alarm_rate=fp / neg, false_alarm_ci95=M.wilson_interval(fp, neg))
    q = np.percentile(p, [5, 25, 50, 75, 95]) if len(p) else []
    out["probabilities"] = {f"p{k}": float(v) for k, v in zip((5, 25, 50, 75, 95), q)}
    return out


def localisation(model, feature_layer: str, split: LoadedSplit, maps: np.ndarray, idx: List[int]) -> Dict:
    """The map's localisation on images `idx` (fractured, with boxes), and Grad-CAM's beside it."""
    from .reference import gradcam_reference

    recs = [split.records[i] for i in idx]
    shapes = [split.shapes[i] for i in idx]
    heat = [sigmoid(maps[i]) for i in idx]
    scores = [score(heat_on_image(h, split.spec, s), r.boxes) for h, s, r in zip(heat, shapes, recs)]
    out = {"map": summarise(scores, [r.region for r in recs])}
    raws = gradcam_reference(model, feature_layer, split.images[idx], split.spec)
    cam_scores = [score(heat_on_image(c, split.spec, s), r.boxes) for c, s, r in zip(raws, shapes, recs)]
    out["gradcam_for_comparison"] = summarise(cam_scores, [r.region for r in recs])
    out["per_image"] = [{"image_id": r.image_id, "peak_in_box": bool(sc["peak_in_box"]),
                         "location_auc": sc["location_auc"], "energy_in_boxes": sc["energy_in_boxes"]}
                        for r, sc in zip(recs, scores)]
    return out


def evaluate_map_model(model, model_name: str, feature_layer: str, val: LoadedSplit, test: LoadedSplit,
                       out_dir: Path, rule: str, n_boot: int = 2000, seed: int = 0, title: str = "",
                       n_overlays: int = 8) -> Dict:
    from .reference import predict_maps

    p_val, maps_val = predict_maps(model, val.images, val.spec)
    p_test, maps_test = predict_maps(model, test.images, test.spec)
    threshold = choose_map_threshold(val.records, p_val, rule)
    t = threshold["value"]
    crops = {}
    for name, part in (("val", val), ("test", test)):
        stride = part.spec.size / (maps_val if name == "val" else maps_test).shape[1]
        xs, owner = box_free_crops(part, seed, stride=stride)
        p, maps = predict_maps(model, xs, part.spec) if len(xs) else (np.zeros(0), np.zeros((0, 1, 1)))
        crops[name] = (p, maps, np.asarray(owner, int))
    kind, target = M.parse_rule(rule)
    poolings = compare_poolings(maps_val, val, crops["val"][1], target if kind == "sensitivity" else 0.9)
    y = test.labels.astype(int)
    src = np.array([record_source(r) for r in test.records])
    rests = rest_by_source(test, p_test, maps_test, _pooling(model), t, n_boot, seed)
    by_source: Dict[str, Dict] = {}
    boxed_all = set(boxed_positives(test.records))  # indices of fractured test images with boxes
    for s in sorted(set(src.tolist())):
        m = np.flatnonzero(src == s)
        entry = _classification(y[m], p_test[m], [test.records[i].region for i in m], t, n_boot, seed)
        entry["real"] = s != PHANTOM
        if s != PHANTOM and not entry["non_fractured"]:
            entry["specificity_on_real_radiographs"] = ("unmeasurable here: this source has no non-fractured "
                                                        "radiographs")
        boxed = [int(i) for i in m if i in boxed_all]
        if boxed:
            entry["localisation"] = localisation(model, feature_layer, test, maps_test, boxed)
        fractured = [int(i) for i in m if y[i] == 1]
        mine = np.isin(crops["test"][2], m)
        if s != PHANTOM and mine.any():
            pc = crops["test"][0][mine]
            fp = int((pc >= t).sum())
            entry["box_free_crops"] = {
                "what": f"squares of 1/{CROP_ZOOM:g} of the input side from this source's fractured test images, "
                        "clear of every box by a cell, enlarged to the input: real anatomy without an annotated "
                        "fracture (a proxy for real negatives, not whole radiographs; optimistic, since training's "
                        "negative crops are drawn the same way from the training images)",
                "n": int(len(pc)), "called_fractured": fp / len(pc), "called_fractured_ci95": M.wilson_interval(fp, len(pc)),
                "median_p": float(np.median(pc)),
                # threshold-free, each radiograph drawn with its crops
                "auc_fractured_vs_crops": M.clustered_auc_ci(p_test[fractured], fractured, pc, crops["test"][2][mine],
                                                             n_boot, seed)}
        if s in rests:
            entry["box_free_rest"] = rests[s]
        by_source[s] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(out_dir / "predictions.csv", val, p_val, test, p_test)
    _plots(val, p_val, test, p_test, by_source, threshold, out_dir, title or model_name)
    overlays = _overlays(test, p_test, maps_test, t, out_dir, n_overlays)
    return {"kind": "fracture_map", "threshold": threshold, "test_by_source": by_source,
            "pooling_on_validation": {"trained_with": _pooling_of(model), "compared": poolings},
            "overlays": overlays, "skipped_images": {"val": val.skipped, "test": test.skipped}}


def _pooling(model) -> MapPooling:
    layer = model.get_layer("logit")
    return MapPooling(layer.kind, layer.r, layer.k)


def _pooling_of(model) -> Dict:
    return _pooling(model).to_dict()


def _write_predictions(path: Path, val: LoadedSplit, p_val, test: LoadedSplit, p_test) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image_id", "split", "source", "label", "region", "boxes", "probability"])
        for name, part, p in (("val", val, p_val), ("test", test, p_test)):
            for r, prob in zip(part.records, p):
                w.writerow([r.image_id, name, record_source(r), r.label, r.region,
                            "" if r.boxes is None else len(r.boxes), f"{prob:.6f}"])


def _plots(val, p_val, test, p_test, by_source: Dict, threshold: Dict, out_dir: Path, title: str) -> None:
    """roc.png and confusion.png for the first source with both classes (phantoms or FracAtlas)."""
    from .plots import plot_confusion, plot_roc

    for s, entry in by_source.items():
        if not entry.get("roc_auc"):
            continue
        mv = np.array([record_source(r) == s for r in val.records])
        mt = np.array([record_source(r) == s for r in test.records])
        label = f"{title}\n{s}{' (PHANTOM)' if s == PHANTOM else ''}"
        metrics = {"test": entry, "threshold": threshold}
        plot_roc(val.labels[mv], p_val[mv], test.labels[mt], p_test[mt], metrics, out_dir / "roc.png", label)
        plot_confusion(entry["at_chosen_threshold"]["confusion"], out_dir / "confusion.png",
                       f"{label}, test, threshold {threshold['value']:.3f}")
        return


def _overlays(test: LoadedSplit, p: np.ndarray, maps: np.ndarray, threshold: float, out_dir: Path, n: int) -> List[str]:
    """A few telling cases per source: fractures with the map's peak in and out of a box, the most
    confident non-fractured image. Real radiographs go to overlays-real/ (not committed)."""
    from edge_runtime.imageio import read_grayscale
    from edge_runtime.errors import ImageReadError
    from edge_runtime.predictor import OVERLAY_SIDE

    written = []
    boxed = set(boxed_positives(test.records))
    for real in (True, False):
        idx = [i for i, r in enumerate(test.records) if (record_source(r) != PHANTOM) == real]
        if not idx:
            continue
        hits, misses = [], []
        for i in idx:
            if i in boxed:
                h = heat_on_image(sigmoid(maps[i]), test.spec, test.shapes[i])
                (hits if score(h, test.records[i].boxes)["peak_in_box"] else misses).append(i)
        negatives = sorted((i for i in idx if test.records[i].label == 0), key=lambda i: -p[i])
        chosen = (hits[:2] + misses[:2] + negatives[:2] + hits[2:4] + misses[2:4])[:n]
        folder = out_dir / (OVERLAY_DIR_REAL if real else OVERLAY_DIR_PHANTOM)
        for i in chosen:
            r = test.records[i]
            tag = "hit" if i in hits else ("miss" if i in misses else ("negative" if r.label == 0 else "fractured"))
            name = f"{Path(r.image_id).stem}_{tag}_p{p[i]:.2f}.jpg"
            try:
                gray = read_grayscale(r.path, draft_size=(OVERLAY_SIDE, OVERLAY_SIDE)).pixels
            except ImageReadError:
                continue
            save_overlay(folder / name, gray, heat_on_image(sigmoid(maps[i]), test.spec, test.shapes[i]),
                         max_side=OVERLAY_SIDE, boxes=r.boxes or None, probability=float(p[i]), threshold=threshold,
                         absolute=True)
            written.append(str(folder.relative_to(out_dir) / name))
    return written


def summary_lines(name: str, m: Dict) -> List[str]:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{name:<16} threshold {m['threshold']['value']:.3f} ({m['threshold']['rule']}, chosen on validation)"]
    for s, e in m["test_by_source"].items():
        head = f"  {s}{' [PHANTOM]' if s == PHANTOM else ' [real]'}: {e['n']} test images"
        if e.get("roc_auc"):
            a = e["roc_auc"]
            head += f"; AUC {fmt(a['auc'])} [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}]"
        if "sensitivity" in e:
            lo, hi = e["sensitivity_ci95"]
            head += f"; sensitivity {fmt(e['sensitivity'])} [{fmt(lo)}, {fmt(hi)}]"
        if "false_alarm_rate" in e:
            head += f"; non-fractured called fractured {fmt(e['false_alarm_rate'])}"
        if "box_free_crops" in e:
            head += f"; box-free crops called fractured {fmt(e['box_free_crops']['called_fractured'])} of {e['box_free_crops']['n']}"
        if "box_free_rest" in e:
            r_ = e["box_free_rest"]
            head += (f"; the rest of each radiograph called fractured {fmt(r_['called_fractured'])} of {r_['n']} "
                     f"(fractured vs rest AUC {fmt(r_['auc_fractured_vs_rest']['auc'])})")
        lines.append(head)
        loc = e.get("localisation")
        if loc:
            for what in ("map", "gradcam_for_comparison"):
                s_ = loc[what]
                lo, hi = s_["pointing_game_ci95"]
                la = s_.get("location_auc")
                ci = s_.get("location_auc_ci95") or [None, None]
                lines.append(f"    {what}: peak in a box {fmt(s_['pointing_game'])} [{fmt(lo)}, {fmt(hi)}] of {s_['n']}, "
                             f"location AUC {fmt(la)} [{fmt(ci[0])}, {fmt(ci[1])}], energy in boxes "
                             f"{fmt(s_['energy_in_boxes'])}")
    return lines
