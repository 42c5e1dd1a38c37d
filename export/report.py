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


def localisation_table(manifest: Dict) -> List[str]:
    """Pointing game and energy in boxes, float reference beside each artifact (empty when the
    check data has no fracture boxes)."""
    ref = manifest["reference"]["float_keras"].get("localisation")
    if not ref or not ref.get("n"):
        return []
    lines = [f"Localisation on the {ref['n']} fractured test images with fracture boxes (Grad-CAM; reported, "
             "not gated): the pointing game (is the map's peak inside a box, with its Wilson 95% CI) and the share "
             f"of the map's energy inside the boxes. Chance: the boxes cover {ref['chance']['box_share_of_image']:.3f} "
             f"of the image; the image centre lies in a box on {ref['chance']['centre_in_box']:.3f} of them.", "",
             "| Grad-CAM of | peak in a box | energy in boxes | blank maps | same verdict as float Keras |",
             "|---|---:|---:|---:|---:|"]

    def row(name: str, s: Dict, same: str) -> str:
        lo, hi = s["pointing_game_ci95"]
        return (f"| {name} | {s['pointing_game']:.3f} [{lo:.3f}, {hi:.3f}] | {s['energy_in_boxes']:.3f} | "
                f"{s['blank_maps']} | {same} |")

    lines.append(row("float Keras (GradientTape, reference)", ref, ""))
    for key, a in manifest["artifacts"].items():
        s = a["metrics"].get("localisation")
        if s:
            lines.append(row(f"{key} (edge runtime)", s, f"{s['vs_float_keras']['same_pointing_verdict']:.3f}"))
    regions = ref.get("per_region", {})
    if len(regions) > 1:
        lines += ["", "Per region (float Keras): " + "; ".join(
            f"{g} {r['pointing_game']:.2f} of {r['n']} (energy {r['energy_in_boxes']:.2f})" for g, r in regions.items())]
    return lines + [""]


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
    lines += localisation_table(manifest)
    return lines


def render(manifests: List[Dict], command: str) -> str:
    lines = ["# Export report", "", f"Command: `{command}`", ""]
    for m in manifests:
        lines += model_section(m)
    return "\n".join(lines) + "\n"
