"""report.md: one table per model, the float Keras model against each artifact, plus file sizes."""

from __future__ import annotations

from typing import Dict, List, Optional


def _f(v: Optional[float], fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _signed(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:+.4f}"


def model_table(manifest: Dict) -> List[str]:
    ref = manifest["reference"]["float_keras"]
    lines = ["| artifact | size | AUC | ΔAUC | accuracy | sensitivity | specificity | agreement | "
             "mean \\|Δp\\| | max \\|Δp\\| | Grad-CAM r | check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
             f"| float Keras (reference) | {ref['bytes'] / 1e6:.2f} MB | {_f(ref['auc'])} | | "
             f"{_f(ref['accuracy'])} | {_f(ref['sensitivity'])} | {_f(ref['specificity'])} | | | | | |"]
    for key, a in manifest["artifacts"].items():
        m = a["metrics"]
        verdict = "pass" if a["check"]["passed"] else "**FAIL**: " + "; ".join(a["check"]["failures"])
        lines.append(
            f"| {key} (`{a['file']}`) | {a['bytes'] / 1e6:.2f} MB | {_f(m['auc'])} | {_signed(m['delta_auc'])} | "
            f"{_f(m['accuracy'])} | {_f(m['sensitivity'])} | {_f(m['specificity'])} | {_f(m['agreement'])} | "
            f"{_f(m['mean_abs_diff'], '.4f')} | {_f(m['max_abs_diff'], '.4f')} | "
            f"{_f(m.get('gradcam_correlation_mean'))} | {verdict} |")
    return lines


def model_section(manifest: Dict, heading: str = "##") -> List[str]:
    d, c = manifest["data"], manifest["check"]
    status = manifest["status"].upper()
    lines = [f"{heading} {manifest['model']['name']} — {status}", ""]
    if manifest["demonstration_only"]:
        lines += ["> **PHANTOM DEMONSTRATION** — trained and checked on synthetic radiographs; these numbers "
                  "show that export preserves the float model's answers, not how it does on patients.", ""]
    lines += [f"Checked by the edge runtime on the **{c['split']} split** ({c['n']} images of {d['name']}; "
              f"split sha256 `{d['split_sha256'][:16]}…`) at the bundle's threshold "
              f"{manifest['decision']['threshold']:.4f} ({manifest['decision']['rule']}, chosen on "
              f"{manifest['decision']['chosen_on']}). Calibration: {d['calibration']['n']} images of the "
              f"{d['calibration']['split']} split, stratified by {d['calibration']['stratified_by']}.", ""]
    lines += model_table(manifest)
    t = c["tolerances"]
    lines += ["", f"Tolerances: |ΔAUC| ≤ {t['max_auc_drop']}, agreement ≥ {t['min_agreement']}, "
                  f"mean |Δp| ≤ {t['max_mean_abs_diff']}, max |Δp| ≤ {t['max_abs_diff']}. "
                  "Grad-CAM r: mean per-image correlation with the GradientTape reference map.", ""]
    return lines


def render(manifests: List[Dict], command: str) -> str:
    lines = ["# Export report", "", f"Command: `{command}`", ""]
    for m in manifests:
        lines += model_section(m)
    return "\n".join(lines) + "\n"
