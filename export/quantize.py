"""python -m export.quantize: trained float model(s) -> int8 TFLite + ONNX bundles, checked against
the float model through the edge runtime; a bundle that drifts is not shipped.

With no arguments it exports the committed reference model (models/fracatlas/... where the real
run is committed, else the labelled phantom demonstration model) and checks it on the data the
model was trained on (FracAtlas where present, else the phantom set regenerated from its seed).

Exit status: 0 every bundle accepted; 1 at least one rejected (written to OUT.rejected, which
the runtime refuses to load); 2 bad arguments or data, a model that could not be exported, or an
accepted bundle that could not be signed (with several models, the others are still exported and
reported).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from fracdata.data import DataError

from .errors import ExportError

DEFAULT_OUT = Path("runs/export")


def build_parser() -> argparse.ArgumentParser:
    from train.models import PAPER_MODELS

    from .check import Tolerances
    from .convert import ARTIFACTS, DEFAULT_ARTIFACTS

    t = Tolerances()
    ap = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__.split("\n\n")[0],
                                 epilog="Tolerance defaults are justified in export/check.py and the README.")
    ap.add_argument("sources", nargs="*", type=Path, metavar="SOURCE",
                    help="run directory, folder of run directories, or MODEL.keras (with --split) "
                         "(default: the committed reference model)")
    ap.add_argument("--model", help="pick runs by name from the sources: NAME[,NAME...] or 'all' "
                                    f"(the paper's four: {', '.join(PAPER_MODELS)}) (default: every run found)")
    ap.add_argument("--split", type=Path,
                    help="split file for a bare .keras model (default: none; a run directory has its own)")
    ap.add_argument("--data", help="data folder or 'phantom' (default: what the run was trained on)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"bundle folder for one model; for several, one subfolder each (default: {DEFAULT_OUT}/<model>)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder (default: refuse)")
    ap.add_argument("--artifacts", default=",".join(DEFAULT_ARTIFACTS),
                    help=f"comma list from {', '.join(ARTIFACTS)} (default: %(default)s)")
    ap.add_argument("--calibration-size", type=int, default=200,
                    help="training-split images that calibrate int8, stratified by source x label x region (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default: %(default)s)")
    ap.add_argument("--views", choices=["single", "dihedral"],
                    help="the views the device averages, if not the run's: a deployment choice; the threshold is then "
                         "chosen again on validation by the run's rule (default: the run's)")
    ap.add_argument("--pooling", metavar="max|lse:R|topk:K",
                    help="fracture maps: how the device pools the map into one answer, if not the run's: a deployment "
                         "choice (the map's weights are the same); the threshold is then chosen again on validation "
                         "(default: the run's)")
    ap.add_argument("--scope-size", type=int, default=5000, metavar="N",
                    help="training-split images (at most) the out-of-scope gate's feature means and covariances are "
                         "fitted on (every model: the registry's scope layers); 0 ships no gate (default: %(default)s)")
    ap.add_argument("--scope-photos", type=int, default=150, metavar="N",
                    help="radiographs per group (source, label) and split photographed by the film "
                         "simulator and read back by the device's film path, for the gate's film groups; 0 fits none, "
                         "and the device then records the gate's verdict on film photos without refusing them "
                         "(default: %(default)s)")
    ap.add_argument("--scope-outliers", type=int, default=40, metavar="N",
                    help="generated out-of-scope images per kind (fracdata.ood, its own seed) that the "
                         "gate's outlier direction is fitted on, as files and, with --scope-photos, photographed; 0 "
                         "ships the distance alone (default: %(default)s)")
    ap.add_argument("--photo-workers", type=int, metavar="N",
                    help="processes that photograph them (default: one per CPU)")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="ship the model's own probability instead of one Platt-scaled on validation (default: calibrate)")
    ap.add_argument("--max-auc-drop", type=float, default=t.max_auc_drop, help="largest |ΔAUC| (default: %(default)s)")
    ap.add_argument("--min-agreement", type=float, default=t.min_agreement,
                    help="smallest share of test images with the float model's decision (default: %(default)s)")
    ap.add_argument("--max-mean-abs-diff", type=float, default=t.max_mean_abs_diff,
                    help="largest mean |p_quantized - p_float| (default: %(default)s)")
    ap.add_argument("--max-abs-diff", type=float, default=t.max_abs_diff,
                    help="largest |p_quantized - p_float| on any image (default: %(default)s)")
    ap.add_argument("--min-map-correlation", type=float, default=t.min_map_correlation,
                    help="fracture-map models, quantized artifacts: smallest mean per-image correlation of the map "
                         "with the float model's, on real radiographs where the test split has them "
                         "(default: %(default)s)")
    ap.add_argument("--sign", type=Path, metavar="KEYFILE",
                    help="sign each accepted bundle with this Ed25519 private key (python -m export.signing keygen) "
                         "(default: unsigned)")
    ap.add_argument("--json", action="store_true",
                    help="print the manifests' reports as JSON on stdout (default: a summary per model)")
    ap.add_argument("--verbose", action="store_true",
                    help="let TensorFlow, absl, oneDNN and tf2onnx print their start-up and log lines "
                         "(default: held back)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from fracdata.console import quiet_start

    from .check import Tolerances
    from .convert import parse_artifacts
    from .pipeline import Settings, export_one
    from .report import render
    from .sources import resolve_sources

    try:
        artifacts = parse_artifacts(args.artifacts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m export.quantize " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    settings = Settings(data=args.data, artifacts=artifacts, calibration_size=args.calibration_size, seed=args.seed,
                        views=args.views, pooling=args.pooling, scope_size=args.scope_size,
                        scope_photos=args.scope_photos, scope_outliers=args.scope_outliers,
                        photo_workers=args.photo_workers, calibrate=not args.no_calibrate,
                        tolerances=Tolerances(args.max_auc_drop, args.min_agreement, args.max_mean_abs_diff,
                                              args.max_abs_diff, args.min_map_correlation),
                        overwrite=args.overwrite, command=command.strip())
    try:
        if args.pooling:
            from edge_runtime.fracture_map import MapPooling
            MapPooling.parse(args.pooling)  # a typo is refused before any model is loaded
        models = [m.strip() for m in args.model.split(",")] if args.model else None
        sources = resolve_sources(args.sources, models, args.split)
        several = len(sources) > 1
        base = args.out
        if not several and args.out == DEFAULT_OUT:
            base = DEFAULT_OUT / sources[0].name
        if several:
            clash = [base / s.name for s in sources if (base / s.name).exists() and not args.overwrite]
            if clash:
                raise ExportError(f"{clash[0]}: already exists; pass --overwrite to replace it")
    except (DataError, ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_start(args.verbose, ["tensorflow"])
    manifests, errors = [], []
    for s in sources:  # one model's failure does not stop the others
        if s.phantom:
            print(f"[{s.name}] PHANTOM model: this export is a fidelity check of a demonstration model, "
                  "not a clinical result", file=sys.stderr)
        try:
            manifests.append(export_one(s, base / s.name if several else base, settings))
        except Exception as exc:  # converters raise many types; name the model and go on
            if not several:
                print(f"error: {s.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 2
            errors.append(f"{s.name}: {type(exc).__name__}: {exc}")
            print(f"error: {errors[-1]} (going on with the other models)", file=sys.stderr)
    if args.sign:
        from .signing import SigningError, sign_bundle
        for m in manifests:
            if m["status"] != "accepted":
                continue
            try:
                m["signed_by"] = sign_bundle(Path(m["bundle_path"]), args.sign)
            except (SigningError, ImportError) as exc:
                errors.append(f"{m['model']['name']}: not signed ({exc})")
                print(f"error: {errors[-1]}", file=sys.stderr)
    if several:
        base.mkdir(parents=True, exist_ok=True)
        text = render(manifests, settings.command)
        if errors:
            text += "\n## Not exported\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
        (base / "report.md").write_text(text)
    if args.json:
        print(json.dumps([{k: v for k, v in m.items() if k != "files"} for m in manifests], indent=2))
    else:
        for m in manifests:
            verdict = "ACCEPTED" if m["status"] == "accepted" else "REJECTED (not shipped)"
            print(f"{m['model']['name']}: {verdict} -> {m['bundle_path']}"
                  + (f" (signed, key {m['signed_by']})" if m.get("signed_by") else ""))
            for key, a in m["artifacts"].items():
                # per source where real radiographs and phantoms were mixed: a pooled AUC would mean nothing
                for source, am in (a["metrics"].get("by_source") or {"": a["metrics"]}).items():
                    label = f"{key} on {source}" if source else key
                    what = (f"AUC {round(am['auc'], 4)}" if am["auc"] is not None
                            else f"sensitivity {am['sensitivity']:.3f}" if am.get("sensitivity") is not None else "AUC None")
                    print(f"  {label:34s} {a['bytes'] / 1e6:6.2f} MB  {what}  agreement {am['agreement']:.3f}"
                          f"  mean|Δp| {am['mean_abs_diff']:.4f}")
                if not a["check"]["passed"]:
                    print(f"  {key}: FAIL: " + "; ".join(a["check"]["failures"]))
    if errors:
        return 2
    return 0 if all(m["status"] == "accepted" for m in manifests) else 1


if __name__ == "__main__":
    sys.exit(main())
