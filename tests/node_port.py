"""Run a web app module's functions in Node on cases made in Python: the ports' parity tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, List, Sequence

import pytest

LIB = Path(__file__).resolve().parents[1] / "webapp" / "src" / "lib"


def run_node(tmp_path: Path, module: str, names: Sequence[str], each: str, cases: List[Any]) -> List[Any]:
    """`each` (a JS arrow function of one case, using `names` imported from webapp/src/lib/`module`)
    applied to every case, the cases passed as JSON on stdin; skipped where Node is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the web app's port cannot run")
    script = (f"import {{ {', '.join(names)} }} from {json.dumps((LIB / module).as_uri())};\n"
              "let s = ''; process.stdin.on('data', (d) => { s += d; });\n"
              f"process.stdin.on('end', () => {{ process.stdout.write(JSON.stringify(JSON.parse(s).map({each}))); }});\n")
    path = tmp_path / f"{Path(module).stem}_port.mjs"
    path.write_text(script)
    return json.loads(subprocess.run([node, str(path)], input=json.dumps(cases), text=True, capture_output=True,
                                     check=True, timeout=60).stdout)
