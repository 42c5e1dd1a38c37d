"""Every command says what it does and every option what it takes and its default, in --help:
a newcomer's first documentation. Walks the parsers the CLIs build (no command is run, nothing heavy
is imported)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

CLIS = ["edge_runtime.cli", "device.cli", "benchmarks.cli", "benchmarks.webapp", "benchmarks.fuzz", "benchmarks.fsfuzz",
        "benchmarks.page", "benchmarks.formats", "benchmarks.sizes", "benchmarks.onnx_formats", "export.signing", "train.cli", "train.evaluate", "train.report",
        "train.duplicates", "export.quantize", "train.scope_evaluate", "train.scope_compare", "train.acquisition_shift",
        "fracdata.ood", "fracdata.real_ood"]
ROOT = Path(__file__).resolve().parent.parent


def _parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    grabbed = []

    def grab(self, args=None, namespace=None):
        grabbed.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", lambda self, *a, **k: grab(self))
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([])
    return grabbed[0]


def _problems(parser: argparse.ArgumentParser, where: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not (sub.description or helps.get(name)):
                    yield f"{where} {name}: no description"
                yield from _problems(sub, f"{where} {name}")
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            yield f"{where} {name}: no help text"
            continue
        takes_value = action.nargs != 0 and action.option_strings
        if takes_value and action.default not in (None, False, argparse.SUPPRESS, []) \
                and "%(default)" not in action.help and "default:" not in action.help:  # "(default: ...)", said
            yield f"{where} {name}: default {action.default!r} not shown"


@pytest.mark.parametrize("module", CLIS)
def test_every_command_and_option_is_described_with_its_default(module, monkeypatch):
    parser = _parser(module, monkeypatch)
    assert parser.description, f"{module}: no description"
    problems = list(_problems(parser, module))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", ["train.cli", "train.evaluate", "export.quantize"])
def test_the_tensorflow_commands_take_verbose(module):
    parser = importlib.import_module(module).build_parser()
    assert "--verbose" in parser.format_help()


def test_help_and_listing_models_start_without_tensorflow():
    code = ("import sys; from train.cli import main; main(['--list-models']); "
            "from export.quantize import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras', 'tf2onnx'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "custom_cnn_gap   128px stretch/bilinear, window, dihedral" in out
    assert out.strip().splitlines()[-1] == "[]"
