"""The issue's targets as ratios from one run, the markdown table a person reads, and where both are saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional


def _row(rows: List[Dict], backend_in, artifact: Optional[str], threads: int = 1) -> Optional[Dict]:
    for r in rows:
        if r["backend"] in backend_in and (artifact is None or r["artifact"] == artifact) \
                and r["threads"] == threads and "error" not in r:
            return r
    return None


def _target(name: str, measured: Optional[float], limit: float, higher_is_better: bool, unit: str = "",
            why_not: str = "not measured in this run") -> Dict:
    if measured is None:
        return {"target": name, "measured": None, "limit": limit, "met": None, "note": why_not}
    met = measured >= limit if higher_is_better else measured <= limit
    miss = None if met else (limit / measured if higher_is_better else measured / limit)
    return {"target": name, "measured": measured, "limit": limit, "met": met, "unit": unit,
            "note": "met" if met else f"missed by a factor of {miss:.2f}"}


def targets(res: Dict) -> List[Dict]:
    rows = res["backends"]
    keras = _row(rows, ("keras",), None)
    # The issue-6 targets were set for int8; a bundle whose int8 copies the gate refused ships float
    # TFLite, which is then what the device runs and what is measured (named in the row).
    key = "tflite_int8" if _row(rows, ("litert", "tflite"), "tflite_int8") else res.get("default_tflite", "tflite_float")
    lite = _row(rows, ("litert", "tflite"), key)
    out = [
        _target(f"{key}, 1 thread, >= 10x faster per image than TensorFlow float Keras",
                keras["p50_ms"] / lite["p50_ms"] if keras and lite else None, 10.0, True, "x"),
        _target(f"{key} peak memory <= 1/12 of TensorFlow's",
                lite["peak_rss_mb"] / keras["peak_rss_mb"] if keras and lite else None, 1 / 12, False),
        _target(f"{key} cold start <= 1/20 of TensorFlow's",
                lite["cold_start_s"] / keras["cold_start_s"] if keras and lite else None, 1 / 20, False),
    ]
    e2e = res["end_to_end"].get("jpeg")
    out.append(_target("full-size JPEG: everything after decoding <= 30% on top of the decode",
                       e2e["overhead_over_decode"] if e2e else None, 0.30, False))
    out.append(_target("heatmap (Grad-CAM, or a fracture map's own) <= half of one inference",
                       e2e["gradcam_ms"] / e2e["inference_ms"] if e2e else None, 0.5, False))
    out.append(_target("full-size JPEG with --heatmap <= 2x the same without",
                       e2e.get("heatmap_ratio") if e2e else None, 2.0, False, "x",
                       why_not=f"not measured: {e2e['heatmap_not_timed']}" if e2e and e2e.get("heatmap_not_timed")
                       else "not measured in this run"))
    film = res.get("film_path", {}).get("12MP", {})
    out.append(_target("film path, 12 MP JPEG: <= 0.3 s", film.get("total_ms") / 1000 if film.get("total_ms") else None,
                       0.3, False, "s"))
    out.append(_target("film path, 12 MP JPEG: <= 300 MB peak RSS", film.get("peak_rss_mb"), 300, False, "MB"))
    acc = res["accuracy"]
    per = [g["artifacts"] for g in acc["by_source"].values()] if acc.get("by_source") else [acc["artifacts"]]
    # Only int8 copies count: a float copy's ΔAUC of 0 must not read as the int8 target met.
    deltas = [a["delta_auc"] for arts in per for k, a in arts.items() if "int8" in k and a.get("delta_auc") is not None]
    out.append(_target("int8 within 0.01 AUC of float on the test split",
                       max(abs(d) for d in deltas) if deltas else None, 0.01, False,
                       why_not="not measured: the bundle has no int8 artifact" if not any(
                           "int8" in k for arts in per for k in arts) else "not measured in this run"))
    return out


def _f(v, fmt=".2f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(res: Dict) -> str:
    d = res["device"]
    heat = res.get("heatmap", "Grad-CAM")
    lines = [f"# Benchmark — {res['model']}" + (" (DEMONSTRATION model)" if res["demonstration_only"] else ""), ""]
    if res.get("title"):
        lines += [f"Bundle: {res['title']}.", ""]
    lines += [f"{res['date']}; `{res['command']}`" + ("; **quick mode**" if res["quick"] else ""), "",
             f"Device: {d['cpu']} ({d['machine']}, {d['cores']} cores), Python {d['python']}, numpy {d['numpy']}, "
             f"interpreters {', '.join(f'{k} {v}' for k, v in d['interpreters'].items() if v)}, "
             f"TensorFlow {d['tensorflow'] or 'absent'}. Nominal peak: {_f(d['peak']['gops_fp32'], '.0f')} GOPS "
             f"({d['peak']['basis']}; {d['peak']['note']}).", "",
             f"## Per backend (one {res.get('input_size', 128)}x{res.get('input_size', 128)} image per call; each row its own process)", "",
             "| backend | artifact | threads | p50 ms | p90 ms | p99 ms | images/s | cold start s | peak RSS MB | file MB | GOPS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["backends"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['artifact']} | {r['threads']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r['artifact']} | {r['threads']} | {_f(r['p50_ms'], '.3f')} | "
                     f"{_f(r['p90_ms'], '.3f')} | {_f(r['p99_ms'], '.3f')} | {_f(r['throughput_images_per_s'], '.0f')} | "
                     f"{_f(r['cold_start_s'])} | {_f(r['peak_rss_mb'], '.0f')} | {_f(r['file_mb'])} | "
                     f"{_f(r.get('achieved_gops'), '.1f')} |")
    lines += ["", f"## End to end from a file (medians; {heat} included, overlay drawn only in the last column)", "",
              f"| file | size | decode full ms | decode fast ms | preprocess ms | inference ms | {heat} ms | "
              "answer total ms | total over fast decode | with --heatmap ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, e in res["end_to_end"].items():
        lines.append(f"| {kind} | {e['bytes'] / 1e6:.1f} MB | {e['decode_full_ms']:.1f} | {e['decode_fast_ms']:.1f} | "
                     f"{e['preprocess_ms']:.2f} | {e['inference_ms']:.2f} | {e['gradcam_ms']:.3f} | "
                     f"{e['predict_file_total_ms']:.1f} | +{e['overhead_over_decode']:.0%} | "
                     f"{_f(e.get('with_heatmap_total_ms'), '.1f')} |")
    if res.get("film_path"):
        lines += ["", "## Film path: a phone photo of film on a lightbox to the answer (medians, 1 thread, kept "
                      "image written, no overlay)", "",
                  "| photo | pixels | file MB | decode ms | checks+find+flatten+gate ms | keep ms | preprocess ms | "
                  f"inference ms | {heat} ms | total ms | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, e in res["film_path"].items():
            if "error" in e:
                lines.append(f"| {name} | error: {e['error']} | | | | | | | | | |")
                continue
            lines.append(f"| {name} | {e['pixels'][0]}x{e['pixels'][1]} | {e['bytes'] / 1e6:.1f} | {_f(e.get('decode_ms'), '.0f')} | "
                         f"{_f(e.get('film_ms'), '.0f')} | {_f(e.get('keep_ms'), '.0f')} | {_f(e.get('preprocess_ms'), '.1f')} | "
                         f"{_f(e.get('inference_ms'), '.1f')} | {_f(e.get('gradcam_ms'), '.2f')} | {_f(e.get('total_ms'), '.0f')} | "
                         f"{_f(e.get('peak_rss_mb'), '.0f')} |")
    acc = res["accuracy"]
    groups = acc.get("by_source") or {"": {"float": {"auc": acc["float_auc"]}, "artifacts": acc["artifacts"]}}
    for src, g in groups.items():
        on = f", {src} ({g['float'].get('n')} images)" if src else ""
        lines += ["", f"## Accuracy ({acc['source']}{on}; float AUC {_f(g['float'].get('auc'), '.3f')}"
                      + (f", float sensitivity {_f(g['float'].get('sensitivity'), '.3f')}" if src else "") + ")", "",
                  "| artifact | AUC | ΔAUC | sensitivity | agreement | mean \\|Δp\\| |", "|---|---:|---:|---:|---:|---:|"]
        for k, a in g["artifacts"].items():
            lines.append(f"| {k} | {_f(a.get('auc'), '.3f')} | {_f(a.get('delta_auc'), '+.4f')} | "
                         f"{_f(a.get('sensitivity'), '.3f')} | {_f(a.get('agreement'), '.3f')} | {_f(a.get('mean_abs_diff'), '.4f')} |")
    lines += ["", "## Targets (ratios from this run)", "", "| target | measured | limit | verdict |", "|---|---:|---:|---|"]
    for t in res["targets"]:
        verdict = t["note"] if t["met"] is None else ("met" if t["met"] else f"**MISSED** ({t['note']})")
        lines.append(f"| {t['target']} | {_f(t['measured'], '.3f')} | {t['limit']:.3g} | {verdict} |")
    return "\n".join(lines) + "\n"


def save(result: Dict, text: str, out: Optional[Path], stem: str) -> None:
    """OUT/<stem>.json (what a machine reads) and OUT/<stem>.md (what a person reads), when OUT is given."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
