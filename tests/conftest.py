import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fracdata.phantom import CSV_COLUMNS, generate_phantom_dataset  # noqa: E402


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom FracAtlas folder shared by the slow tests (60 images, small sizes)."""
    return generate_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_images=60, seed=7, size=(180, 150))


def write_fake_fracatlas(root: Path, rows, image_size=(40, 32)) -> Path:
    """A FracAtlas-shaped folder from dict rows (image_id, fractured, region flags...)."""
    for d in ("Fractured", "Non_fractured"):
        (root / "images" / d).mkdir(parents=True, exist_ok=True)
    with open(root / "dataset.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for i, row in enumerate(rows):
            full = {c: 0 for c in CSV_COLUMNS}
            full.update(row)
            w.writerow(full)
            folder = "Fractured" if int(full["fractured"]) else "Non_fractured"
            arr = (np.random.default_rng(i).random(image_size) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "images" / folder / full["image_id"])
    return root


@pytest.fixture
def fake_fracatlas(tmp_path) -> Path:
    rows = []
    for i in range(12):
        region = ["hand", "leg", "hip", "shoulder"][i % 4]
        rows.append({"image_id": f"IMG{i:07d}.jpg", "fractured": int(i % 3 == 0), region: 1,
                     "hardware": int(i == 5), "frontal": 1, "lateral": int(i == 2)})
    rows.append({"image_id": "IMG0000099.jpg", "fractured": 1, "hand": 1, "leg": 1, "mixed": 1})
    return write_fake_fracatlas(tmp_path / "fracatlas", rows)


@pytest.fixture(scope="session")
def tiny_run(phantom_dir, tmp_path_factory) -> Path:
    """One epoch of custom_cnn_gap on the small phantom set: a real run directory, made once."""
    from train.cli import main as train_main

    out = tmp_path_factory.mktemp("runs") / "cnn"
    rc = train_main(["--model", "custom_cnn_gap", "--data", str(phantom_dir), "--out", str(out),
                     "--epochs", "1", "--batch-size", "16", "--bootstrap", "100"])
    assert rc == 0
    return out


# A one-epoch model barely separates the classes, so its decisions sit near the threshold; the
# shared bundle is exported with open tolerances and the checks themselves are tested separately.
OPEN_TOLERANCES = ["--max-auc-drop", "1", "--min-agreement", "0", "--max-mean-abs-diff", "1", "--max-abs-diff", "1"]


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    from export.quantize import main as export_main

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    # Without the out-of-scope gate: fitting one photographs hundreds of images (minutes), and a
    # one-epoch model's gate would refuse at random what these tests predict. A classifier's gate
    # is tested on its own (tests/test_scope.py).
    rc = export_main([str(tiny_run), "--out", str(out), "--calibration-size", "20", "--scope-size", "0",
                      "--artifacts", "tflite_int8,onnx_float,onnx_int8,tflite_float", *OPEN_TOLERANCES])
    assert rc == 0
    return out


# --- heavy tests: in CI always, in a developer's default run not --------------------------------

def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", dest="all_tests",
                     help="also run the tests marked heavy (what CI runs: `python -m pytest -q --all`)")


def pytest_collection_modifyitems(config, items):
    """Leave the heavy tests out of a bare run only: --all, -m, -k or a file or test named on the
    command line runs what it selects, heavy or not."""
    named = config.args_source != pytest.Config.ArgsSource.TESTPATHS
    if config.getoption("all_tests") or config.getoption("markexpr") or config.getoption("keyword") or named:
        return
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("heavy")]
        config._heavy_left_out = len(heavy)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = getattr(config, "_heavy_left_out", 0)
    if n:
        terminalreporter.write_line(f"{n} heavy tests left out (the longest ones, and the network); "
                                    "`python -m pytest -q --all` runs everything, as CI does")
