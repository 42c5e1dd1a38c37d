"""python -m edge_runtime: predict on image files with a bundle, or check a bundle.

Exit status: 0 every file answered; 1 some files refused or unreadable (their records say why;
the others were answered); 2 the bundle or the command line was unusable; 3 an internal error
(on a file, recorded with `internal_error`, the batch went on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .backends import BACKEND_CHOICES, BACKENDS, BackendError, backend_version, installed_backends
from .bundle import ENV_VAR, BundleError, default_bundle_dir, load_bundle
from .labels import DISCLAIMER, SHORT, demonstration_notice, refusal_text
from .memlimit import DEFAULT_MB, ENV_VAR as MEMORY_ENV, allowance_mb, megabytes, memory_ceiling
from .result import Result
from .signature import SIGNATURE

EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE, EXIT_INTERNAL = 0, 1, 2, 3



def printable(name: str) -> str:
    """A file name on one line: newlines and control characters escaped, and an undecodable byte
    (which Python holds as a lone surrogate, U+DC80-U+DCFF) shown as the byte it was: \\xe9."""
    return "".join(c if c.isprintable() else f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else repr(c)[1:-1] for c in str(name))


def thread_count(text: str) -> int:
    """argparse type: a thread count an interpreter can take (100000 crashed LiteRT)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{n} threads: choose 1 to 64")
    return n


def exit_status(records: Sequence[Result]) -> int:
    """0 all answered, 1 some refused (unreadable, a photo to retake, or outside what the model
    reads), 3 any internal error (worst wins)."""
    if any(r.internal_error for r in records):
        return EXIT_INTERNAL
    return EXIT_REFUSED if any(r.error or r.retake_asked or r.out_of_scope for r in records) else EXIT_OK


def check_output_dir(path: Optional[Path], what: str) -> Optional[str]:
    """Why an output folder cannot be used, before any work is done (None when it can)."""
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        return f"{what} {printable(str(path))} exists and is not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{what} {printable(str(path))} cannot be created ({exc.strerror or exc})"
    return None


def _human(rec: Result, verbose: bool = False) -> str:
    """One file's answer in words a clinic reads; the timings (an engineer's) only with --verbose."""
    name = printable(rec.file)
    if rec.error:
        return f"{name}: ERROR {rec.error}"
    if rec.out_of_scope:
        return f"{name}: {SHORT[rec.decision]} — {refusal_text(rec.scope)}"
    line = f"{name}: p={rec.probability:.3f} (threshold {rec.threshold:.3f}) {SHORT[rec.decision]}"
    t = rec.timings_ms
    if verbose and t:
        line += (f"  [{t['total']:.1f} ms: decode {t['decode']:.1f}, inference {t['inference']:.1f}"
                 + (f", Grad-CAM {t['gradcam']:.2f}" if "gradcam" in t else "")
                 + (f", map {t['heatmap']:.2f}" if "heatmap" in t else "") + "]")
    for w in rec.warnings:
        line += f"\n    warning: {w}"
    if rec.heatmap:
        line += f"\n    heatmap: {printable(rec.heatmap)}"
    return line


def _predict(args) -> int:
    from .predictor import Predictor

    problem = check_output_dir(args.heatmap, "--heatmap")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    predictor = Predictor(args.bundle, args.backend, args.artifact, args.threads,
                          gradcam=not args.no_gradcam)
    if predictor.bundle.demonstration_only:
        print(demonstration_notice(predictor.bundle.manifest), file=sys.stderr)
    if not args.json:
        print((f"model {predictor.bundle.model_name} ({predictor.artifact} on {predictor.backend}); "
               if args.verbose else "") + DISCLAIMER, file=sys.stderr)
    records: List[Result] = []
    reading: List[Path] = []  # the file being read now

    def files():
        for path in args.files:
            reading[:] = [path]
            yield path

    out_of_memory = False
    with memory_ceiling(allowance_mb(args.memory_mb)):  # a case the budgets miss: a refusal, not the OOM killer
        try:
            for rec in predictor.predict_files(files(), args.heatmap):
                records.append(Result(rec.file, error=rec.error, internal_error=rec.internal_error,
                                      decision=rec.decision))  # not the pixels' timings; the decision for the exit status
                print(json.dumps(rec.to_dict()) if args.json else _human(rec, args.verbose), flush=True)
        except MemoryError:  # outside any one file's own handling: said after the except block has freed it
            if os.environ.get("FRACTURE_EDGE_DEBUG"):
                raise
            out_of_memory = True
    if out_of_memory:
        name = printable(str(reading[0])) if reading else "the batch"
        print(f"internal error (MemoryError) while reading {name}: please report it with the command you ran; "
              "the files after it were not read", file=sys.stderr)
        return EXIT_INTERNAL
    return exit_status(records)


