// THE preprocessing (edge_runtime/preprocess.py), ported: the spec is the bundle manifest's
// `preprocess` block, read as is; tests/test_webapp.py pins this port to the Python function.

import { pyFixed, roundHalfEven } from "./npy.js";
import { resizeFloat } from "./resample.js";
import { percentiles, std } from "./stats.js";

const NORMALIZATIONS = ["none", "window", "clahe"];

export function specFromManifest(p) {
  const spec = {
    size: p.size, resize: p.resize ?? "stretch", resample: p.resample ?? "bilinear",
    pad_value: p.pad_value ?? 0.0, normalize: p.normalize ?? "none",
    window_percentiles: p.window_percentiles ?? [1.0, 99.0], views: p.views ?? "single",
  };
  if (!Number.isInteger(spec.size) || spec.size < 8 || spec.size > 4096) throw new Error(`preprocess size ${spec.size} is not usable`);
  if (!["stretch", "letterbox"].includes(spec.resize)) throw new Error(`unknown resize mode ${spec.resize}`);
  if (!NORMALIZATIONS.includes(spec.normalize)) throw new Error(`unknown normalisation ${spec.normalize}`);
  if (!["single", "dihedral"].includes(spec.views)) throw new Error(`unknown views ${spec.views}`);
  spec.n_views = spec.views === "dihedral" ? 8 : 1;
  return spec;
}

/** (top, left, height, width) of the image inside the model's square input. */
export function contentBox(h, w, spec) {
  if (spec.resize === "stretch") return [0, 0, spec.size, spec.size];
  const scale = spec.size / Math.max(h, w);
  const nw = Math.max(1, roundHalfEven(w * scale)), nh = Math.max(1, roundHalfEven(h * scale));
  return [Math.floor((spec.size - nh) / 2), Math.floor((spec.size - nw) / 2), nh, nw];
}

/** Decoded gray pixels (h x w, [0, 1]) -> (size x size) float32: the geometric half. */
export function resizeInput(pixels, w, h, spec) {
  const n = spec.size;
  let out;
  if (spec.resize === "stretch") {
    out = resizeFloat(pixels, w, h, n, n, spec.resample);
  } else {
    const [top, left, nh, nw] = contentBox(h, w, spec);
    const small = resizeFloat(pixels, w, h, nw, nh, spec.resample);
    out = new Float32Array(n * n).fill(spec.pad_value);
    for (let y = 0; y < nh; y++) out.set(small.subarray(y * nw, (y + 1) * nw), (top + y) * n + left);
  }
  for (let i = 0; i < out.length; i++) out[i] = Math.min(1, Math.max(0, out[i]));
  return out;
}

export function windowed(x, pcts) {
  const [lo, hi] = percentiles(x, pcts);
  const out = new Float32Array(x.length);
  if (hi - lo < 1e-6) return out;
  const span = Math.fround(hi - lo);
  for (let i = 0; i < x.length; i++) out[i] = Math.min(1, Math.max(0, Math.fround(Math.fround(x[i] - lo) / span)));
  return out;
}

/** Contrast-limited adaptive histogram equalisation, as preprocess.clahe. */
export function clahe(x0, w, h, grid = 4, clip = 3.0, bins = 128) {
  const x = windowed(x0, [0.5, 99.5]);
  grid = Math.max(1, Math.min(grid, Math.floor(h / 4), Math.floor(w / 4)));
  const th = Math.max(1, Math.floor(h / grid)), tw = Math.max(1, Math.floor(w / grid));
  const idx = new Int32Array(x.length);
  for (let i = 0; i < x.length; i++) idx[i] = Math.min(bins - 1, Math.max(0, Math.trunc(x[i] * bins)));
  const maps = new Float32Array(grid * grid * bins);
  for (let i = 0; i < grid; i++) {
    for (let j = 0; j < grid; j++) {
      const y1 = i < grid - 1 ? (i + 1) * th : h, x1 = j < grid - 1 ? (j + 1) * tw : w;
      const hist = new Float64Array(bins);
      let size = 0;
      for (let y = i * th; y < y1; y++) for (let xx = j * tw; xx < x1; xx++) { hist[idx[y * w + xx]] += 1; size++; }
      const limit = (clip * size) / bins;
      let excess = 0;
      for (let b = 0; b < bins; b++) excess += Math.max(hist[b] - limit, 0);
      let c = 0;
      const cdf = new Float64Array(bins);
      for (let b = 0; b < bins; b++) { c += Math.min(hist[b], limit) + excess / bins; cdf[b] = c; }
      for (let b = 0; b < bins; b++) maps[(i * grid + j) * bins + b] = cdf[b] / c;
    }
  }
  const out = new Float32Array(x.length);
  const cap = grid > 1 ? grid - 2 : 0;
  for (let y = 0; y < h; y++) {
    const cy = Math.min(grid - 1, Math.max(0, (y + 0.5) / th - 0.5));
    const y0 = Math.min(Math.trunc(cy), cap), yb = Math.min(y0 + 1, grid - 1), fy = cy - y0;
    for (let xx = 0; xx < w; xx++) {
      const cx = Math.min(grid - 1, Math.max(0, (xx + 0.5) / tw - 0.5));
      const x0 = Math.min(Math.trunc(cx), cap), xb = Math.min(x0 + 1, grid - 1), fx = cx - x0;
      const v = idx[y * w + xx];
      const m = (a, b) => maps[(a * grid + b) * bins + v];
      const top = m(y0, x0) * (1 - fx) + m(y0, xb) * fx;
      const bottom = m(yb, x0) * (1 - fx) + m(yb, xb) * fx;
      out[y * w + xx] = top * (1 - fy) + bottom * fy;
    }
  }
  return out;
}

