"""Procedural "phantom" radiographs in FracAtlas's folder layout, deterministic by seed.

Bones are rendered as capsules (bright cortex, darker medulla) over soft tissue; a fractured bone
gets a jagged dark gap across its shaft and a small displacement of the distal fragment. Only
numpy and Pillow, so tests, the device and benchmarks can make images without TensorFlow.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

from .progress import progress as progress_of

GENERATOR_VERSION = 5
CSV_COLUMNS = ("image_id", "hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan",
               "fractured", "fracture_count", "frontal", "lateral", "oblique")
# Roughly FracAtlas's mix (717 of 4,083 fractured; mostly legs and hands).
FRACTURE_RATE = 717 / 4083
REGION_P = {"hand": 0.36, "leg": 0.45, "hip": 0.08, "shoulder": 0.08, "mixed": 0.03}


def _capsule_distance(yy, xx, p0, p1):
    """Distance to segment p0-p1 and the position t in [0, 1] along it."""
    d = np.subtract(p1, p0, dtype=np.float64)
    length2 = float(d @ d) or 1.0
    t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / length2
    tc = np.clip(t, 0.0, 1.0)
    dist = np.hypot(yy - (p0[0] + tc * d[0]), xx - (p0[1] + tc * d[1]))
    return dist, t


def _bone_intensity(dist, radius, rng_cortex, rng_medulla):
    """Cortex bright at the rim, medulla darker inside, smooth edge outside."""
    inside = np.clip((radius - dist) / 1.5, 0.0, 1.0)
    rim = np.clip(1.0 - np.abs(dist - radius * 0.78) / (radius * 0.28 + 1e-6), 0.0, 1.0)
    return inside * (rng_medulla + (rng_cortex - rng_medulla) * rim)


def _bones_for_region(region: str, h: int, w: int, rng: np.random.Generator) -> List[Dict]:
    """List of bones: endpoints (y, x), radius; 'long' bones can carry a fracture."""
    bones: List[Dict] = []

    def add(p0, p1, r, long=True):
        bones.append({"p0": np.array(p0, float), "p1": np.array(p1, float), "r": float(r), "long": long})

    cx = w * rng.uniform(0.4, 0.6)
    if region in ("leg", "mixed"):
        tilt = rng.uniform(-0.12, 0.12) * w
        r = rng.uniform(0.055, 0.085) * w
        add((h * 0.02, cx - tilt), (h * 0.98, cx + tilt), r)
        if rng.random() < 0.7:  # fibula / ulna beside it
            off = r * rng.uniform(1.9, 2.6) * rng.choice([-1, 1])
            add((h * 0.08, cx - tilt + off), (h * 0.95, cx + tilt + off), r * rng.uniform(0.35, 0.55))
        if rng.random() < 0.5:  # joint end
            y = h * rng.choice([0.1, 0.9])
            add((y, cx - r * 1.6), (y, cx + r * 1.6), r * 1.1, long=False)
    if region in ("hand", "mixed"):
        n = int(rng.integers(3, 6))
        base_y, spread = h * rng.uniform(0.75, 0.95), w * rng.uniform(0.45, 0.7)
        r = rng.uniform(0.018, 0.03) * w
        for i in range(n):
            x0 = cx + (i - (n - 1) / 2) * spread / n * 0.6
            x1 = cx + (i - (n - 1) / 2) * spread / n * 1.2
            top = h * rng.uniform(0.08, 0.3)
            mid = (base_y + top) / 2
            add((base_y, x0), (mid + rng.uniform(-4, 4), (x0 + x1) / 2), r * 1.2)
            add((mid - r * 2.5, (x0 + x1) / 2), (top, x1), r)
    if region == "hip":
        cy = h * rng.uniform(0.3, 0.45)
        add((cy, w * 0.05), (cy - h * 0.15, cx), w * 0.06, long=False)  # iliac wing
        head = (cy + h * 0.05, cx + w * 0.12)
        add(head, head, w * rng.uniform(0.07, 0.09), long=False)
        add((head[0] + h * 0.05, head[1] + w * 0.05), (h * 0.98, cx + w * rng.uniform(0.12, 0.3)),
            w * rng.uniform(0.06, 0.08))
    if region == "shoulder":
        head = (h * rng.uniform(0.2, 0.3), cx)
        add(head, head, w * rng.uniform(0.09, 0.12), long=False)
        add((head[0] + h * 0.08, cx), (h * 0.98, cx + rng.uniform(-0.1, 0.1) * w), w * rng.uniform(0.06, 0.08))
        add((h * 0.08, w * 0.02), (h * rng.uniform(0.1, 0.18), w * 0.98), w * 0.035)  # clavicle
    return bones


def render_phantom(rng: np.random.Generator, region: str, fractured: bool,
                   size: Optional[Tuple[int, int]] = None, hardware: bool = False,
                   box_out: Optional[List] = None) -> np.ndarray:
    """One radiograph as a uint8 (h, w) array. With `box_out` (a list), the fracture's box is
    appended to it, (x0, y0, x1, y1) relative to the image: the gap where it crosses either
    fragment, padded by 2 px. Asking for the box draws no random numbers: the pixels are the same."""
    h, w = size or (int(rng.integers(380, 520)), int(rng.integers(300, 440)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.06 + 0.06 * rng.random() + 0.04 * (yy / h)  # detector background
    bones = _bones_for_region(region, h, w, rng)
    # Soft tissue: a smooth envelope around the bones.
    tissue = np.zeros((h, w))
    for b in bones:
        dist, _ = _capsule_distance(yy, xx, b["p0"], b["p1"])
        tissue = np.maximum(tissue, np.clip((b["r"] * 3.2 - dist) / (b["r"] * 1.5), 0, 1))
    img = img + tissue * rng.uniform(0.18, 0.28)
    long_bones = [i for i, b in enumerate(bones) if b["long"]]
    broken = int(rng.choice(long_bones)) if fractured and long_bones else -1
    bone_layer = np.zeros((h, w))
    cortex, medulla = rng.uniform(0.45, 0.6), rng.uniform(0.25, 0.35)
    for i, b in enumerate(bones):
        dist, t = _capsule_distance(yy, xx, b["p0"], b["p1"])
        if i != broken:
            bone_layer = np.maximum(bone_layer, _bone_intensity(dist, b["r"], cortex, medulla))
            continue
        # Fracture: jagged, possibly oblique line across the shaft; distal fragment displaced.
        axis = b["p1"] - b["p0"]
        length = float(np.hypot(*axis)) or 1.0
        normal = np.array([-axis[1], axis[0]]) / length
        perp = (yy - b["p0"][0]) * normal[0] + (xx - b["p0"][1]) * normal[1]
        t_c = rng.uniform(0.3, 0.7)
        slope = rng.uniform(-0.8, 0.8) / length
        jag = (rng.uniform(1.5, 4.0) / length) * np.sin(perp / rng.uniform(2.5, 6.0) + rng.uniform(0, 6.3))
        line = t_c + slope * perp + jag
        # Distal fragment: angulated about the break and displaced, as in a displaced fracture.
        centre = b["p0"] + axis * t_c
        theta = np.deg2rad(rng.uniform(10.0, 25.0)) * rng.choice([-1, 1])
        shift = normal * b["r"] * rng.uniform(0.4, 0.9) * rng.choice([-1, 1])
        dy, dx = yy - centre[0] - shift[0], xx - centre[1] - shift[1]
        ry = centre[0] + np.cos(theta) * dy - np.sin(theta) * dx
        rx = centre[1] + np.sin(theta) * dy + np.cos(theta) * dx
        dist2, _ = _capsule_distance(ry, rx, b["p0"], b["p1"])
        near = _bone_intensity(dist, b["r"], cortex, medulla)
        far = _bone_intensity(dist2, b["r"], cortex, medulla)
        bone = np.where(t < line, near, far)
        gap_half = max(b["r"] * 0.45, h * 0.02) * rng.uniform(0.8, 1.3) / length
        gap = np.clip(1.0 - (np.abs(t - line) - gap_half) * length / 1.2, 0.0, 1.0)
        bone_layer = np.maximum(bone_layer, bone * (1.0 - 0.95 * gap))
        if box_out is not None:
            ys, xs = np.nonzero((gap > 0.5) & ((dist < b["r"]) | (dist2 < b["r"])))
            if len(ys):
                box_out.append((max(0.0, (xs.min() - 2) / w), max(0.0, (ys.min() - 2) / h),
                                min(1.0, (xs.max() + 3) / w), min(1.0, (ys.max() + 3) / h)))
    img = img + bone_layer
    if hardware:  # metal plate or screw: the brightest thing on the film
        b = bones[long_bones[0] if long_bones else 0]
        c = b["p0"] + (b["p1"] - b["p0"]) * rng.uniform(0.2, 0.8)
        ph, pw = int(rng.integers(30, 90)), int(rng.integers(6, 14))
        img[max(0, int(c[0]) - ph // 2):int(c[0]) + ph // 2, max(0, int(c[1]) - pw // 2):int(c[1]) + pw // 2] = 0.97
    # Skin folds: thin lines that are not fractures, on both classes.
    for _ in range(int(rng.integers(0, 3))):
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, np.pi)
        d = np.abs((yy - y0) * np.cos(ang) - (xx - x0) * np.sin(ang))
        img = img - 0.05 * np.clip(1.5 - d, 0, 1) * (1 - bone_layer)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, rng.uniform(0.01, 0.025), (h, w))
    arr = (np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15) * 255).astype(np.uint8)
    blurred = Image.fromarray(arr).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    return np.asarray(blurred)


def phantom_rows(n_images: int, seed: int) -> List[Dict]:
    """Metadata for every phantom image; image i depends only on (seed, i)."""
    rows = []
    regions, probs = list(REGION_P), np.array(list(REGION_P.values()))
    for i in range(n_images):
        rng = np.random.default_rng([seed, i, 0])
        region = str(rng.choice(regions, p=probs / probs.sum()))
        fractured = int(rng.random() < FRACTURE_RATE)
        view = str(rng.choice(["frontal", "lateral", "oblique"], p=[0.55, 0.3, 0.15]))
        rows.append({"image_id": f"IMG{seed % 1000:03d}{i:05d}.jpg", "region": region, "fractured": fractured,
                     "hardware": int(rng.random() < 0.04), "multiscan": int(rng.random() < 0.05), "view": view})
    # Guarantee both classes even in tiny test sets.
    if n_images >= 2 and len({r["fractured"] for r in rows}) < 2:
        rows[0]["fractured"], rows[1]["fractured"] = 1, 0
    return rows


ANNOTATIONS = Path("Annotations") / "YOLO"  # FracAtlas's place for its YOLO boxes


def _yolo_line(box) -> str:
    x0, y0, x1, y1 = box
    return f"0 {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}\n"


def _write_boxes(out: Path, rows: List[Dict], seed: int, size, progress: bool, boxes: Dict[str, list]) -> None:
    """Annotations/YOLO/<stem>.txt for every fractured phantom, as FracAtlas ships them; written
    into a temporary folder renamed into place, so a reader never sees half of them. Images whose
    boxes are not in `boxes` (a cache made before boxes existed) are rendered again for them."""
    import os
    import shutil

    todo = [(i, r) for i, r in enumerate(rows) if r["fractured"] and r["image_id"] not in boxes]
    for i, row in progress_of(todo, "phantom fracture boxes", enabled=progress):
        found: List = []
        render_phantom(np.random.default_rng([seed, i, 1]), row["region"], True, size=size,
                       hardware=bool(row["hardware"]), box_out=found)
        boxes[row["image_id"]] = found
    tmp = out / "Annotations" / f".YOLO.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for row in rows:
        if row["fractured"]:
            stem = Path(row["image_id"]).stem
            (tmp / f"{stem}.txt").write_text("".join(_yolo_line(b) for b in boxes[row["image_id"]]))
    final = out / ANNOTATIONS
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # another process put the same boxes there first
        shutil.rmtree(tmp, ignore_errors=True)


def generate_phantom_dataset(out: Path, n_images: int = 1200, seed: int = 0, progress: bool = False,
                             size: Optional[Tuple[int, int]] = None) -> Path:
    """Write dataset.csv, images/{Fractured,Non_fractured} and the fracture boxes in
    Annotations/YOLO; reuse a complete earlier run (adding the boxes where it predates them)."""
    out = Path(out)
    marker = out / "phantom.json"
    params = {"generator_version": GENERATOR_VERSION, "n_images": n_images, "seed": seed,
              "size": list(size) if size else None}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        if not (out / ANNOTATIONS).is_dir():
            _write_boxes(out, phantom_rows(n_images, seed), seed, size, progress, {})
        return out
    for d in ("Fractured", "Non_fractured"):
        (out / "images" / d).mkdir(parents=True, exist_ok=True)
    rows = phantom_rows(n_images, seed)
    boxes: Dict[str, list] = {}
    for i, row in enumerate(progress_of(rows, "phantom radiographs", enabled=progress)):
        rng = np.random.default_rng([seed, i, 1])
        found: List = []
        arr = render_phantom(rng, row["region"], bool(row["fractured"]), size=size, hardware=bool(row["hardware"]),
                             box_out=found)
        if row["fractured"]:
            boxes[row["image_id"]] = found
        folder = "Fractured" if row["fractured"] else "Non_fractured"
        Image.fromarray(arr).save(out / "images" / folder / row["image_id"], quality=92)
    _write_boxes(out, rows, seed, size, False, boxes)
    with open(out / "dataset.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            region = row["region"]
            writer.writerow({
                "image_id": row["image_id"],
                **{r: int(region == r or (region == "mixed" and r in ("hand", "leg"))) for r in ("hand", "leg", "hip", "shoulder")},
                "mixed": int(region == "mixed"), "hardware": row["hardware"], "multiscan": row["multiscan"],
                "fractured": row["fractured"], "fracture_count": row["fractured"],
                **{v: int(row["view"] == v) for v in ("frontal", "lateral", "oblique")},
            })
    (out / "README.md").write_text(
        "# Phantom radiographs (synthetic)\n\nMade by `fracdata.phantom` (generator version "
        f"{GENERATOR_VERSION}, seed {seed}, {n_images} images). Not patient data, not FracAtlas: "
        "results on these images demonstrate the pipeline only. Annotations/YOLO holds each fracture's "
        "box (class 0), as FracAtlas ships its own.\n")
    marker.write_text(json.dumps(params))
    return out
