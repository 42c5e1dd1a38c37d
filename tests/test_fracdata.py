"""fracdata, the data layer under train and export: it works with TensorFlow (and every other
heavy library) blocked, finds and checks run directories, records versions, and reports progress
and holds back library noise the way the CLIs rely on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["fracdata", "fracdata.data", "fracdata.readers", "fracdata.boxes", "fracdata.phantom", "fracdata.split",
           "fracdata.images", "fracdata.runs", "fracdata.provenance", "fracdata.progress", "fracdata.console"]

BLOCKED_WORK = """
import importlib.abc, json, sys
BLOCK = {"tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "sklearn", "matplotlib", "tqdm",
         "train", "export", "device", "benchmarks"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Blocker())
import importlib
for m in MODULES:
    importlib.import_module(m)
from pathlib import Path
from edge_runtime.preprocess import PreprocessSpec
from fracdata.data import load_data
from fracdata.images import load_images
from fracdata.phantom import generate_phantom_dataset
from fracdata.provenance import versions
from fracdata.split import load_split, records_by_split, save_split

out = Path(sys.argv[1])
generate_phantom_dataset(out / "phantom", n_images=12, seed=3, size=(64, 56))
ds = load_data(str(out / "phantom"), quiet=True)
assignment = {r.image_id: ("train", "val", "test")[i % 3] for i, r in enumerate(ds.records)}
save_split(assignment, ds, out / "split.csv")
parts = records_by_split(ds, load_split(out / "split.csv", ds))
loaded = load_images(parts["test"], PreprocessSpec(size=32), progress=False)
leaked = sorted({m.split(".")[0] for m in sys.modules} & BLOCK)
print(json.dumps({"images": loaded.images.shape[0], "phantom": ds.phantom, "leaked": leaked,
                  "python": versions(["numpy"])["python"]}))
""".replace("MODULES", repr(MODULES))


def test_every_module_imports_and_works_with_tensorflow_and_the_other_stages_blocked(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCKED_WORK, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"images": 4, "phantom": True, "leaked": [], "python": out["python"]}


def test_the_package_is_in_the_wheel():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "fracdata" in cfg["packages"]


def _run_dir(root: Path, name: str = "custom_cnn_gap") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "split.csv").write_text("image_id,split\na.jpg,train\n")
    (d / "model.keras").write_bytes(b"not read here")
    from fracdata.provenance import sha256_file

    run = {"model": {"name": name}, "split": {"file": "split.csv", "sha256": sha256_file(d / "split.csv")}}
    (d / "run.json").write_text(json.dumps(run))
    return d


def test_run_directories_are_found_one_level_down_and_their_split_is_checked(tmp_path):
    from fracdata.data import DataError
    from fracdata.runs import read_run, run_dirs

    a, b = _run_dir(tmp_path / "all", "custom_cnn"), _run_dir(tmp_path / "all", "custom_cnn_gap")
    assert run_dirs(tmp_path / "all") == [a, b] and run_dirs(a) == [a]
    with pytest.raises(DataError, match="no run.json here or in its subfolders"):
        run_dirs(tmp_path)
    run = read_run(b)
    assert run.name == "custom_cnn_gap" and run.model_path == b / "model.keras" and run.metrics is None
    (b / "split.csv").write_text("image_id,split\na.jpg,test\n")
    with pytest.raises(DataError, match="split was changed after training"):
        read_run(b)
    (a / "model.keras").unlink()
    with pytest.raises(DataError, match="has no model.keras"):
        read_run(a)


def test_versions_name_python_the_platform_and_each_package():
    from fracdata.provenance import package_version, versions

    v = versions(["numpy", "no-such-distribution-here"])
    assert {"python", "platform", "machine"} <= set(v)
    assert v["numpy"] == np.__version__ and v["no-such-distribution-here"] is None
    assert package_version("pillow") is not None


def test_progress_off_a_terminal_prints_lines_not_bars(monkeypatch):
    from fracdata import progress as P

    quick = io.StringIO()
    assert list(P.progress(range(20), "quick", stream=quick)) == list(range(20))
    assert quick.getvalue().splitlines() == [quick.getvalue().splitlines()[-1]]  # a fast loop: its last line only
    assert quick.getvalue().startswith("quick: 20/20 img (")
    monkeypatch.setattr(P, "LINE_SECONDS", 0.0)
    slow = io.StringIO()
    list(P.progress(range(100), "slow", stream=slow, unit="file"))
    lines = slow.getvalue().splitlines()
    assert len(lines) == P.LINES_OFF_TERMINAL and lines[0].startswith("slow: 10/100 file") and "100/100" in lines[-1]
    off = io.StringIO()
    assert list(P.progress(iter([1, 2]), "off", enabled=False, stream=off)) == [1, 2] and off.getvalue() == ""


def test_library_start_up_noise_is_held_back_and_everything_else_kept(capfd):
    from fracdata.console import is_noise, native_stderr_filtered

    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1795984781.319274   16758 port.cc:153] oneDNN custom operations are on. You may see",
             "E0000 00:00:1795984783.252162   16758 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
             "fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8"]
    assert all(is_noise(line) for line in noise)
    assert not any(is_noise(line) for line in ["error: data/x.jpg: not an image", "Traceback (most recent call last):"])
    with native_stderr_filtered():
        os.write(2, ("\n".join(noise) + "\nsomething the user must see\n").encode())
        print("and from Python", file=sys.stderr)
    assert sorted(capfd.readouterr().err.splitlines()) == ["and from Python", "something the user must see"]


@pytest.mark.slow
def test_tensorflow_starts_silently():
    """No oneDNN notice, no absl preamble, no cuInit error on a machine without a GPU."""
    code = ("from fracdata.console import quiet_start; quiet_start(False, ['tensorflow']); "
            "import tensorflow as tf; tf.config.list_physical_devices('GPU'); print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                           timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok"
    assert quiet.stderr == "", quiet.stderr
