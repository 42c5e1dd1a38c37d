// device/film_finder.py: where is the film in a photo? Its four corners, from a small copy.
//
// Images: {w, h, data} row-major; the working copy's data is float32 RGB interleaved (h * w * 3).

import * as geo from './geometry.js';
import { boxMean, dilate, erode } from './imageops.js';
import { resize8 } from '../lib/pil.js';
import {
  f32, linspace, lstsq, medianF32, medianF64, percentileF32, percentileSortedF32, pyRound, roundHalfEven,
} from '../lib/npy.js';

export class FilmNotFound extends Error {}

const W0 = f32(0.299);
const W1 = f32(0.587);
const W2 = f32(0.114);

/** rgb @ [0.299, 0.587, 0.114] in float32 (numpy's order: r*w0 + g*w1, then + b*w2). */
export function gray(rgb, w, h, gains = null) {
  const out = new Float32Array(w * h);
  const [g0, g1, g2] = gains || [1, 1, 1];
  for (let i = 0, p = 0; i < w * h; i++, p += 3) {
    let r = rgb[p];
    let g = rgb[p + 1];
    let b = rgb[p + 2];
    if (gains) { r = f32(r * g0); g = f32(g * g1); b = f32(b * g2); }
    out[i] = f32(f32(f32(r * W0) + f32(g * W1)) + f32(b * W2));
  }
  return out;
}

const morph = (mask, w, h, size, op) => (op === 'dilate' ? dilate(mask, w, h, size >> 1) : erode(mask, w, h, size >> 1));

function openClose(mask, w, h, size = 3) {
  // erode, dilate, dilate, erode as Python; the two dilations by (2r + 1)-squares are one by a
  // (4r + 1)-square, exactly (the image is a box, so clipping the windows commutes).
  const r = size >> 1;
  const m = dilate(erode(mask, w, h, r), w, h, 2 * r);
  return erode(m, w, h, r);
}

const and = (a, b) => { const o = new Uint8Array(a.length); for (let i = 0; i < a.length; i++) o[i] = a[i] & b[i]; return o; };
const andNot = (a, b) => { const o = new Uint8Array(a.length); for (let i = 0; i < a.length; i++) o[i] = a[i] & (b[i] ^ 1); return o; };
const or = (a, b) => { const o = new Uint8Array(a.length); for (let i = 0; i < a.length; i++) o[i] = a[i] | b[i]; return o; };
const not = (a) => { const o = new Uint8Array(a.length); for (let i = 0; i < a.length; i++) o[i] = a[i] ^ 1; return o; };
const sum = (a) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i]; return s; };
const inSet = (labels, set) => { const o = new Uint8Array(labels.length); for (let i = 0; i < labels.length; i++) o[i] = set.has(labels[i]) ? 1 : 0; return o; };
const eq = (labels, k) => { const o = new Uint8Array(labels.length); for (let i = 0; i < labels.length; i++) o[i] = labels[i] === k ? 1 : 0; return o; };

/** g[mask] as a Float32Array. */
function pick(g, mask) {
  let n = 0;
  for (let i = 0; i < mask.length; i++) n += mask[i];
  const out = new Float32Array(n);
  for (let i = 0, k = 0; i < mask.length; i++) if (mask[i]) out[k++] = g[i];
  return out;
}

function centroid(mask, w) {
  // argwhere(mask).mean(axis=0): integer sums, exact in float64
  let sx = 0;
  let sy = 0;
  let n = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) { sx += i % w; sy += (i - (i % w)) / w; n++; }
  }
  return [sx / n, sy / n];
}

function fillSmallHoles(mask, w, h, maxShare) {
  const { labels, count } = geo.labelComponents(not(mask), w, h);
  if (count === 0) return mask;
  const border = new Set();
  for (let x = 0; x < w; x++) { border.add(labels[x]); border.add(labels[(h - 1) * w + x]); }
  for (let y = 0; y < h; y++) { border.add(labels[y * w]); border.add(labels[y * w + w - 1]); }
  const small = new Set();
  for (const [k, area] of geo.componentAreas(labels, count)) {
    if (!border.has(k) && area <= maxShare * mask.length) small.add(k);
  }
  return small.size ? or(mask, inSet(labels, small)) : mask;
}

