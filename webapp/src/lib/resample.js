// Resizing as Pillow does it, for THE preprocessing and the overlay: mode "F" images through
// lib/pil.js (Pillow's own filters, pass order and precision), and Image.reduce on float data.

import { resizeF } from "./pil.js";

const FILTER_NAMES = { bilinear: "bilinear", bicubic: "bicubic", box: "box", area: "box" };

/** Resize a (h, w) Float32Array to (outH, outW) with the spec's filter name, as
 * `Image.fromarray(float32).resize((outW, outH), filter)`. */
export function resizeFloat(src, w, h, outW, outH, name = "bilinear") {
  const filter = FILTER_NAMES[name];
  if (!filter) throw new Error(`unknown resample filter ${name}`);
  return resizeF(src, w, h, outW, outH, filter);
}

/** Image.reduce(f) on one float channel: the mean of each f x f block, a partial last block
 * averaged over what it has (what JPEG draft decoding does in the DCT, approximately). */
export function boxReduce(src, w, h, f) {
  if (f === 1) return { data: Float32Array.from(src), width: w, height: h };
  const W = Math.ceil(w / f), H = Math.ceil(h / f);
  const sum = new Float64Array(W * H), count = new Float64Array(W * H);
  for (let y = 0; y < h; y++) {
    const oy = Math.floor(y / f) * W;
    for (let x = 0; x < w; x++) {
      const o = oy + Math.floor(x / f);
      sum[o] += src[y * w + x];
      count[o] += 1;
    }
  }
  const out = new Float32Array(W * H);
  for (let i = 0; i < out.length; i++) out[i] = sum[i] / count[i];
  return { data: out, width: W, height: H };
}

