// The heatmap over the radiograph (edge_runtime/overlay.py's blend and add_legend): the colour
// map and the mixing curve come from the Python module through the build's config, not copied by
// hand; the colour bar at the right is drawn from the same map.

import { resizeFloat } from "./resample.js";
import { contentBox } from "./preprocess.js";

/** The colour of heat h in [0, 1] (overlay.colormap): piecewise linear between the stops, truncated. */
function colourAt(h, { stops, colours }, out, at) {
  let k = 0;
  while (k < stops.length - 2 && h > stops[k + 1]) k++;
  const t = (h - stops[k]) / (stops[k + 1] - stops[k]);
  for (let c = 0; c < 3; c++) out[at + c] = Math.trunc(colours[k][c] + (colours[k + 1][c] - colours[k][c]) * t);
}

function palette(cm) {
  const out = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) colourAt(Math.fround(i / 255), cm, out, i * 3);
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

// The colour bar's panel and label colours: overlay.py's _PANEL and _TEXT, from config.OVERLAY.
const cssColour = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

/** The top label of the colour bar: "1" for an absolute map (a fracture map, cells are
 * probabilities), "peak" for one scaled to its own peak (Grad-CAM), as overlay.add_legend. */
const scaleTop = (absolute) => (absolute ? "1" : "peak");

/**
 * Paint the blend (RGBA, w x h) on `canvas` with the colour scale at its right, as
 * edge_runtime/overlay.py's add_legend lays it out: a bar from the map's top colour (labelled "1"
 * or "peak") down to its bottom one ("0"), on a dark panel. The canvas is sized here; the scale
 * is part of its pixels, so a saved or shared copy of the image still says what the colours mean.
 */
export function paintWithLegend(canvas, rgba, w, h, cm, absolute) {
  const top = scaleTop(absolute);
  const fs = Math.max(9, Math.min(22, Math.round(Math.max(w, h) / 48)));
  const font = `${fs}px sans-serif`;
  const ctx = canvas.getContext("2d");
  ctx.font = font;
  const labelW = Math.ceil(Math.max(...[top, "0"].map((t) => ctx.measureText(t).width)));
  const pad = Math.max(3, Math.floor(fs / 4));
  const barW = Math.max(8, Math.floor(fs / 2) + 4);
  canvas.width = w + barW + labelW + 3 * pad; // resets the context's state
  canvas.height = h;
  ctx.fillStyle = cssColour(cm.panel);
  ctx.fillRect(w, 0, canvas.width - w, h);
  ctx.putImageData(new ImageData(rgba, w, h), 0, 0);
  const y0 = pad + Math.floor(fs / 2), y1 = h - pad - Math.floor(fs / 2);
  if (y1 - y0 >= 8) {
    const n = y1 - y0, x0 = w + pad;
    const bar = new Uint8ClampedArray(barW * n * 4);
    const rgb = new Uint8Array(3);
    for (let y = 0; y < n; y++) {
      colourAt(Math.fround(1 - y / (n - 1)), cm, rgb, 0); // 1 at the top, 0 at the bottom
      for (let x = 0; x < barW; x++) bar.set([rgb[0], rgb[1], rgb[2], 255], (y * barW + x) * 4);
    }
    ctx.putImageData(new ImageData(bar, barW, n), x0, y0);
    ctx.fillStyle = cssColour(cm.text); // a one-pixel frame just outside the bar
    ctx.fillRect(x0 - 1, y0 - 1, barW + 2, 1);
    ctx.fillRect(x0 - 1, y1, barW + 2, 1);
    ctx.fillRect(x0 - 1, y0 - 1, 1, n + 2);
    ctx.fillRect(x0 + barW, y0 - 1, 1, n + 2);
    ctx.font = font;
    const label = (t, y) => { // left edge at x, the ink's middle at y (overlay._text_mid_left)
      const m = ctx.measureText(t);
      ctx.fillText(t, x0 + barW + pad, y + (m.actualBoundingBoxAscent - m.actualBoundingBoxDescent) / 2);
    };
    label(top, y0);
    label("0", y1 - 1);
  }
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `Heatmap over the image; colour scale from 0 at the bottom to ${top} at the top`);
  canvas.dataset.scaleTop = top;
}
