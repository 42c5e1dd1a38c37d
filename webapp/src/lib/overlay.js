// The heatmap over the radiograph (edge_runtime/overlay.py's blend): the colour map and the
// mixing curve come from the Python module through the build's config, not copied by hand.

import { resizeFloat } from "./resample.js";
import { contentBox } from "./preprocess.js";

function palette(cm) {
  const { stops, colours } = cm;
  const out = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const h = Math.fround(i / 255);
    let k = 0;
    while (k < stops.length - 2 && h > stops[k + 1]) k++;
    const t = (h - stops[k]) / (stops[k + 1] - stops[k]);
    for (let c = 0; c < 3; c++) out[i * 3 + c] = Math.trunc(colours[k][c] + (colours[k + 1][c] - colours[k][c]) * t);
  }
  return out;
}

/** Shrink gray pixels so the long side is at most maxSide (Pillow's BOX, as save_overlay). */
export function displaySize(pixels, w, h, maxSide) {
  if (Math.max(w, h) <= maxSide) return { pixels, width: w, height: h };
  const s = maxSide / Math.max(w, h);
  const nw = Math.max(1, Math.round(w * s)), nh = Math.max(1, Math.round(h * s));
  return { pixels: resizeFloat(pixels, w, h, nw, nh, "box"), width: nw, height: nh };
}

/** The heatmap as it lies over the image: cropped to the unpadded part when letterboxed. */
export function heatOnImage(heat, side, h, w, spec) {
  if (spec.resize === "stretch") return { data: heat, width: side, height: side };
  const n = spec.size;
  const full = resizeFloat(heat, side, side, n, n, "bilinear");
  const [top, left, nh, nw] = contentBox(h, w, spec);
  const out = new Float32Array(nh * nw);
  for (let y = 0; y < nh; y++) out.set(full.subarray((top + y) * n + left, (top + y) * n + left + nw), y * nw);
  return { data: out, width: nw, height: nh };
}

/** RGBA pixels of the blend: gray (w x h, [0, 1]) with heat (hw x hh, [0, 1]) mixed in. */
export function blend(gray, w, h, heat, hw, hh, cm) {
  const up = resizeFloat(heat, hw, hh, w, h, "bilinear");
  const pal = palette(cm);
  const mask = new Uint8Array(256);
  for (let i = 0; i < 256; i++) mask[i] = Math.round(255 * cm.alpha * (i / 255) ** cm.gamma);
  const out = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    const level = Math.trunc(Math.min(1, Math.max(0, up[i])) * 255 + 0.5);
    const g = Math.trunc(Math.min(1, Math.max(0, gray[i])) * 255 + 0.5);
    const m = mask[level];
    for (let c = 0; c < 3; c++) out[4 * i + c] = (pal[level * 3 + c] * m + g * (255 - m) + 127) / 255;
    out[4 * i + 3] = 255;
  }
  return out;
}
