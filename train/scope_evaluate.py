"""What a bundle's out-of-scope gate refuses: `python -m train.scope_evaluate RUN_DIR --bundle B`.

Runs the bundle through the edge runtime (its own decoding, preprocessing, interpreter and gate)
on generated out-of-scope images (fracdata.ood: colour photos, text pages, chest, skull, CT,
ultrasound, screenshots; a seed other than any the gate was tuned on) and on the run's own
validation and test radiographs, and reports per kind the fraction refused, and per source the
fraction of in-scope radiographs refused. Beside the shipped gate it scores two alternatives on
the same images, each thresholded by the same rule (keep 99% of validation): the energy score
(-logsumexp of the map's cell logits; Liu et al. 2020) and the negative largest cell logit
(Hendrycks and Gimpel's max-logit), so the choice of method stays a measurement; for a
classifier bundle, the two-class form of both (its logit l as logits -l/2 and l/2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge_runtime.errors import ImageReadError
from edge_runtime.inputs import read_image
from edge_runtime.preprocess import checked_input
from fracdata.data import record_source
from fracdata.progress import progress as progress_of

DEFAULT_OOD_SEED = 101  # the tuning sets used seeds below 100: this one was never looked at while choosing
DEFAULT_PHOTO_SEED = 7  # photos' scenes; PHOTO_STREAM keeps them apart from export's (streams 1-3)
PHOTO_STREAM = 4


def _scores(pred, decoded) -> Optional[Dict]:
    """One decoded image through the runtime: the gate's verdict and the two alternative scores."""
    x, problem, _ = checked_input(decoded.pixels, pred.spec)
    if problem:
        return {"content_refused": True}
    if pred.map is not None:
        _, logits, pooled = pred.map_answer(x)  # the runtime's own inference: views merged, pooled features averaged
        z = logits.reshape(-1).astype(np.float64)
    else:  # a classifier: its logit l as the two classes' logits -l/2 and l/2 (the same softmax), so
        # both scores measure confidence either way, as a two-class head's would
        p, _, pooled = pred.assess(x)
        p = min(max(p, 1e-12), 1 - 1e-12)
        z = np.array([-0.5, 0.5]) * np.log(p / (1 - p))
    rec_scope = pred.gate.check(pooled, decoded.colour)
    lse = float(z.max() + np.log(np.exp(z - z.max()).sum()))
    distance, direction = pred.gate.ratios(pooled)
    return {"refused": not rec_scope["in_scope"], "code": rec_scope.get("code"),
            "score": pred.gate.score(pooled), "energy": -lse, "max_logit": -float(z.max()),
            "beyond_groups": not distance <= 1.0, "past_direction": direction is not None and not direction <= 1.0}


def evaluate(run_dir: Path, bundle: Path, ood_dir: Path, artifact: Optional[str], progress: bool = True) -> Dict:
    from edge_runtime.predictor import Predictor
    from fracdata.runs import dataset_for_run, read_run
    from fracdata.split import load_split, records_by_split

    pred = Predictor(bundle, artifact=artifact, gradcam=False)
    if pred.gate is None:
        raise SystemExit(f"error: {bundle} has no out-of-scope gate (exported before it, or with --scope-size 0)")
    found = read_run(run_dir)
    ds = dataset_for_run(found.record, None, quiet=True)
    parts = records_by_split(ds, load_split(found.split_path, ds))
    rows: Dict[str, List[Dict]] = {}
    for split in ("val", "test"):
        for r in progress_of(parts[split], f"{split} radiographs", enabled=progress):
            try:
                s = _scores(pred, read_image(r.path, pred.spec))
            except ImageReadError:
                continue
            rows.setdefault(f"{split}/{record_source(r)}", []).append(s)
    meta = json.loads((ood_dir / "ood_set.json").read_text())
    for kind, files in meta["files"].items():
        for f in progress_of(files, f"out-of-scope: {kind}", enabled=progress):
            try:
                s = _scores(pred, read_image(ood_dir / f, pred.spec))
            except ImageReadError as exc:
                s = {"unreadable": str(exc)}
            rows.setdefault(f"ood/{kind}", []).append({**s, "file": f})
    return summarise(rows, pred, bundle, ood_dir, meta)


