// device/film.py: from a photo of film on a lightbox to the film's transmission.

import * as geo from './geometry.js';
import { dilate } from './imageops.js';
import { FilmNotFound, gray, locate, workingCopy } from './finder.js';
import { convertLMatrix, perspective8, reduce8, resizeF } from '../lib/pil.js';
import {
  f32, interp, linspace, lstsq, medianF32, medianF64, percentileF64, roundHalfEven,
} from '../lib/npy.js';

export { FilmNotFound };

/** Values of a float32 image at float (x, y) points, and whether each point is inside it. */
function bilinear(img, w, h, x, y) {
  const ok = x >= 0 && x <= w - 1 && y >= 0 && y <= h - 1;
  x = x < 0 ? 0 : x > w - 1.001 ? w - 1.001 : x;
  y = y < 0 ? 0 : y > h - 1.001 ? h - 1.001 : y;
  const x0 = Math.trunc(x);
  const y0 = Math.trunc(y);
  const fx = x - x0;
  const fy = y - y0;
  const i = y0 * w + x0;
  const v = img[i] * (1 - fx) * (1 - fy) + img[i + 1] * fx * (1 - fy)
    + img[i + w] * (1 - fx) * fy + img[i + w + 1] * fx * fy;
  return [v, ok];
}

/** Quadratic surface through g on mask (image coordinates), two rounds dropping the darkest fifth. */
function quadraticFit(g, w, h, mask) {
  let xs = [];
  let ys = [];
  for (let i = 0; i < mask.length; i++) if (mask[i]) { xs.push(i % w); ys.push((i - (i % w)) / w); }
  if (xs.length < 50) return null;
  if (xs.length > 8000) {
    const step = Math.floor(xs.length / 8000);
    xs = xs.filter((_, k) => k % step === 0);
    ys = ys.filter((_, k) => k % step === 0);
  }
  let vals = xs.map((x, k) => g[ys[k] * w + x]);
  let coef = null;
  const div = [1, w, h, w * w, h * w, h * h];
  for (let round = 0; round < 2; round++) {
    const m = xs.length;
    const A = new Float64Array(m * 6);
    for (let r = 0; r < m; r++) {
      const x = xs[r];
      const y = ys[r];
      const o = r * 6;
      A[o] = 1 / div[0];
      A[o + 1] = x / div[1];
      A[o + 2] = y / div[2];
      A[o + 3] = (x * x) / div[3];
      A[o + 4] = (x * y) / div[4];
      A[o + 5] = (y * y) / div[5];
    }
    coef = lstsq(A, Float64Array.from(vals), m, 6);
    const resid = new Float64Array(m);
    for (let r = 0; r < m; r++) {
      let s = 0;
      for (let c = 0; c < 6; c++) s += A[r * 6 + c] * coef[c];
      resid[r] = vals[r] - s;
    }
    const p20 = percentileF64(resid, 20);
    const keep = [];
    for (let r = 0; r < m; r++) if (resid[r] > p20) keep.push(r);
    xs = keep.map((r) => xs[r]);
    ys = keep.map((r) => ys[r]);
    vals = keep.map((r) => vals[r]);
  }
  return { coef, w, h };
}

function evalQuadratic(fit, x, y) {
  const { coef: c, w, h } = fit;
  return c[0] + (c[1] * x) / w + (c[2] * y) / h + (c[3] * x * x) / w ** 2 + (c[4] * x * y) / (w * h)
    + (c[5] * y * y) / h ** 2;
}

/** The surface on [0,1]^2 that matches four boundary curves (n x n, row-major). */
function coons(top, bottom, left, right) {
  const n = top.length;
  const t = linspace(0, 1, n);
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const v = t[i];
    for (let j = 0; j < n; j++) {
      const u = t[j];
      const ruledV = (1 - v) * top[j] + v * bottom[j];
      const ruledU = (1 - u) * left[i] + u * right[i];
      const corners = (1 - u) * (1 - v) * top[0] + u * (1 - v) * top[n - 1] + (1 - u) * v * bottom[0]
        + u * v * bottom[n - 1];
      out[i * n + j] = ruledV + ruledU - corners;
    }
  }
  return out;
}

/** Lightbox brightness just outside one side relative to the fitted surface, along the side. */
function sideRatio(g, w, h, fit, quad, side, n, level, C) {
  const [a, d, nrm] = geo.sides(quad)[side];
  const size = Math.max(...geo.sideLengths(quad));
  const t = linspace(0, 1, n);
  const offs = C.PROFILE_OFFSETS;
  const stack = offs.map(() => new Float64Array(n));
  const good = new Uint8Array(n);
  offs.forEach((off, o) => {
    for (let i = 0; i < n; i++) {
      const px = a[0] + d[0] * t[i] + nrm[0] * off * size;
      const py = a[1] + d[1] * t[i] + nrm[1] * off * size;
      const [v, inside] = bilinear(g, w, h, px, py);
      const f = evalQuadratic(fit, px, py);
      const r = v / Math.max(f, 1e-3);
      const ok = inside && v > 0.75 * level && r > 0.7 && r < 1.4;
      stack[o][i] = ok ? r : NaN;
      if (ok) good[i] = 1;
    }
  });
  let nGood = 0;
  for (let i = 0; i < n; i++) nGood += good[i];
  if (nGood / n < 0.3) return new Float64Array(n).fill(1);
  const xp = [];
  const fp = [];
  for (let i = 0; i < n; i++) {
    if (!good[i]) continue;
    const col = offs.map((_, o) => stack[o][i]).filter((v) => !Number.isNaN(v));
    xp.push(i);
    fp.push(medianF64(col));
  }
  return interp(Float64Array.from({ length: n }, (_, i) => i), xp, fp);
}

