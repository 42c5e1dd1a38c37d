"""Fracture boxes from the annotation formats datasets ship: YOLO text, COCO JSON, VGG (VIA) JSON,
PASCAL VOC XML, and a YOLO export's data.yaml / class list.

Every box becomes (x0, y0, x1, y1) relative to the image's width and height, clipped to [0, 1], in
the image as stored (EXIF orientation is not applied to boxes). A polygon (YOLO segmentation
lines, COCO or VGG masks) becomes the box around it. A malformed annotation stops with the file,
the line or entry, and the reason; numbers a little outside [0, 1] (rounding) are clipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .data import DataError

Box = Tuple[float, float, float, float]
SizeOf = Callable[[str], Optional[Tuple[int, int]]]  # image file name -> (width, height) or None

_TOLERANCE = 0.02  # how far outside [0, 1] a relative coordinate may stray before it is an error


def clip_box(x0: float, y0: float, x1: float, y1: float) -> Optional[Box]:
    """The box clipped to the image; None when nothing of it is left."""
    x0, x1 = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
    y0, y1 = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return (round(x0, 6), round(y0, 6), round(x1, 6), round(y1, 6))


def _polygon_box(xs: Sequence[float], ys: Sequence[float]) -> Optional[Box]:
    return clip_box(min(xs), min(ys), max(xs), max(ys)) if xs and ys else None


def read_yolo_file(path: Path) -> Tuple[List[Box], List[int]]:
    """(boxes, class ids) of one YOLO label file: `class cx cy w h` lines, or `class x1 y1 ... xn yn`
    (segmentation polygons), all relative to the image size. An empty file means no box."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text YOLO label file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    boxes: List[Box] = []
    classes: List[int] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(float(fields[0]))
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{path}: line {line_no}: expected numbers, got {line.strip()[:60]!r}") from None
        if len(values) < 4 or (len(values) != 4 and len(values) % 2):
            raise DataError(f"{path}: line {line_no}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 ...', "
                            f"got {len(fields)} fields")
        if any(v < -_TOLERANCE or v > 1 + _TOLERANCE for v in values):
            raise DataError(f"{path}: line {line_no}: coordinates must be relative to the image (0 to 1), "
                            f"got {line.strip()[:60]!r}")
        if len(values) == 4:
            cx, cy, w, h = values
            if w < 0 or h < 0:
                raise DataError(f"{path}: line {line_no}: negative box width or height")
            box = clip_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            box = _polygon_box(values[0::2], values[1::2])
        if box is None:
            continue  # a zero-area box marks nothing
        boxes.append(box)
        classes.append(cls)
    return boxes, classes


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _num(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"{where}: expected a number, got {v!r:.40}")
    return float(v)


def read_coco(path: Path, size_of: SizeOf) -> Dict[str, List[Box]]:
    """file name -> boxes, from a COCO JSON (`images` with file_name/width/height, `annotations`
    with image_id and bbox [x, y, w, h] in pixels)."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DataError(f"{path}: not a COCO file (needs 'images' and 'annotations' lists)")
    images = {}
    for k, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DataError(f"{path}: images[{k}]: needs 'id' and 'file_name'")
        images[im["id"]] = im
    out: Dict[str, List[Box]] = {}
    for k, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise DataError(f"{where}: image_id {ann.get('image_id') if isinstance(ann, dict) else ann!r:.40} "
                            "is not in 'images'")
        im = images[ann["image_id"]]
        name = Path(im["file_name"]).name
        w, h = im.get("width"), im.get("height")
        if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0):
            size = size_of(name)
            if size is None:
                raise DataError(f"{where}: image {name!r} has no width/height and is not on disk")
            w, h = size
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and len(bbox) == 4:
            x, y, bw, bh = (_num(v, f"{where}.bbox") for v in bbox)
            box = clip_box(x / w, y / h, (x + bw) / w, (y + bh) / h)
        else:
            seg = ann.get("segmentation")
            if not (isinstance(seg, list) and seg and isinstance(seg[0], list)):
                raise DataError(f"{where}: needs 'bbox' [x, y, w, h] or a polygon 'segmentation'")
            pts = [_num(v, f"{where}.segmentation") for poly in seg for v in poly]
            box = _polygon_box([x / w for x in pts[0::2]], [y / h for y in pts[1::2]])
        out.setdefault(name, [])
        if box is not None:
            out[name].append(box)
    return out


def read_vgg(path: Path, size_of: SizeOf) -> Dict[str, List[Box]]:
    """file name -> boxes, from a VGG Image Annotator (VIA) JSON: rect, polygon, polyline, circle
    and ellipse regions, in pixels."""
    doc = _load_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("_via_img_metadata"), dict):
        doc = doc["_via_img_metadata"]
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a VGG/VIA annotation file (expected an object of images)")
    out: Dict[str, List[Box]] = {}
    for key, entry in doc.items():
        where = f"{path}: {key!r:.60}"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DataError(f"{where}: needs 'filename' and 'regions'")
        name = Path(entry["filename"]).name
        regions = entry.get("regions", [])
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        if not isinstance(regions, list):
            raise DataError(f"{where}: 'regions' must be a list")
        out.setdefault(name, [])
        if not regions:
            continue
        size = size_of(name)
        if size is None:
            raise DataError(f"{where}: image {name!r} is not on disk (VGG boxes are in pixels; its size is needed)")
        w, h = size
        for j, reg in enumerate(regions):
            shape = reg.get("shape_attributes", {}) if isinstance(reg, dict) else {}
            kind = shape.get("name")
            rw = f"{where}.regions[{j}]"
            if kind == "rect":
                x, y, bw, bh = (_num(shape.get(k), rw) for k in ("x", "y", "width", "height"))
                box = clip_box(x / w, y / h, (x + bw) / w, (y + bh) / h)
            elif kind in ("polygon", "polyline"):
                xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
                if not isinstance(xs, list) or not isinstance(ys, list):
                    raise DataError(f"{rw}: polygon needs all_points_x and all_points_y")
                box = _polygon_box([_num(v, rw) / w for v in xs], [_num(v, rw) / h for v in ys])
            elif kind in ("circle", "ellipse"):
                cx, cy = _num(shape.get("cx"), rw), _num(shape.get("cy"), rw)
                rx = _num(shape.get("r", shape.get("rx")), rw)
                ry = _num(shape.get("r", shape.get("ry")), rw)
                box = clip_box((cx - rx) / w, (cy - ry) / h, (cx + rx) / w, (cy + ry) / h)
            else:
                raise DataError(f"{rw}: unsupported region shape {kind!r:.20}")
            if box is not None:
                out[name].append(box)
    return out


def read_voc_file(path: Path, size_of: SizeOf) -> Tuple[str, List[Box]]:
    """(image file name, boxes) of one PASCAL VOC XML file."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: not a PASCAL VOC XML file ({exc})") from None
    name = (root.findtext("filename") or "").strip() or Path(path).stem + ".jpg"
    name = Path(name).name
    try:
        w, h = float(root.findtext("size/width") or 0), float(root.findtext("size/height") or 0)
    except ValueError:
        w = h = 0.0
    if w <= 0 or h <= 0:
        size = size_of(name)
        if size is None:
            raise DataError(f"{path}: no <size> and image {name!r} is not on disk")
        w, h = size
    boxes = []
    for k, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: object {k}: needs <bndbox> with numeric xmin, ymin, xmax, ymax") from None
        box = clip_box(x0 / w, y0 / h, x1 / w, y1 / h)
        if box is not None:
            boxes.append(box)
    return name, boxes


