"""The words a clinic reads: a training run given as a bundle gets the export command, an
unreadable file gets a reason a technician understands, and the timings wait for --verbose."""

from __future__ import annotations

from pathlib import Path

from device.cli import main as device_main
from device.demo import SAMPLES
from edge_runtime.cli import main as runtime_main

SAMPLE = SAMPLES / "phantom_intact_hand.png"


def test_a_training_run_given_as_a_bundle_gets_the_export_command(tmp_path, capsys):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes(b"")
    (run / "run.json").write_text("{}")
    assert runtime_main(["predict", "--bundle", str(run), str(SAMPLE)]) == 2
    err = capsys.readouterr().err
    assert f"{run} is a training run, not a bundle" in err
    assert f"python -m export.quantize {run} --out {run}-bundle" in err
    assert device_main(["update", str(run), "--root", str(tmp_path / "opt")]) != 0
    assert "is a training run" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runtime_main(["predict", "--bundle", str(empty), str(SAMPLE)]) == 2
    err = capsys.readouterr().err
    assert "not a bundle folder" in err and "training run" not in err


def test_answers_read_as_words_and_the_timings_wait_for_verbose(tmp_path, capsys):
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"\x00\x01binary of some other program" * 20)
    runtime_main(["predict", str(SAMPLE), str(odd)])
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith(str(SAMPLE)))
    assert "threshold" in line and " ms" not in line and "Grad-CAM" not in line and "inference" not in line
    bad = next(l for l in out.splitlines() if l.startswith(str(odd)))
    assert "ERROR" in bad and "Pillow" not in bad and "JPEG" in bad
    assert runtime_main(["predict", "--verbose", str(SAMPLE)]) == 0
    captured = capsys.readouterr()
    assert "inference" in captured.out and " ms" in captured.out and "model fracture_map" in captured.err