/** Otsu's threshold over a 256-bin histogram of [0, 1] (float64, as numpy). */
export function otsu(values) {
  const hist = new Float64Array(256);
  let total = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!(v >= 0 && v <= 1)) continue;
    let b = Math.floor(v * 256);
    if (b > 255) b = 255;
    hist[b]++;
    total++;
  }
  const denom = Math.max(total, 1);
  const w0 = new Float64Array(256);
  const mu = new Float64Array(256);
  let a = 0;
  let m = 0;
  for (let i = 0; i < 256; i++) {
    const p = hist[i] / denom;
    a += p;
    m += p * i;
    w0[i] = a;
    mu[i] = m;
  }
  let best = -Infinity;
  let bi = 0;
  for (let i = 0; i < 256; i++) {
    const t = mu[255] * w0[i] - mu[i];
    const between = (t * t) / Math.max(w0[i] * (1 - w0[i]), 1e-12);
    if (between > best) { best = between; bi = i; }
  }
  return (bi + 1) / 256;
}

function quadFromMask(mask, w, h) {
  const pts = geo.rowExtremes(mask, w, h);
  if (pts.length < 8) return null;
  const hull = geo.convexHull(pts);
  if (hull.length < 4) return null;
  return geo.simplifyToQuad(hull);
}

function refine(quad, mask, w, h) {
  const q = geo.orderQuad(quad);
  const { xs, ys } = geo.boundaryPoints(mask, w, h);
  const size = Math.max(...geo.sideLengths(q));
  const lines = [];
  for (const [a, d, n] of geo.sides(q)) {
    const length = Math.sqrt(d[0] * d[0] + d[1] * d[1]) || 1.0;
    const l2 = length ** 2;
    const nx = [];
    const ny = [];
    for (let i = 0; i < xs.length; i++) {
      const px = xs[i] - a[0];
      const py = ys[i] - a[1];
      const t = (px * d[0] + py * d[1]) / l2;
      const dist = Math.abs(px * n[0] + py * n[1]);
      if (t > 0.08 && t < 0.92 && dist < 0.06 * size) { nx.push(xs[i]); ny.push(ys[i]); }
    }
    if (nx.length < 10) {
      lines.push([n, n[0] * a[0] + n[1] * a[1]]);
      continue;
    }
    lines.push(geo.robustLine(nx, ny, n));
  }
  let corners;
  try {
    corners = [0, 1, 2, 3].map((i) => geo.intersect(lines[(i + 3) % 4], lines[i]));
  } catch (e) {
    if (e instanceof geo.LinAlgError) return q;
    throw e;
  }
  let maxDiff = 0;
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 2; j++) {
      if (!Number.isFinite(corners[i][j])) return q;
      maxDiff = Math.max(maxDiff, Math.abs(corners[i][j] - q[i][j]));
    }
  }
  return maxDiff > 0.2 * size ? q : corners;
}

/** Per side: share of points just outside it that are lit (NaN: off the photo); median of g there. */
function outsideLit(quad, lit, w, h, g = null) {
  const size = Math.max(...geo.sideLengths(quad));
  const shares = [];
  const values = [];
  const t = linspace(0.1, 0.9, 24);
  for (const [a, d, n] of geo.sides(quad)) {
    let hits = 0;
    let total = 0;
    for (const off of [0.015, 0.03]) {
      const ox = n[0] * off * size;
      const oy = n[1] * off * size;
      for (let i = 0; i < 24; i++) {
        const px = a[0] + d[0] * t[i] + ox;
        const py = a[1] + d[1] * t[i] + oy;
        if (!(px >= 0 && px < w && py >= 0 && py < h)) continue;
        total++;
        const k = Math.trunc(py) * w + Math.trunc(px);
        if (lit[k]) {
          hits++;
          if (g) values.push(g[k]);
        }
      }
    }
    shares.push(total ? hits / total : NaN);
  }
  return [shares, values.length ? medianF64(values) : NaN];
}

function ringLevel(g, gSorted, region, lit, w, h, width) {
  const ring = and(andNot(morph(region, w, h, 2 * width + 1, 'dilate'), region), lit);
  const vals = pick(g, ring);
  return vals.length > 20 ? medianF32(vals) : percentileSortedF32(gSorted, 99);
}