# FracAtlas ships the same fracture boxes in four formats; the first present is read.
FRACATLAS_ANNOTATIONS = (("YOLO", "YOLO"), ("COCO JSON", "COCO"), ("VGG JSON", "VGG"), ("PASCAL VOC", "PASCAL VOC"))


def fracatlas_annotations(root: Path, size_of: SizeOf) -> Tuple[Dict[str, List[Box]], Optional[str]]:
    """(image file name or stem -> boxes, the folder read) from FracAtlas's `Annotations/`; ({}, None)
    when there is none. YOLO files are keyed by stem (their name is the image's with .txt)."""
    base = Path(root) / "Annotations"
    for folder, kind in FRACATLAS_ANNOTATIONS:
        d = base / folder
        if not d.is_dir():
            continue
        if kind == "YOLO":
            files = sorted(p for p in d.glob("*.txt") if p.name not in ("classes.txt",))
            if files:
                return {p.stem: read_yolo_file(p)[0] for p in files}, f"Annotations/{folder}"
        elif kind in ("COCO", "VGG"):
            files = sorted(d.glob("*.json"))
            if files:
                out: Dict[str, List[Box]] = {}
                for f in files:
                    for name, bs in (read_coco(f, size_of) if kind == "COCO" else read_vgg(f, size_of)).items():
                        out.setdefault(name, []).extend(bs)
                return out, f"Annotations/{folder}/{files[0].name}" if len(files) == 1 else f"Annotations/{folder}"
        else:
            files = sorted(d.glob("*.xml"))
            if files:
                out = {}
                for f in files:
                    name, bs = read_voc_file(f, size_of)
                    out.setdefault(name, []).extend(bs)
                return out, f"Annotations/{folder}"
    return {}, None


def read_class_names(root: Path) -> Tuple[Optional[List[str]], Optional[str]]:
    """(class names, the file they came from) of a YOLO export: data.yaml / data.yml (`names:` as
    an inline list, a block list or an id: name mapping), else classes.txt, obj.names or *.names.
    (None, None) when there is none."""
    root = Path(root)
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        p = root / name
        if p.is_file():
            names = _yaml_names(p)
            if names is not None:
                return names, name
    for p in [root / "classes.txt", root / "obj.names", *sorted(root.glob("*.names"))]:
        if p.is_file():
            lines = [s.strip() for s in p.read_text(encoding="utf-8-sig", errors="replace").splitlines()]
            return [s for s in lines if s], p.name
    return None, None


def _unquote(s: str) -> str:
    s = s.strip()
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


def _yaml_names(path: Path) -> Optional[List[str]]:
    """`names` from a YOLO data.yaml without a YAML library: the three shapes exports write."""
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^names\s*:\s*(.*)$", line)
        if not m:
            continue
        rest = m.group(1).split(" #")[0].strip()
        if rest.startswith("["):
            inner = rest.strip("[]")
            return [_unquote(s) for s in re.findall(r"'[^']*'|\"[^\"]*\"|[^,]+", inner) if _unquote(s)]
        names: Dict[int, str] = {}
        listed: List[str] = []
        for sub in lines[i + 1:]:
            if not sub.strip() or sub.lstrip().startswith("#"):
                continue
            if not sub.startswith((" ", "\t", "-")):
                break
            s = sub.strip()
            if s.startswith("- "):
                listed.append(_unquote(s[2:]))
            elif ":" in s:
                k, v = s.split(":", 1)
                if k.strip().isdigit():
                    names[int(k)] = _unquote(v)
        if listed:
            return listed
        if names:
            return [names[k] for k in sorted(names)]
        return None
    return None
