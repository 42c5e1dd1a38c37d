#!/usr/bin/env bash
# A clinic installs a built package, not a checkout: build the wheel, install it with the clinic's
# extras into a fresh venv, and predict from outside the source tree with no --bundle and no
# $FRACTURE_EDGE_BUNDLE. The default bundle must come from the wheel and answer as the checkout does.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_PY=${1:-.venv-ci/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The wheel ships the web app's vendored WASM runtime (so a Pi serves the app without Node).
[ -f webapp/vendor/ort-wasm-simd-threaded.wasm ] || (cd webapp && npm ci --no-audit --no-fund --loglevel=error && npm run --silent vendor)
"$MAIN_PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" . 2>/dev/null
WHEEL=$(ls "$WORK"/dist/fracture_edge-*.whl)
python3 -m venv "$WORK/clinic"
"$WORK/clinic/bin/python" -m pip install --quiet "${WHEEL}[edge,device,dicom]"
"$MAIN_PY" -c "from fracdata.phantom import generate_phantom_dataset as g; g('$WORK/ph', n_images=6, seed=4, progress=False)"
# exit status 1 (an input refused, e.g. outside what the model reads) is compared below; 2 or 3 is a failure
"$MAIN_PY" -m edge_runtime predict --json "$WORK"/ph/images/*/*.jpg > "$WORK/checkout.jsonl" 2>"$WORK/checkout.err" \
    || [ $? -eq 1 ] || { cat "$WORK/checkout.err" >&2; exit 1; }
(cd "$WORK" && env -u FRACTURE_EDGE_BUNDLE "$WORK/clinic/bin/python" -m edge_runtime predict --json ph/images/*/*.jpg \
    > "$WORK/wheel.jsonl" 2>"$WORK/wheel.err") || [ $? -eq 1 ] || { cat "$WORK/wheel.err" >&2; exit 1; }
"$MAIN_PY" - "$WORK/checkout.jsonl" "$WORK/wheel.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) == 6, (len(a), len(b))
# an answer is its probability, or for an input the out-of-scope gate refused its score
ans = lambda r: r["probability"] if r.get("probability") is not None else r["scope"]["score"]  # noqa: E731
assert [x["decision"] for x in a] == [y["decision"] for y in b], ([x["decision"] for x in a], [y["decision"] for y in b])
assert sum(x.get("probability") is not None for x in a) >= len(a) // 2, "phantoms at their own size are answered"
worst = max(abs(ans(x) - ans(y)) for x, y in zip(a, b))
assert worst <= 1e-6, f"the installed wheel answers differently from the checkout by {worst}"
print(f"wheel install: the packaged default bundle answers 6 images exactly as the checkout does (max |dp| {worst:.1e})")
PY
# The installed package builds the phone app by itself, identical to the checkout's build.
(cd "$WORK" && env -u FRACTURE_EDGE_BUNDLE "$WORK/clinic/bin/python" -m device webapp --out "$WORK/site" --json \
    > "$WORK/site.json") || exit 1
"$MAIN_PY" -m device webapp --out "$WORK/site-checkout" --json > "$WORK/site-checkout.json"
"$MAIN_PY" - "$WORK/site.json" "$WORK/site-checkout.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["version"] == b["version"] and a["files"] == b["files"], (a, b)
print(f"wheel install: the phone app builds from the package alone ({a['files']} files, version {a['version']})")
PY
# The samples ship in the wheel: `device demo` answers them from the package alone, with overlays.
(cd "$WORK" && env -u FRACTURE_EDGE_BUNDLE "$WORK/clinic/bin/python" -m device demo --out "$WORK/demo" --json \
    > "$WORK/demo.jsonl") || exit 1
"$MAIN_PY" - "$WORK/demo.jsonl" <<'PY'
import json, os, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert len(recs) == 4 and all(os.path.isfile(r["heatmap"]) for r in recs), recs
print(f"wheel install: device demo answered the {len(recs)} shipped samples with overlays")
PY
