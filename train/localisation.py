"""Where does the heatmap point? Two scores per fractured image with fracture boxes, for any
model and any data with boxes (train.evaluate, export's check, train.evaluate --bundle):

- the **pointing game**: is the heatmap's peak inside a box (Zhang et al., 2016, with no
  tolerance: the peak's cell of the map upsampled to the model's input grid must lie in a box);
- the **energy in boxes**: the share of the heatmap's total (after the ReLU) that lies inside
  the boxes;
- the **location AUC**: over the places of one image (the map on the model's input grid), how well
  its values rank places inside the boxes above places outside them (0.5: no better than chance);
  the mean over images, with a bootstrap CI that resamples images;
- the **peak outside every box**: the share of fractured images whose map peaks away from every
  box (a blank map counts), what a clinician would be pointed at wrongly.

Both depend on how big the boxes are: a map that knows nothing scores the boxes' share of the
image on average (a uniform map's energy; a random peak's hit rate), so that **chance level** is
reported beside them, with the share of images whose centre lies in a box (a map that always
points at the centre). A blank map (nothing positive) counts as a miss with no energy in the boxes.
The map is the raw Grad-CAM over the model's input; with a letterboxed input, it is cropped to the
image's own part first. Boxes are relative to the stored image (see train/boxes.py).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, map_on_image

from .metrics import wilson_interval


def heat_on_image(raw: np.ndarray, spec: PreprocessSpec, image_shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The raw map (h, w) upsampled bilinearly to the model's input grid, cropped to the image's
    own part when the input is letterboxed; negative values set to 0."""
    if spec.resize != "stretch" and image_shape is None:
        raise ValueError("a letterboxed heatmap needs the image's shape to find the image in it")
    return np.maximum(map_on_image(raw, image_shape or (spec.size, spec.size), spec), 0.0)


def box_mask(boxes: Sequence[Tuple[float, float, float, float]], shape: Tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the grid cells whose centres lie in any box (boxes relative to the image)."""
    h, w = shape
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    if boxes and not mask.any():  # a box thinner than a cell: mark the cell its centre falls in
        for x0, y0, x1, y1 in boxes:
            mask[min(h - 1, int((y0 + y1) / 2 * h)), min(w - 1, int((x0 + x1) / 2 * w))] = True
    return mask


def location_auc(heat: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """AUC of the map's values, places inside the boxes against places outside (ties count half);
    None when either side is empty."""
    from .metrics import auc

    return auc(np.asarray(mask, bool).ravel().astype(np.int8), np.asarray(heat, dtype=np.float64).ravel())


def score(heat: np.ndarray, boxes: Sequence[Tuple[float, float, float, float]]) -> Dict[str, object]:
    """Pointing game, energy in boxes and location AUC for one map already on the image's grid
    (heat_on_image)."""
    heat = np.asarray(heat, dtype=np.float64)
    mask = box_mask(boxes, heat.shape)
    h, w = heat.shape
    out: Dict[str, object] = {"box_area": float(mask.mean()), "centre_in_box": bool(mask[h // 2, w // 2]),
                              "location_auc": location_auc(heat, mask)}
    total = float(heat.sum())
    if total <= 0:
        return {**out, "peak_in_box": False, "energy_in_boxes": 0.0, "blank": True, "peak": None}
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return {**out, "peak_in_box": bool(mask[peak]), "energy_in_boxes": float(heat[mask].sum() / total),
            "blank": False, "peak": [round((peak[1] + 0.5) / w, 4), round((peak[0] + 0.5) / h, 4)]}


BOOTSTRAP = 2000


def mean_ci(values: Sequence[float], n_boot: int = BOOTSTRAP, seed: int = 0) -> Tuple[float, List[float]]:
    """(mean, percentile bootstrap 95% CI over the items)."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    return float(v.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _summary(scores: List[Dict[str, object]]) -> Dict[str, object]:
    n = len(scores)
    if n == 0:
        return {"n": 0}
    hits = sum(bool(s["peak_in_box"]) for s in scores)
    lo, hi = wilson_interval(hits, n)
    energy = np.array([float(s["energy_in_boxes"]) for s in scores])
    aucs = [float(s["location_auc"]) for s in scores if s.get("location_auc") is not None]
    loc_auc = dict(zip(("location_auc", "location_auc_ci95"), mean_ci(aucs))) if aucs else {"location_auc": None}
    return {"n": n, "pointing_game": hits / n, "pointing_game_ci95": [lo, hi], "hits": hits,
            "peak_outside_boxes": (n - hits) / n, "peak_outside_boxes_ci95": wilson_interval(n - hits, n),
            **loc_auc, "location_auc_n": len(aucs),
            "energy_in_boxes": float(energy.mean()), "energy_in_boxes_median": float(np.median(energy)),
            "blank_maps": sum(bool(s["blank"]) for s in scores),
            "chance": {"box_share_of_image": float(np.mean([float(s["box_area"]) for s in scores])),
                       "centre_in_box": float(np.mean([bool(s["centre_in_box"]) for s in scores]))}}


def summarise(scores: List[Dict[str, object]], regions: Sequence[str]) -> Dict[str, object]:
    """Overall and per region: n, pointing game (hit rate, Wilson 95% CI), mean and median energy
    in boxes, blank maps, and the chance levels."""
    out = _summary(scores)
    if scores:
        out["per_region"] = {g: _summary([s for s, r in zip(scores, regions) if r == g]) for g in sorted(set(regions))}
    return out


def localise(raws: np.ndarray, records: Sequence, spec: PreprocessSpec,
             shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[List[Dict[str, object]], Dict[str, object]]:
    """(per-image scores, summary) for raw maps of records that are fractured and carry boxes. With
    records from several sources (real radiographs and mixed-in phantoms), the summary also has
    `per_source`: real and phantom numbers must never be read as one."""
    scores = []
    for k, (raw, r) in enumerate(zip(raws, records)):
        shape = shapes[k] if shapes is not None and k < len(shapes) else None
        scores.append(score(heat_on_image(raw, spec, shape), r.boxes))
    summary = summarise(scores, [r.region for r in records])
    sources = [getattr(r, "source", "") or "data" for r in records]
    if len(set(sources)) > 1:
        summary["per_source"] = {s: _summary([x for x, g in zip(scores, sources) if g == s]) for s in sorted(set(sources))}
    return scores, summary


def boxed_positives(records: Sequence) -> List[int]:
    """Indices of the records localisation can score: fractured, with at least one box."""
    return [i for i, r in enumerate(records) if r.label == 1 and r.boxes]


def agreement(a: List[Dict[str, object]], b: List[Dict[str, object]]) -> Dict[str, object]:
    """How two artifacts' maps agree on the same images: same pointing-game verdict, and the mean
    absolute difference of their energy in boxes."""
    if not a:
        return {"n": 0}
    same = sum(bool(x["peak_in_box"]) == bool(y["peak_in_box"]) for x, y in zip(a, b))
    diff = [abs(float(x["energy_in_boxes"]) - float(y["energy_in_boxes"])) for x, y in zip(a, b)]
    return {"n": len(a), "same_pointing_verdict": same / len(a), "energy_in_boxes_mean_abs_diff": float(np.mean(diff))}
