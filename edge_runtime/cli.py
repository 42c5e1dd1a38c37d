"""python -m edge_runtime: predict on image files with a bundle, or check a bundle.

Exit status: 0 every file answered; 1 at least one file could not be read (the others were
still answered); 2 the bundle or the command line was unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .backends import BACKENDS, BackendError, backend_version, installed_backends
from .bundle import ENV_VAR, BundleError, default_bundle_dir, load_bundle

DISCLAIMER = ("Screening aid only: a trained clinician makes the diagnosis. A negative result does not "
              "rule out a fracture.")


def _human(rec) -> str:
    if rec.get("error"):
        return f"{rec['file']}: ERROR {rec['error']}"
    flag = "FRACTURE SUSPECTED" if rec["decision"] == "fractured" else "no fracture found"
    t = rec["timings_ms"]
    line = (f"{rec['file']}: p={rec['probability']:.3f} (threshold {rec['threshold']:.3f}) {flag}"
            f"  [{t['total']:.1f} ms: decode {t['decode']:.1f}, inference {t['inference']:.1f}"
            + (f", Grad-CAM {t['gradcam']:.2f}" if "gradcam" in t else "") + "]")
    for w in rec.get("warnings", []):
        line += f"\n    warning: {w}"
    if rec.get("heatmap"):
        line += f"\n    heatmap: {rec['heatmap']}"
    return line


def _predict(args) -> int:
    from .predictor import Predictor

    predictor = Predictor(args.bundle, args.backend, args.artifact, args.threads,
                          gradcam=not args.no_gradcam)
    if predictor.bundle.demonstration_only:
        print("NOTE: this bundle is a DEMONSTRATION model (trained on phantom data), not for patients.",
              file=sys.stderr)
    if not args.json:
        print(f"model {predictor.bundle.model_name} ({predictor.artifact} on {predictor.backend}); "
              f"{DISCLAIMER}", file=sys.stderr)
    failed = 0
    for rec in predictor.predict_files(args.files, args.heatmap):
        failed += bool(rec.get("error"))
        print(json.dumps(rec) if args.json else _human(rec), flush=True)
    return 1 if failed else 0


def _info(args) -> int:
    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    info = {"bundle": str(bundle.path), "verified": True, "model": m["model"]["name"],
            "demonstration_only": bundle.demonstration_only, "threshold": m["decision"],
            "artifacts": {k: {"file": a["file"], "bytes": a.get("bytes")} for k, a in m["artifacts"].items()},
            "gradcam": bool(m.get("gradcam")), "data": m.get("data", {}).get("name"),
            "installed_backends": {b: backend_version(b) for b in installed_backends()}}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_runtime", description=__doc__.splitlines()[0],
                                 epilog=DISCLAIMER)
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", type=Path, default=None,
                        help=f"bundle folder (default: ${ENV_VAR}, else {default_bundle_dir()})")
    common.add_argument("--json", action="store_true", help="machine-readable output (predict: one JSON object per line)")
    p = sub.add_parser("predict", parents=[common], help="fracture probability for image files",
                       description="Predict each FILE (JPEG, PNG 8/16-bit, TIFF, BMP, DICOM). A file that "
                                   "cannot be read gets an error record and the batch goes on.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--heatmap", type=Path, metavar="OUT_DIR", help="write a Grad-CAM overlay PNG per file here")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: the interpreter's)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS,
                   help="interpreter; auto = the first installed of " + ", ".join(BACKENDS))
    p.add_argument("--artifact", help="model file to run, by manifest key (default: the int8 one for the backend)")
    p.add_argument("--no-gradcam", action="store_true", help="skip the heatmap")
    p.set_defaults(func=_predict)
    i = sub.add_parser("info", parents=[common], help="verify a bundle and show what it holds")
    i.set_defaults(func=_info)
    return run_command(ap.parse_args(argv))


def run_command(args) -> int:
    """Run the chosen subcommand; an unusable bundle or interpreter is exit status 2 with its reason."""
    try:
        return args.func(args)
    except (BundleError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
