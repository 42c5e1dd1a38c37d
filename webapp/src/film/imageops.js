// device/imageops.py: float box means and binary morphology on row-major typed arrays.

import { roundHalfEven } from '../lib/npy.js';

/**
 * Mean over a window of 2r + 1 along `axis` (0: down the columns, 1: along the rows), edges
 * extended; float64 running sums as numpy's cumsum, float32 result.
 */
export function boxMean(src, w, h, r, axis) {
  const out = new Float32Array(w * h);
  const n = axis === 0 ? h : w;
  const lines = axis === 0 ? w : h;
  const stride = axis === 0 ? w : 1;
  const lineStep = axis === 0 ? 1 : w;
  const c = new Float64Array(n + 2 * r + 1);
  const win = 2 * r + 1;
  for (let l = 0; l < lines; l++) {
    const base = l * lineStep;
    let acc = 0;
    let k = 0;
    const first = src[base];
    const last = src[base + (n - 1) * stride];
    for (let i = 0; i < r + 1; i++) { acc += first; c[k++] = acc; }
    for (let i = 0; i < n; i++) { acc += src[base + i * stride]; c[k++] = acc; }
    for (let i = 0; i < r; i++) { acc += last; c[k++] = acc; }
    for (let i = 0; i < n; i++) out[base + i * stride] = (c[win + i] - c[i]) / win;
  }
  return out;
}

function grow(mask, w, h, r, any) {
  // Separable (2r + 1)-square max (dilate) or min (erode) of a 0/1 mask; pixels outside the image
  // are ignored, as both of Python's variants (shifted copies, edge-extended box means) do.
  // Running counts, both passes row by row (cache friendly).
  if (r <= 0) return Uint8Array.from(mask);
  const tmp = new Uint8Array(w * h);
  const out = new Uint8Array(w * h);
  // axis 0: per-column counts over a sliding window of rows
  const cnt = new Int32Array(w);
  for (let y = 0; y <= r && y < h; y++) {
    const a = y * w;
    for (let x = 0; x < w; x++) cnt[x] += mask[a + x];
  }
  for (let y = 0; y < h; y++) {
    if (y > 0) {
      const add = y + r;
      const drop = y - r - 1;
      if (add < h) {
        const a = add * w;
        for (let x = 0; x < w; x++) cnt[x] += mask[a + x];
      }
      if (drop >= 0) {
        const a = drop * w;
        for (let x = 0; x < w; x++) cnt[x] -= mask[a + x];
      }
    }
    const o = y * w;
    if (any) {
      for (let x = 0; x < w; x++) tmp[o + x] = cnt[x] !== 0 ? 1 : 0;
    } else {
      const full = (y + r + 1 > h ? h : y + r + 1) - (y - r < 0 ? 0 : y - r);
      for (let x = 0; x < w; x++) tmp[o + x] = cnt[x] === full ? 1 : 0;
    }
  }
  // axis 1: a sliding window along each row
  for (let y = 0; y < h; y++) {
    const o = y * w;
    let c = 0;
    for (let x = 0; x <= r && x < w; x++) c += tmp[o + x];
    for (let x = 0; x < w; x++) {
      if (x > 0) {
        if (x + r < w) c += tmp[o + x + r];
        if (x - r - 1 >= 0) c -= tmp[o + x - r - 1];
      }
      if (any) out[o + x] = c !== 0 ? 1 : 0;
      else {
        const full = (x + r + 1 > w ? w : x + r + 1) - (x - r < 0 ? 0 : x - r);
        out[o + x] = c === full ? 1 : 0;
      }
    }
  }
  return out;
}

/** Binary dilation by a (2r + 1) square. */
export function dilate(mask, w, h, r) {
  return grow(mask, w, h, r, true);
}

/** Binary erosion by a (2r + 1) square (outside the image counts as inside the mask). */
export function erode(mask, w, h, r) {
  return grow(mask, w, h, r, false);
}

/** Three box passes per axis (device/imageops.gaussian_blur); unused by the reader itself. */
export function gaussianBlur(src, w, h, sigma) {
  const r = roundHalfEven((Math.sqrt(4 * sigma * sigma + 1) - 1) / 2);
  let out = Float32Array.from(src);
  if (r < 1) return out;
  for (const axis of [0, 1]) for (let i = 0; i < 3; i++) out = boxMean(out, w, h, r, axis);
  return out;
}