def _info(args) -> int:
    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    info = {"bundle": printable(str(bundle.path)), "verified": True, "model": bundle.model_name,
            "demonstration_only": bundle.demonstration_only, "threshold": bundle.info.decision.to_dict(),
            "artifacts": {k: {"file": a.file, "bytes": a.bytes} for k, a in bundle.info.artifacts.items()},
            "gradcam": bool(bundle.info.gradcam),
            "fracture_map": bundle.info.fracture_map.pooling.to_dict() if bundle.info.fracture_map else None,
            "calibration": ({"method": "platt", "a": bundle.calibration.a, "b": bundle.calibration.b}
                            if bundle.calibration else None),
            "out_of_scope_gate": ({"groups": list(bundle.info.scope.groups), "colour_limit": bundle.info.scope.colour_limit,
                                   "on_film_photos": ("refuses (film groups: " + ", ".join(bundle.info.scope.film_groups) + ")"
                                                      if bundle.info.scope.film_groups else
                                                      "measured, not refused (no film groups)")}
                                  if bundle.info.scope else None),
            "data": (m.get("data") or {}).get("name") if isinstance(m.get("data"), dict) else None,
            "signature": (f"verified (key {bundle.signed_by})" if bundle.signed_by else
                          "present, not checked (no trusted key configured)" if (bundle.path / SIGNATURE).is_file()
                          else "unsigned (no trusted key configured, so not required)"),
            "installed_backends": {b: backend_version(b) for b in installed_backends()}}
    if args.self_test:
        from . import selftest
        st = selftest.run(bundle)
        info["self_test"] = {k: v for k, v in st.items() if k not in ("expected", "got")}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return EXIT_REFUSED if info.get("self_test", {}).get("passed") is False else EXIT_OK


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
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files to read (a batch goes on past bad ones)")
    p.add_argument("--heatmap", type=Path, metavar="OUT_DIR",
                   help="write an overlay per file here: the bundle's fracture map, or Grad-CAM")
    p.add_argument("--threads", type=thread_count, default=None, help="interpreter threads, 1-64 (default: the interpreter's)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="interpreter (default: %(default)s, the first installed of " + ", ".join(BACKENDS) + ")")
    p.add_argument("--artifact", help="model file to run, by manifest key (default: the bundle's default for the backend)")
    p.add_argument("--no-gradcam", action="store_true", help="skip the heatmap")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also the model file and interpreter, and each file's timings (decode, inference, heatmap)")
    p.add_argument("--memory-mb", type=megabytes, default=None,
                   help=f"address space the files may take beyond the loaded model; past it a file is refused "
                        f"(default: ${MEMORY_ENV}, else {DEFAULT_MB}; 0: no ceiling)")
    p.set_defaults(func=_predict)
    i = sub.add_parser("info", parents=[common], help="verify a bundle and show what it holds",
                       description="Verify a bundle as predict would (manifest digest, schema, status, signature where "
                                   "a trusted key is configured, every file's sha256) and show its model, threshold, "
                                   "artifacts, data and the interpreters installed here. Exit 2 if it is refused.")
    i.add_argument("--self-test", action="store_true",
                   help="also answer the bundle's self-test images and compare with export's answers (exit 1 if they differ)")
    i.set_defaults(func=_info)
    return run_command(ap.parse_args(argv))


def run_command(args) -> int:
    """Run the chosen subcommand; an unusable bundle or interpreter is exit status 2 with its reason."""
    try:
        return args.func(args)
    except (BundleError, BackendError) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_UNUSABLE
    except Exception as exc:  # noqa: BLE001 - a traceback helps no technician; the type helps us
        if os.environ.get("FRACTURE_EDGE_DEBUG"):
            raise
        print(f"internal error ({type(exc).__name__}): please report it with the command you ran",
              file=sys.stderr)
        return EXIT_INTERNAL