function bareGap(g, w, h, a, b, strip, level) {
  const ca = centroid(a, w);
  const cb = centroid(b, w);
  const d = [cb[0] - ca[0], cb[1] - ca[1]];
  const nd = Math.sqrt(d[0] * d[0] + d[1] * d[1]);
  const n = [-d[1] / (nd || 1.0), d[0] / (nd || 1.0)];
  const spread = 0.25 * Math.sqrt(Math.min(sum(a), sum(b)));
  const t = linspace(0, 1, Math.max(32, Math.trunc(nd)));
  const offsets = linspace(-spread, spread, 7);
  const thr = f32(0.93 * level);
  let crossings = 0;
  for (const off of offsets) {
    let run = 0;
    let best = 0;
    for (let i = 0; i < t.length; i++) {
      const px = ca[0] + d[0] * t[i] + n[0] * off;
      const py = ca[1] + d[1] * t[i] + n[1] * off;
      if (!(px >= 0 && px < w && py >= 0 && py < h)) continue;
      const k = Math.trunc(py) * w + Math.trunc(px);
      const bright = g[k] >= thr && strip[k];
      run = bright ? run + 1 : 0;
      best = Math.max(best, run);
    }
    crossings += best >= 2 ? 1 : 0;
  }
  return crossings > 3;
}

function nested(a, b, w, h) {
  for (const [outer, inner] of [[a, b], [b, a]]) {
    const [cx, cy] = centroid(inner, w);
    const hull = geo.convexHull(geo.rowExtremes(outer, w, h));
    if (hull.length >= 3 && geo.fillPolygon(w, h, hull)[Math.trunc(cy) * w + Math.trunc(cx)]) return true;
  }
  return false;
}

function mergeSplitFilm(g, gSorted, lit, cands, w, h) {
  cands = cands.map((m) => [m, sum(m)]).sort((x, y) => y[1] - x[1]).map((x) => x[0]);
  let merged = true;
  while (merged && cands.length > 1) {
    merged = false;
    outer: for (let i = 0; i < cands.length; i++) {
      for (let j = i + 1; j < cands.length; j++) {
        const a = cands[i];
        const b = cands[j];
        if (nested(a, b, w, h)) continue;
        const union = or(a, b);
        const hull = geo.convexHull(geo.rowExtremes(union, w, h));
        if (hull.length < 4) continue;
        const whole = geo.fillPolygon(w, h, hull);
        if (sum(union) < 0.6 * sum(whole)) continue;
        const quad = geo.simplifyToQuad(hull);
        if (geo.polygonArea(quad) < 0.95 * geo.polygonArea(hull)) continue;
        const strip = andNot(whole, union);
        if (sum(strip) < 10) continue;
        const level = ringLevel(g, gSorted, whole, lit, w, h, Math.max(2, roundHalfEven(0.02 * Math.max(h, w))));
        if (bareGap(g, w, h, a, b, strip, level)) continue;
        cands = cands.filter((_, k) => k !== i && k !== j).concat([whole]);
        merged = true;
        break outer;
      }
    }
  }
  return cands;
}

function candidates(g, gSorted, litRaw, w, h, C) {
  const lit = openClose(litRaw, w, h);
  const { labels, count } = geo.labelComponents(lit, w, h);
  const big = geo.componentAreas(labels, count).filter(([, area]) => area >= 0.004 * h * w).map(([k]) => k);
  if (!big.length) return [lit, []];
  const litBig = inSet(labels, new Set(big));
  const cands = [];
  const groups = [litBig].concat(big.length > 1 ? big.map((k) => eq(labels, k)) : []);
  for (const region of groups) {
    const panel = geo.fillPolygon(w, h, geo.convexHull(geo.rowExtremes(region, w, h)));
    const unlit = fillSmallHoles(openClose(andNot(panel, litBig), w, h), w, h, C.MAX_HOLE_SHARE);
    const cl = geo.labelComponents(unlit, w, h);
    const found = geo.componentAreas(cl.labels, cl.count)
      .filter(([, area]) => area >= 0.25 * C.MIN_FILM_SHARE * h * w)
      .map(([j]) => eq(cl.labels, j));
    cands.push(...mergeSplitFilm(g, gSorted, litBig, found, w, h));
  }
  return [litBig, cands.filter((m) => sum(m) >= C.MIN_FILM_SHARE * h * w)];
}

