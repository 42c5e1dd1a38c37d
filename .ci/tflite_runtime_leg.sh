#!/usr/bin/env bash
# Older devices: tflite-runtime 2.14 (its last release) imports only beside numpy 1.x. Run the
# committed reference bundle through it in a second, minimal venv and compare with LiteRT in the
# main one (the same model file, different kernel builds: results may differ in the last steps).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_PY=${1:-.venv-ci/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$MAIN_PY" -c "from fracdata.phantom import generate_phantom_dataset as g; g('$WORK/ph', n_images=12, seed=3, progress=False)"
# exit status 1: some input refused (e.g. outside what the model reads), which the comparison below covers
"$MAIN_PY" -m edge_runtime predict --backend litert --json "$WORK"/ph/images/*/*.jpg > "$WORK/litert.jsonl" 2>/dev/null \
    || [ $? -eq 1 ]
python3 -m venv "$WORK/np1"
"$WORK/np1/bin/python" -m pip install --quiet "numpy<2" "tflite-runtime==2.14.0" "Pillow>=10"
"$WORK/np1/bin/python" -c "import numpy; assert numpy.__version__ < '2', numpy.__version__"
"$WORK/np1/bin/python" -m edge_runtime predict --backend tflite --json "$WORK"/ph/images/*/*.jpg > "$WORK/tflite.jsonl" 2>/dev/null \
    || [ $? -eq 1 ]
"$MAIN_PY" - "$WORK/litert.jsonl" "$WORK/tflite.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) == 12 and all(r["backend"] == "tflite" for r in b)
# the same probability where both answered, and the out-of-scope gate's score (on every record) near
both = [(x, y) for x, y in zip(a, b) if x.get("probability") is not None and y.get("probability") is not None]
assert len(both) >= len(a) // 2, "phantoms at their own size are answered"
worst = max(abs(x["probability"] - y["probability"]) for x, y in both)
worst_score = max(abs(x["scope"]["score"] - y["scope"]["score"]) for x, y in zip(a, b))
assert worst_score <= 0.05, f"tflite-runtime and LiteRT out-of-scope scores differ by {worst_score}"
assert worst <= 0.02, f"tflite-runtime and LiteRT differ by {worst}"
print(f"tflite-runtime 2.14 under numpy<2 agrees with LiteRT on 12 images (max |dp| {worst:.4f})")
PY
