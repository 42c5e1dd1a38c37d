"""`python -m train.report RUN_DIR...`: markdown tables from runs' metrics.json, for docs/results.md.

Numbers are copied from what the runs measured, never typed by hand; phantom runs are labelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fracdata.runs import run_dirs


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def model_section(run: Dict, m: Dict) -> List[str]:
    auc = m["test"]["roc_auc"]
    at = m["test"]["at_chosen_threshold"]
    half = m["test"]["at_0.5_as_in_paper"]
    cx = run["model"]["complexity"]
    tag = " — PHANTOM, demonstration only" if m["phantom"] else ""
    out = [f"### {m['model']}{tag}", "",
           f"- test ROC AUC **{_f(auc['auc'])}** (95% CI {_f(auc['ci_low'])}–{_f(auc['ci_high'])}, "
           f"{auc['n_boot']} bootstrap resamples); validation AUC {_f(m['validation_auc'])}",
           f"- threshold {_f(m['threshold']['value'])} chosen on validation by rule `{m['threshold']['rule']}`: "
           f"test sensitivity {_f(at['sensitivity'])}, specificity {_f(at['specificity'])}",
           f"- {run['training']['epochs_run']} of {run['training']['epochs_max']} epochs "
           f"({run['train_seconds']:.0f} s on {', '.join(run['devices']['gpus']) or 'CPU'}); "
           f"weights: {run['model']['weights']}; {cx['params']:,} params ({cx['trainable_params']:,} trainable), "
           f"{cx['macs_per_image'] / 1e6:,.1f} M MACs/image", "",
           "The paper's table on the test split (at our threshold | at 0.5, as in the paper):", "",
           "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for cls in ("non-fractured", "fractured"):
        a, b = at["table"]["classes"][cls], half["table"]["classes"][cls]
        out.append(f"| {cls} | {_f(a['precision'])} \\| {_f(b['precision'])} | {_f(a['recall'])} \\| "
                   f"{_f(b['recall'])} | {_f(a['f1'])} \\| {_f(b['f1'])} | {a['support']} |")
    out.append(f"| accuracy | | | {_f(at['table']['accuracy'])} \\| {_f(half['table']['accuracy'])} | {at['table']['n']} |")
    c = at["confusion"]
    out += ["", f"Confusion at our threshold: TP {c['tp']}, FN {c['fn']}, FP {c['fp']}, TN {c['tn']}.", "",
            "| region | n | fractured | AUC | sensitivity | specificity |", "|---|---:|---:|---:|---:|---:|"]
    for region, r in m["test"]["per_region"].items():
        out.append(f"| {region} | {r['n']} | {r['fractured']} | {_f(r['auc'])} | {_f(r['sensitivity'])} | {_f(r['specificity'])} |")
    return out + [""]


def summary_table(rows: List[Dict]) -> List[str]:
    out = ["| model | data | test AUC [95% CI] | accuracy | sensitivity | specificity | params | MACs |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for run, m in rows:
        auc, at = m["test"]["roc_auc"], m["test"]["at_chosen_threshold"]
        data = "phantom (demo)" if m["phantom"] else m["data"]
        out.append(f"| {m['model']} | {data} | {_f(auc['auc'])} [{_f(auc['ci_low'])}, {_f(auc['ci_high'])}] | "
                   f"{_f(at['table']['accuracy'])} | {_f(at['sensitivity'])} | {_f(at['specificity'])} | "
                   f"{run['model']['complexity']['params']:,} | {run['model']['complexity']['macs_per_image'] / 1e6:,.0f} M |")
    return out + [""]


def load_runs(paths: List[Path]) -> List[Tuple[Dict, Dict]]:
    """(run.json, metrics.json) of every run directory under the given paths."""
    return [(json.loads((d / "run.json").read_text()), json.loads((d / "metrics.json").read_text()))
            for p in paths for d in run_dirs(p)]


def seed_table(paths: List[Path]) -> List[str]:
    """Test AUC per model across runs (seeds), with mean and spread: one seed ranks nothing."""
    import statistics

    by_model: Dict[str, List] = {}
    for run, m in load_runs(paths):
        by_model.setdefault(m["model"], []).append((run["training"]["seed"], m["test"]["roc_auc"], m["validation_auc"]))
    seeds = sorted({s for rows in by_model.values() for s, _, _ in rows})
    out = ["| model | " + " | ".join(f"seed {s}: test AUC [95% CI]" for s in seeds) + " | mean test AUC (sd) | mean val AUC |",
           "|---|" + "---|" * len(seeds) + "---:|---:|"]
    for model, rows in by_model.items():
        cells = {s: f"{_f(a['auc'])} [{_f(a['ci_low'])}, {_f(a['ci_high'])}]" for s, a, _ in rows}
        aucs = [a["auc"] for _, a, _ in rows if a["auc"] is not None]
        vals = [v for _, _, v in rows if v is not None]
        sd = f" ({statistics.stdev(aucs):.3f})" if len(aucs) > 1 else ""
        out.append(f"| {model} | " + " | ".join(cells.get(s, "—") for s in seeds) +
                   f" | {_f(statistics.mean(aucs)) if aucs else 'n/a'}{sd} | {_f(statistics.mean(vals)) if vals else 'n/a'} |")
    return out + [""]


def render(paths: List[Path]) -> str:
    rows = load_runs(paths)
    run0 = rows[0][0]
    split = run0["split"]
    lines = [f"Command: `{run0['command']}`", "",
             f"Data: {run0['data']['name']} ({run0['data']['counts']['images']} images, "
             f"{run0['data']['counts']['fractured']} fractured); split `{split['file']}` sha256 `{split['sha256'][:16]}…` "
             f"({split['made']}): " + ", ".join(f"{k} {v['images']} ({v['fractured']} fractured)"
                                                for k, v in split["counts"].items()), "",
             *summary_table(rows)]
    for run, m in rows:
        lines += model_section(run, m)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories or folders of them")
    ap.add_argument("--seeds", action="store_true",
                    help="only the cross-run table: each model's test AUC per seed, mean and spread "
                         "(default: every run's full section)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print("\n".join(seed_table(args.runs)) if args.seeds else render(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
