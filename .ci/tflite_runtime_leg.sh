#!/usr/bin/env bash
# Older devices: tflite-runtime 2.14 (its last release) imports only beside numpy 1.x. Run the
# committed reference bundle through it in a second, minimal venv and compare with LiteRT in the
# main one (the same model file, different kernel builds: results may differ in the last steps).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_PY=${1:-.venv-ci/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$MAIN_PY" -c "from fracdata.phantom import generate_phantom_dataset as g; g('$WORK/ph', n_images=12, seed=3, size=(180, 150), progress=False)"
"$MAIN_PY" -m edge_runtime predict --backend litert --json "$WORK"/ph/images/*/*.jpg > "$WORK/litert.jsonl" 2>/dev/null
python3 -m venv "$WORK/np1"
"$WORK/np1/bin/python" -m pip install --quiet "numpy<2" "tflite-runtime==2.14.0" "Pillow>=10"
"$WORK/np1/bin/python" -c "import numpy; assert numpy.__version__ < '2', numpy.__version__"
"$WORK/np1/bin/python" -m edge_runtime predict --backend tflite --json "$WORK"/ph/images/*/*.jpg > "$WORK/tflite.jsonl" 2>/dev/null
"$MAIN_PY" - "$WORK/litert.jsonl" "$WORK/tflite.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) == 12 and all(r["backend"] == "tflite" for r in b)
worst = max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b))
assert worst <= 0.02, f"tflite-runtime and LiteRT differ by {worst}"
print(f"tflite-runtime 2.14 under numpy<2 agrees with LiteRT on 12 images (max |dp| {worst:.4f})")
PY