export function normalizeIntensity(x, spec) {
  if (spec.normalize === "window") return windowed(x, spec.window_percentiles);
  if (spec.normalize === "clahe") return clahe(x, spec.size, spec.size);
  return Float32Array.from(x);
}

/** Why a decoded w x h image is too small for the model to read, or null (preprocess.resolution_problem). */
export function resolutionProblem(w, h, spec, limits) {
  const side = spec.resize === "letterbox" ? "long" : "short";
  const need = Math.ceil(limits.MIN_FILL * spec.size);
  const have = side === "long" ? Math.max(w, h) : Math.min(w, h);
  if (have >= need) return null;
  return `image is ${w}x${h} px, too small for this model: its ${side} side is enlarged to the model's ` +
    `${spec.size}-px input and needs at least ${need} px, or the detail a fracture shows is not ` +
    "there to read (a thumbnail or a downscaled copy?); use the full-resolution file";
}

/** Why a resized input holds nothing to read, or null (preprocess.content_problem). */
export function contentProblem(x, w, h, limits) {
  const [lo, hi] = percentiles(x, [1.0, 99.0]);
  if (hi - lo < limits.MIN_CONTRAST) {
    return `blank image: no contrast (gray levels ${pyFixed(lo, 3)}-${pyFixed(hi, 3)}); nothing to read`;
  }
  const b = Math.max(4, Math.min(8, Math.floor(Math.min(h, w) / 8)));
  const bh = Math.floor(h / b), bw = Math.floor(w / b);
  const blocks = new Float64Array(bh * bw);
  for (let by = 0; by < bh; by++) {
    for (let bx = 0; bx < bw; bx++) {
      let s = 0;
      for (let y = 0; y < b; y++) for (let xx = 0; xx < b; xx++) s += x[(by * b + y) * w + bx * b + xx];
      blocks[by * bw + bx] = s / (b * b);
    }
  }
  const ratio = std(blocks) / (std(x) + 1e-9);
  if (ratio < limits.MIN_STRUCTURE) {
    return `no image structure (noise only, structure ratio ${pyFixed(ratio, 2)}): not a radiograph`;
  }
  return null;
}

/** np.rot90(m, k) of a square n x n array (counter-clockwise). */
export function rot90(m, n, k) {
  k = ((k % 4) + 4) % 4;
  let cur = m;
  for (let t = 0; t < k; t++) {
    const out = new Float32Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = cur[j * n + (n - 1 - i)];
    cur = out;
  }
  return cur === m ? Float32Array.from(m) : cur;
}

export function mirror(m, n) {
  const out = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = m[i * n + (n - 1 - j)];
  return out;
}

/** The model inputs: one view, or the eight orientations stacked (n, size, size, 1). */
export function views(x, spec) {
  const n = spec.size;
  if (spec.views === "single") return { data: Float32Array.from(x), count: 1 };
  const out = new Float32Array(8 * n * n);
  const m = mirror(x, n);
  [x, m].forEach((v, f) => { for (let k = 0; k < 4; k++) out.set(rot90(v, n, k), (f * 4 + k) * n * n); });
  return { data: out, count: 8 };
}

/** Average per-view maps (count, side, side) back in the original orientation. */
export function mergeMaps(maps, count, side, spec) {
  const len = side * side;
  if (spec.views === "single") return maps.slice(0, len);
  const acc = new Float64Array(len);
  for (let i = 0; i < count; i++) {
    const flip = Math.floor(i / 4), k = i % 4;
    let u = rot90(maps.subarray(i * len, (i + 1) * len), side, -k);
    if (flip) u = mirror(u, side);
    for (let p = 0; p < len; p++) acc[p] += u[p];
  }
  const out = new Float32Array(len);
  for (let p = 0; p < len; p++) out[p] = acc[p] / count;
  return out;
}