/** Brightness outside the outline minus inside, median per side, mean over sides, over the top. */
export function edgeContrast(quad, g, w, h, top99_5) {
  const size = Math.max(...geo.sideLengths(quad));
  const top = Math.max(top99_5, 1e-3);
  const t = linspace(0.1, 0.9, 24);
  const out = [];
  for (const [a, d, n] of geo.sides(quad)) {
    const diffs = [];
    for (let i = 0; i < 24; i++) {
      const bx = a[0] + d[0] * t[i];
      const by = a[1] + d[1] * t[i];
      const ox = bx + n[0] * 0.015 * size;
      const oy = by + n[1] * 0.015 * size;
      if (!(ox >= 0 && ox < w && oy >= 0 && oy < h)) continue;
      const ix = Math.min(w - 1, Math.max(0, Math.trunc(bx - n[0] * 0.015 * size)));
      const iy = Math.min(h - 1, Math.max(0, Math.trunc(by - n[1] * 0.015 * size)));
      diffs.push(f32(g[Math.trunc(oy) * w + Math.trunc(ox)] - g[iy * w + ix]));
    }
    if (diffs.length < 4) continue;
    out.push(medianF32(diffs) / top);
  }
  if (!out.length) return 0.0;
  let s = 0;
  for (const v of out) s += v;
  return s / out.length;
}

function distinctFilms(valid) {
  const areas = valid.map((f) => sum(f.mask));
  const order = valid.map((_, k) => k).sort((a, b) => valid[b].score - valid[a].score || a - b);
  const kept = [];
  for (const k of order) {
    let ok = true;
    for (const j of kept) {
      let inter = 0;
      const mk = valid[k].mask;
      const mj = valid[j].mask;
      for (let i = 0; i < mk.length; i++) inter += mk[i] & mj[i];
      if (!(inter < 0.5 * Math.min(areas[k], areas[j]))) { ok = false; break; }
    }
    if (ok) kept.push(k);
  }
  const films = kept.map((k) => valid[k]);
  const largest = Math.max(...films.map((f) => sum(f.mask)));
  return films.filter((f) => sum(f.mask) >= 0.3 * largest);
}

function illumination(g, lit, w, h) {
  const idxAll = [];
  for (let i = 0; i < lit.length; i++) if (lit[i]) idxAll.push(i);
  let idx = idxAll;
  if (idx.length > 6000) {
    const step = Math.floor(idx.length / 6000);
    idx = idx.filter((_, k) => k % step === 0);
  }
  const m = idx.length;
  const A = new Float64Array(m * 6);
  const b = new Float64Array(m);
  for (let r = 0; r < m; r++) {
    const i = idx[r];
    const x = (i % w) / w - 0.5;
    const y = Math.floor(i / w) / h - 0.5;
    const o = r * 6;
    A[o] = 1;
    A[o + 1] = x;
    A[o + 2] = y;
    A[o + 3] = x * x;
    A[o + 4] = x * y;
    A[o + 5] = y * y;
    b[r] = g[i];
  }
  const c = lstsq(A, b, m, 6);
  const out = new Float32Array(w * h);
  for (let yy = 0; yy < h; yy++) {
    const y = yy / h - 0.5;
    for (let xx = 0; xx < w; xx++) {
      const x = xx / w - 0.5;
      const v = c[0] + x * c[1] + y * c[2] + x * x * c[3] + x * y * c[4] + y * y * c[5];
      out[yy * w + xx] = v < 0.02 ? 0.02 : v;
    }
  }
  return out;
}

function* litMasks(g, gSorted, w, h) {
  const top = percentileSortedF32(gSorted, 99.5);
  const t0 = otsu(g);
  const ts = [...new Set([t0, 0.45 * top, 0.6 * top, 0.75 * top].filter((t) => t > 0.02 && t < 0.99)
    .map((t) => pyRound(t, 3)))].sort((a, b) => a - b);
  const gt = (thr) => { const o = new Uint8Array(g.length); for (let i = 0; i < g.length; i++) o[i] = g[i] > thr ? 1 : 0; return o; };
  for (const t of ts) yield gt(f32(t));
  const rough = openClose(gt(f32(t0)), w, h);
  const { labels, count } = geo.labelComponents(rough, w, h);
  const stats = geo.componentAreas(labels, count);
  if (stats.length) {
    let k = stats[0];
    for (const s of stats) if (s[1] > k[1]) k = s;
    const illum = illumination(g, eq(labels, k[0]), w, h);
    for (const r of [0.9, 0.95]) {
      const rf = f32(r);
      const o = new Uint8Array(g.length);
      for (let i = 0; i < g.length; i++) o[i] = g[i] > f32(rf * illum[i]) ? 1 : 0;
      yield o;
    }
  }
}

function offFrame(p, w, h, margin) {
  return p[0] < margin || p[1] < margin || p[0] > w - 1 - margin || p[1] > h - 1 - margin;
}

