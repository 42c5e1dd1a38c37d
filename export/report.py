"""report.md: one table per model, the float Keras model against each artifact, plus file sizes."""

from __future__ import annotations

from typing import Dict, List, Optional


def _f(v: Optional[float], fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _signed(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:+.4f}"


def _heat(manifest: Dict) -> str:
    """What the bundle's heatmap is: its own fracture map, or Grad-CAM."""
    return "fracture map" if manifest.get("fracture_map") else "Grad-CAM"


def model_table(manifest: Dict) -> List[str]:
    """One table, or one per source where real radiographs and phantoms were mixed (a pooled AUC
    over real fractures and phantom negatives would mean nothing)."""
    ref_all = manifest["reference"]["float_keras"]
    groups = ref_all.get("by_source") or {"": ref_all}
    corr = "map r (real)" if manifest.get("fracture_map") else "Grad-CAM r"
    lines: List[str] = []
    for group, ref in groups.items():
        if group:
            lines += [f"**{group}** ({ref['n']} test images):", ""]
        lines += ["| artifact | size | AUC | ΔAUC | accuracy | sensitivity | specificity | agreement | "
                  f"mean \\|Δp\\| | max \\|Δp\\| | {corr} | check |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                  f"| float Keras (reference) | {ref_all['bytes'] / 1e6:.2f} MB | {_f(ref['auc'])} | | "
                  f"{_f(ref['accuracy'])} | {_f(ref['sensitivity'])} | {_f(ref['specificity'])} | | | | | |"]
        for key, a in manifest["artifacts"].items():
            m_all = a["metrics"]
            m = (m_all.get("by_source") or {}).get(group, m_all) if group else m_all
            verdict = "pass" if a["check"]["passed"] else "**FAIL**: " + "; ".join(a["check"]["failures"])
            r = m_all.get("map_correlation_real_mean", m_all.get("map_correlation_mean", m_all.get("gradcam_correlation_mean")))
            lines.append(
                f"| {key} (`{a['file']}`) | {a['bytes'] / 1e6:.2f} MB | {_f(m['auc'])} | {_signed(m['delta_auc'])} | "
                f"{_f(m['accuracy'])} | {_f(m['sensitivity'])} | {_f(m['specificity'])} | {_f(m['agreement'])} | "
                f"{_f(m['mean_abs_diff'], '.4f')} | {_f(m['max_abs_diff'], '.4f')} | {_f(r, '.4f')} | {verdict} |")
        lines.append("")
    return lines[:-1]


def localisation_table(manifest: Dict) -> List[str]:
    """Pointing game, location AUC and energy in boxes, float reference beside each artifact, per
    source where real radiographs and phantoms were mixed (empty when the check data has no boxes)."""
    ref = manifest["reference"]["float_keras"].get("localisation")
    if not ref or not ref.get("n"):
        return []
    heat = _heat(manifest)
    groups = ref.get("per_source") or {"": ref}
    lines = []
    for group, r in groups.items():
        where = f" of **{group}**" if group else ""
        lines += [f"Localisation on the {r['n']} fractured test images{where} with fracture boxes ({heat}; reported, "
                  "not gated): the pointing game (is the map's peak inside a box, with its Wilson 95% CI), the "
                  "location AUC (places inside boxes ranked above places outside, per image, mean with a bootstrap "
                  "CI over images) and the share of the map's energy inside the boxes. Chance: the boxes cover "
                  f"{r['chance']['box_share_of_image']:.3f} of the image; the image centre lies in a box on "
                  f"{r['chance']['centre_in_box']:.3f} of them.", "",
                  f"| {heat} of | peak in a box | location AUC | energy in boxes | blank maps | same verdict as float Keras |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines.append(_loc_row("float Keras (reference)", r, ""))
        cmp_ = manifest["reference"]["float_keras"].get("gradcam_localisation_for_comparison")
        if cmp_:
            c = (cmp_.get("per_source") or {"": cmp_}).get(group)
            if c:
                lines.append(_loc_row("Grad-CAM of the same float model, for comparison", c, ""))
        for key, a in manifest["artifacts"].items():
            s = a["metrics"].get("localisation")
            if s:
                s_ = (s.get("per_source") or {"": s}).get(group)
                if s_:
                    lines.append(_loc_row(f"{key} (edge runtime)", s_,
                                          f"{s['vs_float_keras']['same_pointing_verdict']:.3f}" if not group else ""))
        lines.append("")
    regions = ref.get("per_region", {})
    if len(regions) > 1:
        lines += ["Per region (float Keras): " + "; ".join(
            f"{g} {r['pointing_game']:.2f} of {r['n']} (energy {r['energy_in_boxes']:.2f})" for g, r in regions.items()), ""]
    return lines


def _loc_row(name: str, s: Dict, same: str) -> str:
    lo, hi = s["pointing_game_ci95"]
    la = s.get("location_auc")
    auc = "–" if la is None else f"{la:.3f} [{s['location_auc_ci95'][0]:.3f}, {s['location_auc_ci95'][1]:.3f}]"
    return (f"| {name} | {s['pointing_game']:.3f} [{lo:.3f}, {hi:.3f}] | {auc} | {s['energy_in_boxes']:.3f} | "
            f"{s['blank_maps']} | {same} |")


def model_section(manifest: Dict, heading: str = "##") -> List[str]:
    d, c = manifest["data"], manifest["check"]
    status = manifest["status"].upper()
    lines = [f"{heading} {manifest['model']['name']} — {status}", ""]
    if manifest["demonstration_only"] and d.get("phantom", True):
        lines += ["> **PHANTOM DEMONSTRATION** — trained and checked on synthetic radiographs; these numbers "
                  "show that export preserves the float model's answers, not how it does on patients.", ""]
    elif manifest["demonstration_only"]:
        lines += [f"> **{manifest.get('title', 'DEMONSTRATION')}** — these numbers show that export preserves the "
                  "float model's answers, not how it does on patients.", ""]
    if d.get("credit"):
        lines += [f"Data credit: {d['credit']}", ""]
    dec = manifest["decision"]
    model_t = dec.get("threshold_model", dec["threshold"])
    lines += [f"Checked by the edge runtime on the **{c['split']} split** ({c['n']} images of {d['name']}; "
              f"split sha256 `{d['split_sha256'][:16]}…`) at the model's threshold {model_t:.4f} "
              + (f"(the bundle's, calibrated: {dec['threshold']:.4f}) " if "threshold_model" in dec else "")
              + f"({dec['rule']}, chosen on {dec['chosen_on']}). int8 calibration: {d['calibration']['n']} images of the "
              f"{d['calibration']['split']} split, stratified by {d['calibration']['stratified_by']}.", ""]
    lines += model_table(manifest)
    lines += probability_lines(dec) + scope_lines(manifest)
    t = c["tolerances"]
    lines += ["", f"Tolerances: |ΔAUC| ≤ {t['max_auc_drop']}, agreement ≥ {t['min_agreement']}, "
                  f"mean |Δp| ≤ {t['max_mean_abs_diff']}, max |Δp| ≤ {t['max_abs_diff']}"
                  + (f"; quantized fracture maps: mean per-image r ≥ {t.get('min_map_correlation', 0.95)} on real "
                     "radiographs (map r (real): that correlation with the float model's map; float maps must match "
                     "it to 1e-3)." if manifest.get("fracture_map") else
                     ". Grad-CAM r: mean per-image correlation with the GradientTape reference map."), ""]
    lines += localisation_table(manifest)
    lines += rest_table(manifest)
    return lines


def rest_table(manifest: Dict) -> List[str]:
    """The rest of each real fractured test radiograph, its boxes and their ring left out, as a
    proxy for real radiographs without a fracture (fracture maps; reported, not gated)."""
    ref = manifest["reference"]["float_keras"].get("box_free_rest")
    if not ref:
        return []
    lines = []
    for source in ref:
        lines += [f"The rest of each fractured test radiograph of **{source}**, its boxes and their one-cell ring "
                  "left out, pooled as the device pools a whole map (a proxy for a real radiograph without a "
                  "fracture, which this data does not hold; reported, not gated): how many the model's threshold "
                  "calls fractured, and how often a whole fractured radiograph scores above a rest (AUC, "
                  "bootstrap over radiographs, each with its own rest).", "",
                  "| model | rests called fractured | AUC, fractured above rests |", "|---|---:|---:|"]
        rows = [("float Keras (reference)", ref[source])]
        rows += [(f"{k} (edge runtime)", a["metrics"]["box_free_rest"][source])
                 for k, a in manifest["artifacts"].items() if source in a["metrics"].get("box_free_rest", {})]
        for name, r in rows:
            a = r["auc_fractured_vs_rest"]
            lo, hi = r["called_fractured_ci95"]
            lines.append(f"| {name} | {r['called_fractured']:.3f} [{lo:.3f}, {hi:.3f}] of {r['n']} | "
                         f"{a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] |")
        lines.append("")
    return lines


def probability_lines(dec: Dict) -> List[str]:
    """The calibration: the fit, and the ECE before and after with CIs (reliability.png draws it)."""
    cal = dec.get("calibration")
    if not cal or "ece" not in cal:
        return ["", f"Probabilities: the model's own ({dec.get('calibration_unavailable', 'not calibrated')}).", ""] \
            if dec.get("calibration_unavailable") else []
    e = cal["ece"]

    def ece(x):
        return f"{x['ece']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"

    lines = ["", f"**Calibrated probabilities** (Platt, on the validation split: P = sigmoid({cal['a']:.3f} · logit + "
                 f"{cal['b']:.3f})); expected calibration error, {e['bins']} bins [bootstrap 95% CI], "
                 f"reliability diagram: `{e['plot']}`:", "",
             "| split | source | n | ECE before | ECE after |", "|---|---|---:|---:|---:|"]
    for split in ("validation", "test"):
        lines.append(f"| {split} | all | {e[split]['after']['n']} | {ece(e[split]['before'])} | {ece(e[split]['after'])} |")
        for src, v in e[split].get("by_source", {}).items():
            only = "" if len(v["classes"]) > 1 else " (fractures only)"
            lines.append(f"| {split} | {src}{only} | {v['after']['n']} | {ece(v['before'])} | {ece(v['after'])} |")
    return lines + [""]


def scope_lines(manifest: Dict) -> List[str]:
    """The out-of-scope gate: its groups, and what it refuses of the in-scope test images."""
    sc = manifest.get("scope")
    if not sc:
        return []
    lines = [f"**Out-of-scope gate** ({sc['method']}, {sc['features']['dim']} pooled features of "
             f"{', '.join(sc['features']['layers'])}; groups {', '.join(sc['groups'])}; {sc['rule']}; colour pictures "
             f"refused above {sc['colour_limit']:.0%} coloured pixels). In-scope test images it refuses:", "",
             "| artifact | kept of validation files | kept of validation photos | kept of the training files that "
             "chose it, each scored out of fold (about 0.99 by construction: a check) | refused of the test split, per source "
             "| refused of photographed test radiographs, per source |", "|---|---:|---:|---:|---|---|"]
    per = lambda d: "; ".join(f"{s} {v['refused']} of {v['n']}" for s, v in d.items()) if d else "–"  # noqa: E731
    for key, a in manifest["artifacts"].items():
        m = a.get("metrics", {}).get("scope")
        if m:
            photos = m.get("validation_photos_kept")
            held = m.get("training_out_of_fold_kept")
            lines.append(f"| {key} | {m['validation_kept']:.3f} | {'–' if photos is None else f'{photos:.3f}'} "
                         f"| {'–' if held is None else f'{held:.3f}'} "
                         f"| {per(m['test_refused'])} | {per(m.get('test_photos_refused'))} |")
    out = sc.get("outlier")
    if out:
        fit = out["fitted_on"]
        lines += ["", f"Outlier direction: {out['method']}; fitted on {fit['inside']} in-scope images and photos, and "
                      f"generated out-of-scope images ({fit['generator']}, seed {fit['seed']}): files "
                      + ", ".join(f"{k} {n}" for k, n in fit["outside_files"].items())
                      + ("; photos " + ", ".join(f"{k} {n}" for k, n in fit["outside_photos"].items())
                         if fit.get("outside_photos") else "") + f". {out['rule']}."]
    film = sc.get("film_photos")
    if film:
        lines += ["", f"Film groups ({', '.join(sc['film_groups'])}): up to {film['per_group']} radiographs per group "
                      f"and split photographed by {film['simulator']}; photos read back: "
                      + "; ".join(f"{split} {film[split]['read']} of {film[split]['photos']}"
                                  for split in ("train", "val", "test") if split in film) + "."]
    return lines + ["", "What it refuses of out-of-scope images is measured by `python -m train.scope_evaluate` "
                        "(docs/results.md).", ""]


def render(manifests: List[Dict], command: str) -> str:
    lines = ["# Export report", "", f"Command: `{command}`", ""]
    for m in manifests:
        lines += model_section(m)
    return "\n".join(lines) + "\n"
