"""The data layouts users bring: FracAtlas with its boxes (YOLO, COCO, VGG, PASCAL VOC), a folder per
class, a YOLO export; detection, the override, the errors; duplicates across splits; and the real
forearm radiographs when ../shared has them (never copied here)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_fake_fracatlas
from fracdata.data import UNLABELLED, DataError, load_data
from fracdata.readers import detect_format, layout_split, read_dataset

FOREARM = Path(__file__).resolve().parents[2] / "shared" / "data" / "forearm-fractures"
def needs_forearm(test):
    """Skipped where the real radiographs are absent: the one skip CI accepts (tests/skip_rule.py)."""
    return pytest.mark.real_data(pytest.mark.skipif(not FOREARM.is_dir(),
                                                    reason="../shared/data/forearm-fractures is not present here")(test))


def _img(path: Path, seed: int, size=(48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8)).save(path)


def _fracatlas(tmp_path):
    rows = [{"image_id": f"IMG{i:07d}.jpg", "fractured": int(i < 3), "hand": 1} for i in range(6)]
    return write_fake_fracatlas(tmp_path / "fa", rows, image_size=(40, 50))  # 50 wide, 40 high


# ---------------------------------------------------------------- FracAtlas and its boxes

def test_fracatlas_boxes_from_yolo(tmp_path):
    root = _fracatlas(tmp_path)
    (root / "Annotations" / "YOLO").mkdir(parents=True)
    (root / "Annotations" / "YOLO" / "IMG0000000.txt").write_text("0 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.1 0.1\n")
    (root / "Annotations" / "YOLO" / "IMG0000001.txt").write_text("0 0.2 0.3 0.4 0.5 0.3 0.6\n")  # polygon
    ds = read_dataset(root)
    r = ds.by_id()
    assert ds.format == "fracatlas" and ds.annotations == "Annotations/YOLO"
    assert r["IMG0000000.jpg"].boxes == ((0.4, 0.3, 0.6, 0.7), (0.05, 0.05, 0.15, 0.15))
    assert r["IMG0000001.jpg"].boxes == ((0.2, 0.3, 0.4, 0.6),)
    assert r["IMG0000002.jpg"].boxes is None  # fractured, no annotation: location unknown
    assert r["IMG0000004.jpg"].boxes == ()  # non-fractured: known to have none
    assert "2 of 3 fractured images" in ds.notes[0] and ds.counts()["fractured_with_boxes"] == 2


def test_fracatlas_boxes_from_coco_vgg_and_voc(tmp_path):
    root = _fracatlas(tmp_path)
    coco = {"images": [{"id": 7, "file_name": "IMG0000000.jpg", "width": 50, "height": 40},
                       {"id": 8, "file_name": "IMG0000001.jpg"}],  # no size: read from the file
            "annotations": [{"id": 1, "image_id": 7, "bbox": [10, 8, 20, 16], "segmentation": [[10, 8, 30, 24]]},
                            {"id": 2, "image_id": 8, "segmentation": [[5, 4, 25, 4, 25, 20]]}],
            "categories": [{"id": 1, "name": "fractured"}]}
    (root / "Annotations" / "COCO JSON").mkdir(parents=True)
    (root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").write_text(json.dumps(coco))
    ds = read_dataset(root)
    assert ds.annotations == "Annotations/COCO JSON/COCO_fracture_masks.json"
    assert ds.by_id()["IMG0000000.jpg"].boxes == ((0.2, 0.2, 0.6, 0.6),)
    assert ds.by_id()["IMG0000001.jpg"].boxes == ((0.1, 0.1, 0.5, 0.5),)

    (root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").unlink()
    vgg = {"IMG0000002.jpg1234": {"filename": "IMG0000002.jpg", "size": 1234, "file_attributes": {}, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [5, 25, 15], "all_points_y": [4, 4, 20]},
         "region_attributes": {}},
        {"shape_attributes": {"name": "rect", "x": 40, "y": 30, "width": 20, "height": 20}}]}}
    (root / "Annotations" / "VGG JSON").mkdir(parents=True)
    (root / "Annotations" / "VGG JSON" / "VGG_fracture_masks.json").write_text(json.dumps(vgg))
    ds = read_dataset(root)
    assert ds.annotations.startswith("Annotations/VGG JSON")
    assert ds.by_id()["IMG0000002.jpg"].boxes == ((0.1, 0.1, 0.5, 0.5), (0.8, 0.75, 1.0, 1.0))  # clipped

    (root / "Annotations" / "VGG JSON" / "VGG_fracture_masks.json").unlink()
    (root / "Annotations" / "PASCAL VOC").mkdir(parents=True)
    (root / "Annotations" / "PASCAL VOC" / "IMG0000000.xml").write_text(
        "<annotation><filename>IMG0000000.jpg</filename><size><width>50</width><height>40</height></size>"
        "<object><name>fractured</name><bndbox><xmin>10</xmin><ymin>8</ymin><xmax>30</xmax><ymax>24</ymax>"
        "</bndbox></object></annotation>")
    assert read_dataset(root).by_id()["IMG0000000.jpg"].boxes == ((0.2, 0.2, 0.6, 0.6),)


def test_a_malformed_annotation_names_the_file_and_line(tmp_path):
    root = _fracatlas(tmp_path)
    (root / "Annotations" / "YOLO").mkdir(parents=True)
    bad = root / "Annotations" / "YOLO" / "IMG0000000.txt"
    bad.write_text("0 0.5 0.5 0.2 0.2\n0 0.5 zero 0.2 0.2\n")
    with pytest.raises(DataError, match=r"IMG0000000.txt: line 2: expected numbers"):
        read_dataset(root)
    bad.write_text("0 120 80 30 30\n")  # pixels, not relative coordinates
    with pytest.raises(DataError, match=r"IMG0000000.txt: line 1: coordinates must be relative"):
        read_dataset(root)
    bad.unlink()
    (root / "Annotations" / "COCO JSON").mkdir(parents=True)
    (root / "Annotations" / "COCO JSON" / "c.json").write_text("{not json")
    with pytest.raises(DataError, match=r"c.json: not valid JSON"):
        read_dataset(root)


# ---------------------------------------------------------------- a folder per class

@pytest.mark.parametrize("negative", ["not fractured", "non_fractured", "normal", "Non-Fractured"])
def test_folder_per_class_at_the_top(tmp_path, negative):
    root = tmp_path / "kaggle"
    for i in range(3):
        _img(root / "fractured" / f"f{i}.png", i)
        _img(root / negative / f"n{i}.jpg", 10 + i)
    (root / "fractured" / "notes.txt").write_text("not an image")
    assert detect_format(root) == "folders"
    ds = load_data(str(root), quiet=True)
    assert ds.format == "folders" and ds.name == "kaggle"
    assert ds.counts() == {"images": 6, "fractured": 3, "non_fractured": 3}
    r = ds.by_id()
    assert r["fractured/f0.png"].label == 1 and r[f"{negative}/n1.jpg"].label == 0
    assert all(x.split is None for x in ds.records) and layout_split(ds) is None


def test_folder_per_class_under_splits_is_honoured(tmp_path):
    root = tmp_path / "split"
    k = 0
    for split, n in (("train", 14), ("val", 4), ("test", 4)):
        for i in range(n):
            _img(root / split / "Fractured" / f"a{i}.png", k)
            _img(root / split / "Not Fractured" / f"a{i}.png", k + 1000)  # same name, other class
            k += 1
    ds = read_dataset(root)
    assert ds.format == "folders" and len(ds.records) == 44
    assert ds.by_id()["test/Fractured/a0.png"].split == "test"
    assignment = layout_split(ds)
    assert assignment["val/Not Fractured/a3.png"] == "val" and sum(v == "train" for v in assignment.values()) == 28


def test_a_missing_val_split_is_carved_from_train_only(tmp_path):
    root = tmp_path / "tt"
    for split, n in (("train", 20), ("test", 5)):
        for i in range(n):
            _img(root / split / "fractured" / f"{i}.png", i)
            _img(root / split / "normal" / f"{i}.png", 100 + i)
    ds = read_dataset(root)
    a = layout_split(ds, seed=1)
    assert sorted(set(a.values())) == ["test", "train", "val"]
    assert all(a[i] == "test" for i in a if i.startswith("test/"))  # the given test split stays whole
    assert all(i.startswith("train/") for i in a if a[i] == "val")
    assert {ds.by_id()[i].label for i in a if a[i] == "val"} == {0, 1}
    assert "no val folder" in " ".join(ds.notes)


# ---------------------------------------------------------------- YOLO exports

def _yolo(root: Path, names_yaml: str = "names: ['angle', 'fracture', 'line']\nnc: 3\n") -> Path:
    for k, split in enumerate(("train", "valid", "test")):
        for i in range(4):
            _img(root / split / "images" / f"{split}{i}.jpg", 10 * k + i)
            label = root / split / "labels" / f"{split}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("" if i == 3 else f"{i % 3} 0.5 0.5 0.2 0.2\n")
    if names_yaml:
        (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n" + names_yaml)
    return root


def test_yolo_export_with_data_yaml_and_splits(tmp_path):
    root = _yolo(tmp_path / "rf")
    assert detect_format(root) == "yolo"
    ds = read_dataset(root)
    assert ds.format == "yolo" and ds.provenance["class_names"] == ["angle", "fracture", "line"]
    assert len(ds.records) == 9 and all(r.label == 1 and r.boxes for r in ds.records)
    assert len(ds.unlabelled) == 3 and all(r.label == UNLABELLED for r in ds.unlabelled)
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    assert any("3 image(s) without boxes" in n and "UNLABELLED" in n for n in ds.notes)
    with pytest.raises(DataError, match="--unboxed negative"):
        ds.require_both_classes()
    neg = read_dataset(root, unboxed="negative")
    assert neg.counts() == {"images": 12, "fractured": 9, "non_fractured": 3, "fractured_with_boxes": 9}
    assert any("assumed NOT fractured" in n for n in neg.notes)
    neg.require_both_classes()
    pos = read_dataset(root, unboxed="fractured")
    assert pos.counts()["fractured"] == 12 and sum(r.boxes is None for r in pos.records) == 3


@pytest.mark.parametrize("names", ["names:\n  - angle\n  - fracture\n  - line\n",
                                   "names:\n  0: angle\n  1: fracture\n  2: line\n"])
def test_yolo_names_in_block_form(tmp_path, names):
    assert read_dataset(_yolo(tmp_path / "b", names)).provenance["class_names"] == ["angle", "fracture", "line"]


def test_yolo_class_list_flat_layout_and_bad_class(tmp_path):
    root = tmp_path / "flat"
    for i in range(3):
        _img(root / "images" / f"x{i}.png", i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"x{i}.txt").write_text("0 0.5 0.5 0.1 0.1")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1")
    (root / "classes.txt").write_text("fracture\n")
    ds = read_dataset(root)
    assert ds.provenance["class_names_from"] == "classes.txt" and ds.records[0].image_id == "images/x0.png"
    assert any("1 label file(s) without an image" in n for n in ds.notes)
    (root / "labels" / "x1.txt").write_text("4 0.5 0.5 0.1 0.1")
    with pytest.raises(DataError, match=r"x1.txt: class id 4 but classes.txt names 1 classes"):
        read_dataset(root)


def test_no_known_layout_says_what_was_expected(tmp_path):
    root = tmp_path / "odd"
    _img(root / "pictures" / "a.png", 0)
    with pytest.raises(DataError) as exc:
        load_data(str(root), quiet=True)
    msg = str(exc.value)
    assert "no known data layout" in msg and "pictures/" in msg
    for expected in ("FracAtlas", "dataset.csv", "fractured/", "non_fractured/", "normal/", "YOLO", "labels/"):
        assert expected in msg


def test_data_format_overrides_detection(tmp_path):
    root = _yolo(tmp_path / "rf")
    with pytest.raises(DataError, match="no class folders"):
        read_dataset(root, "folders")
    with pytest.raises(DataError, match="unknown --data-format"):
        read_dataset(root, "coco")
    folders = tmp_path / "f"
    for i in range(2):
        _img(folders / "fractured" / f"{i}.png", i)
        _img(folders / "normal" / f"{i}.png", 5 + i)
    with pytest.raises(DataError, match="no images/ folder beside labels/"):
        read_dataset(folders, "yolo")


# ---------------------------------------------------------------- the same image in two splits

def test_exact_and_near_duplicates_across_splits_are_reported(tmp_path, capsys):
    from train.duplicates import main as dup_main
    from fracdata.phantom import render_phantom

    root = tmp_path / "dups"
    arrays = [render_phantom(np.random.default_rng(i), region, bool(i % 2), size=(220, 180))
              for i, region in enumerate(["leg", "hand", "hip", "shoulder", "leg", "hand"])]
    for d in ("train/fractured", "train/normal", "test/fractured", "test/normal"):
        (root / d).mkdir(parents=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(root / "train" / ("fractured" if i % 2 else "normal") / f"{i}.png")
    (root / "test" / "fractured" / "copy.png").write_bytes((root / "train" / "fractured" / "1.png").read_bytes())
    turned = Image.fromarray(arrays[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(5, fillcolor=0)
    turned.save(root / "test" / "normal" / "turned.jpg", quality=80)
    Image.fromarray(render_phantom(np.random.default_rng(99), "leg", False, size=(220, 180))).save(
        root / "test" / "normal" / "other.png")
    assert dup_main(["--data", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cross = {(r["a"], r["b"]): r for r in report["across_splits_listed"]}
    assert cross[("test/fractured/copy.png", "train/fractured/1.png")]["kind"] == "exact"
    near = cross[("test/normal/turned.jpg", "train/normal/0.png")]
    assert near["kind"] == "near" and near["distance"] <= report["threshold"]
    assert not any("other.png" in a or "other.png" in b for a, b in cross)


def test_run_training_reports_duplicates_and_honours_the_split(tmp_path):
    """The training path's own use: the loaded splits' resized images, hashed."""
    from edge_runtime.preprocess import PreprocessSpec
    from fracdata.images import load_images
    from train.duplicates import across_splits, warning_lines

    root = tmp_path / "s"
    for k, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 2))):
        for i in range(n):
            _img(root / split / "fractured" / f"{i}.png", 100 * k + i, size=(64, 64))
            _img(root / split / "normal" / f"{i}.png", 100 * k + 50 + i, size=(64, 64))
    (root / "test" / "normal" / "leak.png").write_bytes((root / "train" / "normal" / "0.png").read_bytes())
    ds = read_dataset(root)
    a = layout_split(ds)
    spec = PreprocessSpec(size=64)
    parts = {s: load_images([r for r in ds.records if a[r.image_id] == s], spec, progress=False)
             for s in ("train", "val", "test")}
    report = across_splits(parts)
    assert report["across_splits"] >= 1
    assert any("leak.png" in line for line in warning_lines(report))


# ---------------------------------------------------------------- real radiographs, read in place

@needs_forearm
def test_real_forearm_set_reads_as_a_yolo_export_with_boxes():
    ds = load_data(str(FOREARM), quiet=True)
    assert ds.format == "yolo" and not ds.phantom
    c = ds.counts()
    assert c["fractured"] == c["fractured_with_boxes"] == 282 and c["non_fractured"] == 0 and c["unlabelled"] == 15
    assert any("class names unknown" in n for n in ds.notes)
    for r in ds.records[:5]:
        assert all(0 <= v <= 1 for b in r.boxes for v in b) and r.path.is_file()
    with pytest.raises(DataError, match="needs both fractured and non-fractured"):
        ds.require_both_classes()


@needs_forearm
def test_near_duplicate_hash_on_real_radiographs():
    """A published-style copy (mirrored, rotated, re-encoded) of a real radiograph is found; a pair
    the hash flags in the set is the same radiograph twice; two different hands are told apart."""
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import PreprocessSpec, resize_input
    from train.duplicates import DEFAULT_THRESHOLD, _copy_of, image_hashes, symmetric_distances

    spec = PreprocessSpec()

    def h(name):
        return image_hashes(resize_input(read_image(FOREARM / "images" / name, spec).pixels, spec))[None]

    names = ["forearm_137_jpg.jpg", "forearm_165_jpg.jpg", "forearm_131_jpg.jpg", "forearm_213_jpg.jpg"]
    if not all((FOREARM / "images" / n).is_file() for n in names):
        pytest.skip("the forearm set's files differ from the ones measured")
    a, b, c, d = (h(n) for n in names)
    assert symmetric_distances(a, b)[0, 0] <= DEFAULT_THRESHOLD  # one radiograph published twice
    assert symmetric_distances(c, d)[0, 0] > DEFAULT_THRESHOLD  # two different hands
    px = read_image(FOREARM / "images" / names[2], spec).pixels
    copy = image_hashes(resize_input(_copy_of(px, np.random.default_rng(0)), spec))[None]
    assert symmetric_distances(copy, c)[0, 0] <= DEFAULT_THRESHOLD