/**
 * Find the film in `small` ({w, h, data: float32 RGB interleaved in [0, 1]}, the photo at
 * WORK_SIDE); throws FilmNotFound. Returns the Found record of film_finder.py.
 */
export function locate(small, scale, C) {
  const { w, h } = small;
  const g = boxMean(boxMean(gray(small.data, w, h), w, h, 1, 0), w, h, 1, 1);
  const gSorted = Float32Array.from(g).sort();
  const top = percentileSortedF32(gSorted, 99.5);
  if (top < 0.08) throw new FilmNotFound('the photo is almost black');
  const valid = [];
  const rOpen = Math.max(2, roundHalfEven(0.012 * Math.max(h, w)));
  let thr = 0;
  for (const litRaw of litMasks(g, gSorted, w, h)) {
    const [lit, cands] = candidates(g, gSorted, litRaw, w, h, C);
    for (let m of cands) {
      m = morph(morph(m, w, h, 2 * rOpen + 1, 'erode'), w, h, 2 * rOpen + 1, 'dilate');
      const area = sum(m);
      if (area < C.MIN_FILM_SHARE * h * w) continue;
      let quad = quadFromMask(m, w, h);
      if (quad === null) continue;
      quad = geo.orderQuad(refine(quad, m, w, h));
      if (!geo.filmShaped(quad)) continue;
      const q = geo.fillPolygon(w, h, quad);
      let inter = 0;
      let uni = 0;
      for (let i = 0; i < m.length; i++) { inter += m[i] & q[i]; uni += m[i] | q[i]; }
      const iou = inter / Math.max(uni, 1.0);
      if (iou < C.MIN_QUADNESS) continue;
      const [shares, ring] = outsideLit(quad, lit, w, h, g);
      const known = shares.filter((x) => !Number.isNaN(x));
      const enclosure = known.length ? known.reduce((s, x) => s + x, 0) / known.length : 0.0;
      const framed = shares.map((x) => (Number.isNaN(x) ? 0.5 : x)).reduce((s, x) => s + x, 0) / shares.length;
      if (enclosure < C.MIN_ENCLOSURE || !(ring >= C.MIN_RING_LEVEL * top)) continue;
      if (percentileF32(pick(g, m), 75) > f32(C.MAX_FILM_LEVEL * ring)) continue;
      const inside = quad.some((c) => offFrame(c, w, h, 0.006 * Math.max(h, w))) ? 0.7 : 1.0;
      const contrast = edgeContrast(quad, g, w, h, top);
      if (contrast <= 0.05) continue;
      valid.push({
        quad, scale, mask: m, lit, threshold: thr, score: iou * framed * inside * contrast,
        cut_off: false, unlit_sides: [], other_films: 0, enclosure,
      });
    }
    thr++;
  }
  if (!valid.length) throw new FilmNotFound('no film-shaped region darker than a lit lightbox around it');
  const films = distinctFilms(valid);
  const offCentre = (f) => {
    const [cx, cy] = centroid(f.mask, w);
    return Math.hypot((cx - w / 2) / w, (cy - h / 2) / h);
  };
  let best = films[0];
  let bestD = offCentre(best);
  for (const f of films.slice(1)) {
    const d = offCentre(f);
    if (d < bestD) { best = f; bestD = d; }
  }
  best.other_films = films.length - 1;
  best.cut_off = best.quad.some((c) => offFrame(c, w, h, 0.006 * Math.max(h, w)));
  const [shares] = outsideLit(best.quad, best.lit, w, h);
  best.unlit_sides = shares.map((s, i) => [s, i]).filter(([s]) => !Number.isNaN(s) && s < 0.25).map(([, i]) => i);
  return best;
}

/**
 * working_copy: the photo ({width, height, data: RGBA}) box-resized to `side` px on the long side,
 * float32 RGB in [0, 1]; and its scale relative to the photo.
 */
export function workingCopy(photo, side) {
  const W = photo.width;
  const H = photo.height;
  const scale = side / Math.max(W, H);
  const ow = Math.max(1, roundHalfEven(W * scale));
  const oh = Math.max(1, roundHalfEven(H * scale));
  const u8 = resize8(photo.data, W, H, 4, 3, ow, oh, 'box');
  const data = new Float32Array(u8.length);
  for (let i = 0; i < u8.length; i++) data[i] = f32(u8[i] / 255);
  return { small: { w: ow, h: oh, data }, scale };
}