def evaluate_photos(run_dir: Path, bundle: Path, ood_dir: Path, artifact: Optional[str], seed: int,
                    progress: bool = True, workers: Optional[int] = None) -> Dict:
    """Each test radiograph and each generated out-of-scope image photographed once (a scene drawn
    over every clinic condition; seeds apart from export's) and read by the device's film path:
    per set, what the film path refuses (quality gate), what the gate refuses of the flattened
    films it measures (as predict_pixels(film=True): colour plays no part, a flattened film is
    gray), and how many are answered."""
    from device.photo_round_trip import PhotoJob, model_inputs
    from edge_runtime.predictor import Predictor
    from fracdata.runs import dataset_for_run, read_run
    from fracdata.split import load_split, records_by_split

    pred = Predictor(bundle, artifact=artifact, gradcam=False)
    if pred.gate is None:
        raise SystemExit(f"error: {bundle} has no out-of-scope gate (exported before it, or with --scope-size 0)")
    found = read_run(run_dir)
    ds = dataset_for_run(found.record, None, quiet=True)
    sets: Dict[str, List[str]] = {}
    for r in records_by_split(ds, load_split(found.split_path, ds))["test"]:
        sets.setdefault(f"test/{record_source(r)}", []).append(str(r.path))
    meta = json.loads((ood_dir / "ood_set.json").read_text())
    for kind, files in meta["files"].items():
        sets[f"ood/{kind}"] = [str(ood_dir / f) for f in files]
    out = {}
    for k, (name, paths) in enumerate(sorted(sets.items())):
        jobs = [PhotoJob(seed=(seed, PHOTO_STREAM, k, i), path=p) for i, p in enumerate(paths)]
        film_refused: Dict[str, int] = {}
        scores, halves = [], []
        for x, why in progress_of(model_inputs(jobs, pred.spec, workers), f"photos: {name}", total=len(jobs),
                                  enabled=progress):
            if x is None:
                reason = "error" if why.startswith("error:") else why.split(": ", 1)[-1]
                film_refused[reason] = film_refused.get(reason, 0) + 1
                continue
            pooled = pred.assess(x)[2]
            scores.append(pred.gate.check(pooled, None, film=True)["score"])
            halves.append(pred.gate.ratios(pooled, film=True))
        sc = np.array(scores, np.float64)
        beyond = ~(sc <= 1.0)  # refused where the bundle has film groups; only warned about where it has none
        out[name] = {"photos": len(jobs), "refused_by_film_path": int(sum(film_refused.values())),
                     "film_path_reasons": dict(sorted(film_refused.items(), key=lambda kv: -kv[1])),
                     "measured": int(len(sc)), "refused_by_gate": int(np.sum(beyond)),
                     "gate_rate_of_measured": float(np.mean(beyond)) if len(sc) else None,
                     "answered": int(len(sc) - np.sum(beyond)) if pred.gate.covers_film else int(len(sc)),
                     "score_median": float(np.median(sc)) if len(sc) else None,
                     "beyond_groups": sum(1 for d, _ in halves if not d <= 1.0),
                     "past_direction": sum(1 for _, o in halves if o is not None and not o <= 1.0)}
    return {"bundle": str(bundle), "artifact": pred.artifact, "backend": pred.backend,
            "film_groups": list(pred.gate.film_groups), "enforced_on_films": pred.gate.covers_film, "photo_seed": seed,
            "ood": {"path": str(ood_dir), "seed": meta["seed"], "n_per_kind": meta["n_per_kind"]}, "sets": out}