/**
 * How wide the film's own border is in the photo: 10-90% width of the step from lightbox to film,
 * median over profiles across the sides, as a share of the film's short side; null if unclear.
 */
export function edgeWidth(g, w, h, quad, level) {
  const short = Math.min(...geo.sideLengths(quad));
  const reach = Math.max(4.0, 0.04 * short);
  const steps = linspace(-reach, reach, Math.trunc(4 * reach) + 1);
  const S = steps.length;
  const widths = [];
  const t = linspace(0.15, 0.85, 24);
  const row = new Float64Array(S);
  const u = new Float64Array(S);
  for (const [a, d, n] of geo.sides(quad)) {
    for (let p = 0; p < 24; p++) {
      const bx = a[0] + d[0] * t[p];
      const by = a[1] + d[1] * t[p];
      let good = true;
      for (let s = 0; s < S; s++) {
        const [v, ok] = bilinear(g, w, h, bx + steps[s] * n[0], by + steps[s] * n[1]);
        row[s] = v;
        good = good && ok;
      }
      const k = Math.max(2, Math.floor(S / 6));
      const lo = medianF64(row.subarray(0, k));
      const hi = medianF64(row.subarray(S - k));
      if (!good || hi - lo < 0.2 * level) continue;
      let headMax = -Infinity;
      let tailMin = Infinity;
      for (let s = 0; s < S; s++) {
        u[s] = (row[s] - lo) / (hi - lo);
        if (s < k) headMax = Math.max(headMax, u[s]);
        if (s >= S - k) tailMin = Math.min(tailMin, u[s]);
      }
      if (headMax > 0.5 || tailMin < 0.5) continue;
      let i10 = 0;
      for (let s = 0; s < S; s++) if (u[s] >= 0.1) { i10 = s; break; }
      let r90 = 0;
      for (let s = 0; s < S; s++) if (u[S - 1 - s] <= 0.9) { r90 = s; break; }
      const x10 = steps[i10];
      const x90 = steps[S - 1 - r90];
      widths.push(Math.max(0.0, x90 - x10));
    }
  }
  if (widths.length < 6) return null;
  return medianF64(widths) / Math.max(short, 1.0);
}

/** The lightbox's brightness behind every pixel of the rectified film (oh x ow, float32). */
function lightField(g, w, h, lit, quad, outToSmall, ow, oh, level, C) {
  const GRID = C.GRID;
  const film = geo.fillPolygon(w, h, quad);
  const grown = dilate(film, w, h, Math.max(3, Math.trunc(0.12 * Math.max(...geo.sideLengths(quad)))));
  const ring = new Uint8Array(w * h);
  for (let i = 0; i < ring.length; i++) ring[i] = grown[i] & lit[i] & (film[i] ^ 1);
  const fit = quadraticFit(g, w, h, ring);
  if (fit === null) return new Float32Array(ow * oh).fill(Math.max(level, 1e-3));
  const gu = linspace(0, ow, GRID);
  const gv = linspace(0, oh, GRID);
  const base = new Float64Array(GRID * GRID);
  for (let i = 0; i < GRID; i++) {
    for (let j = 0; j < GRID; j++) {
      const [px, py] = geo.applyHomography(outToSmall, gu[j], gv[i]);
      base[i * GRID + j] = evalQuadratic(fit, px, py);
    }
  }
  const s = [0, 1, 2, 3].map((k) => sideRatio(g, w, h, fit, quad, k, GRID, level, C));
  const patch = coons(s[0], s[2].slice().reverse(), s[3].slice().reverse(), s[1]);
  const light = new Float32Array(GRID * GRID);
  for (let i = 0; i < light.length; i++) {
    const v = base[i] * patch[i];
    light[i] = v < 0.02 ? 0.02 : v;
  }
  return resizeF(light, GRID, GRID, ow, oh, 'bilinear');
}

/**
 * flatten_film: locate the film in `photo` ({width, height, data: RGBA}, as decoded), undo cast,
 * light and perspective. Throws FilmNotFound. `small` is the finder's working copy when the caller
 * already made it ({small, scale}).
 */