def render_photos(result: Dict) -> str:
    lines = [f"Photographed films through the film path and the out-of-scope gate of {result['bundle']} "
             f"({result['artifact']}); film groups: {', '.join(result['film_groups']) or 'none (not enforced)'}; "
             f"photo seed {result['photo_seed']}, out-of-scope images seed {result['ood']['seed']}.", "",
             "| set | photos | refused by the film path (quality) | measured by the gate | "
             + ("refused by the gate" if result["enforced_on_films"] else "beyond the gate (warned, not refused)")
             + " (of measured) | beyond every group / past the direction | answered | median score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in result["sets"].items():
        rate = "—" if e["gate_rate_of_measured"] is None else f"{e['gate_rate_of_measured']:.3f}"
        med = "—" if e["score_median"] is None else f"{e['score_median']:.2f}"
        lines.append(f"| {name} | {e['photos']} | {e['refused_by_film_path']} | {e['measured']} | "
                     f"{e['refused_by_gate']} ({rate}) | {e.get('beyond_groups', '—')} / {e.get('past_direction', '—')} "
                     f"| {e['answered']} | {med} |")
    lines += ["", "In-scope rows (test/...) are radiographs the gate should keep; out-of-scope rows (ood/...) are "
                  "generated images photographed as films (colour kinds as gray prints), which should be refused, by "
                  "either gate."]
    return "\n".join(lines) + "\n"


def _rate(flags: List[bool]) -> Optional[float]:
    return float(np.mean(flags)) if flags else None


def _verdict(s: Dict) -> str:
    if s.get("unreadable"):
        return "unreadable"
    if s.get("content_refused"):
        return "refused before the model"
    return f"refused ({s['code']})" if s["refused"] else "answered"


def summarise(rows: Dict[str, List[Dict]], pred, bundle: Path, ood_dir: Path, meta: Dict) -> Dict:
    """Per set: the shipped gate's refusals, and each alternative's at its own 99%-of-validation threshold."""
    val = [s for k, v in rows.items() if k.startswith("val/") for s in v if "energy" in s]
    limits = {m: float(np.quantile([s[m] for s in val], 0.99, method="higher")) for m in ("energy", "max_logit")}
    sets = {}
    for name, items in sorted(rows.items()):
        scored = [s for s in items if "energy" in s]
        # content_refused: blank/flat/noise, refused before the model by every method alike
        before = [s for s in items if s.get("content_refused") or s.get("unreadable")]
        entry = {"n": len(items), "refused_before_the_model": len(before),
                 "gate": _rate([s["refused"] for s in scored] + [True] * len(before)),
                 "gate_colour": sum(1 for s in scored if s["code"] == "colour"),
                 "gate_unfamiliar": sum(1 for s in scored if s["code"] == "unfamiliar"),
                 # of those measured (colour aside), how many each half of the features' rule would refuse alone
                 "beyond_groups": sum(1 for s in scored if s["code"] != "colour" and s["beyond_groups"]),
                 "past_direction": sum(1 for s in scored if s["code"] != "colour" and s["past_direction"])}
        for m in ("energy", "max_logit"):
            entry[m] = _rate([s[m] > limits[m] for s in scored] + [True] * len(before))
        if name.startswith("ood/"):  # which image got which verdict: a real set holds a handful, each worth naming
            entry["files"] = {s["file"]: _verdict(s) for s in items}
        sets[name] = entry
    return {"bundle": str(bundle), "artifact": pred.artifact, "backend": pred.backend,
            "ood": {"path": str(ood_dir), "seed": meta["seed"], "n_per_kind": meta["n_per_kind"],
                    "generator_version": meta["generator_version"]},
            "alternative_thresholds": limits, "sets": sets}


def render(result: Dict) -> str:
    ood = result["ood"]
    what = (f"generated out-of-scope images: seed {ood['seed']}, {ood['n_per_kind']} per kind" if ood["seed"] >= 0
            else f"real out-of-scope images from {ood['path']}")
    lines = [f"Out-of-scope gate of {result['bundle']} ({result['artifact']}, {result['backend']}); {what}.", "",
             "| set | n | refused: the gate (colour / features) | features: beyond every group / past the direction "
             "| energy score | max-logit |", "|---|---:|---:|---:|---:|---:|"]
    for name, e in result["sets"].items():
        pct = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {name} | {e['n']} | {pct(e['gate'])} ({e['gate_colour']} / {e['gate_unfamiliar']}"
                     + (f", {e['refused_before_the_model']} before the model" if e["refused_before_the_model"] else "")
                     + f") | {e.get('beyond_groups', '—')} / {e.get('past_direction', '—')} "
                       f"| {pct(e['energy'])} | {pct(e['max_logit'])} |")
    answered = [f for e in result["sets"].values() for f, v in e.get("files", {}).items() if v == "answered"]
    if answered:
        lines += ["", "Out-of-scope images answered: " + ", ".join(answered) + "."]
    lines += ["", "In-scope rows (val/..., test/...) are radiographs the gate should keep: their rate is what it wrongly "
                  "refuses. The alternatives are thresholded to keep 99% of validation (the gate also counts its "
                  "training radiographs scored out of fold)."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train.scope_evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the training run the bundle was exported from")
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle whose gate is measured")
    ap.add_argument("--artifact", help="the artifact to run (default: the device's choice)")
    ap.add_argument("--ood", type=Path, help="a folder made by python -m fracdata.ood (default: generate one under "
                                             "runs/ood-seedN)")
    ap.add_argument("--ood-seed", type=int, default=DEFAULT_OOD_SEED, help="seed of the generated set (default: %(default)s)")
    ap.add_argument("--n", type=int, default=30, help="generated images per kind (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("runs/scope"), help="where scope.json and scope.md go (default: %(default)s)")
    ap.add_argument("--photos", action="store_true",
                    help="instead: photograph each test radiograph and out-of-scope image once with the film simulator "
                         "and read them by the device's film path, where the gate measures flattened films "
                         "(writes photos.json and photos.md)")
    ap.add_argument("--photo-seed", type=int, default=DEFAULT_PHOTO_SEED, help="seed of the photos' scenes (default: %(default)s)")
    ap.add_argument("--workers", type=int, help="processes that photograph (default: one per CPU)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    from fracdata.ood import write_ood_set

    args = build_parser().parse_args(argv)
    ood = args.ood or write_ood_set(Path(f"runs/ood-seed{args.ood_seed}"), n_per_kind=args.n, seed=args.ood_seed,
                                    progress=True)
    if args.photos:
        result = evaluate_photos(args.run_dir, args.bundle, ood, args.artifact, args.photo_seed, not args.json,
                                 args.workers)
        text, name = render_photos(result), "photos"
    else:
        result = evaluate(args.run_dir, args.bundle, ood, args.artifact, progress=not args.json)
        text, name = render(result), "scope"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(json.dumps(result, indent=2) if args.json else text + f"\nwritten: {args.out / name}.md, {name}.json",
          file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