export function flattenFilm(photo, C, originalSize = null, small = null) {
  const W = photo.width;
  const H = photo.height;
  const toOriginal = originalSize ? originalSize[0] / W : 1.0;
  const wc = small || workingCopy(photo, C.WORK_SIDE);
  const { w: sw, h: sh, data: sdata } = wc.small;
  const s = wc.scale;
  const found = locate(wc.small, s, C);
  const graySmall = gray(sdata, sw, sh);
  const grown = dilate(found.mask, sw, sh, Math.max(3, Math.trunc(0.06 * Math.max(sh, sw, 3))));
  let near = new Uint8Array(sw * sh);
  let nearCount = 0;
  for (let i = 0; i < near.length; i++) {
    near[i] = grown[i] & found.lit[i] & (found.mask[i] ^ 1);
    nearCount += near[i];
  }
  if (nearCount < 20) near = found.lit;
  let nNear = 0;
  for (let i = 0; i < near.length; i++) nNear += near[i];
  const chans = [0, 1, 2].map(() => new Float32Array(nNear));
  const grayNear = new Float32Array(nNear);
  for (let i = 0, k = 0; i < near.length; i++) {
    if (!near[i]) continue;
    chans[0][k] = sdata[3 * i];
    chans[1][k] = sdata[3 * i + 1];
    chans[2][k] = sdata[3 * i + 2];
    grayNear[k++] = graySmall[i];
  }
  const ref = chans.map((c) => medianF32(c));
  const refMean = f32(f32(f32(ref[0] + ref[1]) + ref[2]) / 3);
  let gains = ref.map((r) => f32(refMean / Math.max(r, f32(1e-3))));
  const level = medianF32(grayNear);

  const quad = found.quad.map(([x, y]) => [x / s, y / s]); // in the decoded photo's pixels
  const [fw, fh] = geo.sideLengths(quad);
  const k = Math.min(1.0, C.OUT_LONG_SIDE / Math.max(fw, fh));
  const ow = Math.max(16, roundHalfEven(fw * k));
  const oh = Math.max(16, roundHalfEven(fh * k));
  const norm = f32(f32(f32(f32(0.299) * gains[0]) + f32(f32(0.587) * gains[1])) + f32(f32(0.114) * gains[2]));
  gains = gains.map((g) => f32(g / norm)); // the lightbox keeps its gray level
  const wts = [0.299 * gains[0], 0.587 * gains[1], 0.114 * gains[2]];
  let grayImg = convertLMatrix(photo.data, W, H, 4, [wts[0], wts[1], wts[2], 0.0]);
  let gw = W;
  let gh = H;
  let factor = Math.trunc(Math.max(fw, fh) / Math.max(ow, oh) / 1.5);
  let quadG = quad;
  if (factor >= 2) {
    const red = reduce8(grayImg, W, H, factor);
    grayImg = red.data;
    gw = red.width;
    gh = red.height;
    quadG = quad.map(([x, y]) => [x / factor, y / factor]);
  } else {
    factor = 1;
  }
  const dst = [[0, 0], [ow, 0], [ow, oh], [0, oh]];
  const outToPhoto = geo.homographyFromPoints(dst, quadG);
  const warped8 = perspective8(grayImg, gw, gh, ow, oh, geo.pilPerspective(outToPhoto));
  const balancedSmall = gray(sdata, sw, sh, gains);
  const outToSmall = geo.homographyFromPoints(dst, found.quad);
  const light = lightField(balancedSmall, sw, sh, found.lit, found.quad, outToSmall, ow, oh, level, C);
  const grayF = new Float32Array(gw * gh);
  for (let i = 0; i < grayF.length; i++) grayF[i] = f32(grayImg[i] / 255);
  const width = edgeWidth(grayF, gw, gh, quadG, level);

  const cy = roundHalfEven(oh * C.INSET);
  const cx = roundHalfEven(ow * C.INSET);
  const tw = ow - 2 * cx;
  const th = oh - 2 * cy;
  const pixels = new Float32Array(Math.max(0, tw) * Math.max(0, th));
  let peak = 0;
  let glare = 0;
  const glareThr = f32(1.03);
  const peakThr = f32(0.985);
  for (let y = 0; y < th; y++) {
    for (let x = 0; x < tw; x++) {
      const i = (y + cy) * ow + (x + cx);
      const raw = f32(warped8[i] / 255);
      const tr = f32(raw / light[i]);
      if (raw >= peakThr) peak++;
      if (tr > glareThr) glare++;
      pixels[y * tw + x] = tr < 0 ? 0 : tr > 1 ? 1 : tr;
    }
  }
  const n = tw * th;

  const notes = [];
  if (Math.max(...gains.map((g) => Math.abs(f32(g - 1)))) > f32(0.05)) notes.push('colour cast corrected');
  if (found.other_films) notes.push(`${found.other_films + 1} films in the photo: read the one nearest the centre`);
  const corners = quad.map(([x, y]) => [x * toOriginal, y * toOriginal]);
  const sides = geo.sideLengths(corners);
  const short = Math.min(...sides);
  let maskSum = 0;
  for (let i = 0; i < found.mask.length; i++) maskSum += found.mask[i];
  return {
    pixels, width: tw, height: th, corners, film_short_side_px: short, film_long_side_px: Math.max(...sides),
    film_share: maskSum / found.mask.length, lightbox_level: level, cut_off: found.cut_off,
    off_lightbox: found.unlit_sides.length > 0,
    raw_peak_share: peak / n, glare_share: glare / n, edge_width: width, notes, found,
  };
}
