// The Pillow operations the app uses (THE preprocessing's resize, the film reader's), emulated to the bit where practical
// (Pillow's libImaging: Resample.c, Reduce.c, Convert.c, Geometry.c, Draw.c).

const f32 = Math.fround;

const FILTERS = {
  box: { support: 0.5, fn: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bicubic: {
    support: 2.0,
    fn: (x) => {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  bilinear: {
    support: 1.0,
    fn: (x) => {
      if (x < 0) x = -x;
      return x < 1.0 ? 1.0 - x : 0.0;
    },
  },
};

/** Pillow's precompute_coeffs for an input span [0, inSize) resampled to outSize. */
function precomputeCoeffs(inSize, outSize, filter) {
  const { support: fsupport, fn } = FILTERS[filter];
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = fsupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const o = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      const w = fn((x + xmin - center + 0.5) * ss);
      kk[o + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[o + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function coeffs8(c) {
  // normalize_coeffs_8bpc: fixed point with 22 fractional bits
  const k = new Int32Array(c.kk.length);
  for (let i = 0; i < k.length; i++) {
    const v = c.kk[i];
    k[i] = v < 0 ? Math.trunc(-0.5 + v * 4194304) : Math.trunc(0.5 + v * 4194304);
  }
  return k;
}

function clip8(ss) {
  const v = ss >> 22;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function horizontal8(src, w, h, step, bands, ow, filter) {
  const c = precomputeCoeffs(w, ow, filter);
  const k = coeffs8(c);
  const out = new Uint8Array(ow * h * bands);
  for (let y = 0; y < h; y++) {
    const rowIn = y * w * step;
    const rowOut = y * ow * bands;
    for (let xx = 0; xx < ow; xx++) {
      const xmin = c.bounds[xx * 2];
      const xmax = c.bounds[xx * 2 + 1];
      const o = xx * c.ksize;
      for (let b = 0; b < bands; b++) {
        let ss = 1 << 21;
        for (let x = 0; x < xmax; x++) ss += src[rowIn + (x + xmin) * step + b] * k[o + x];
        out[rowOut + xx * bands + b] = clip8(ss);
      }
    }
  }
  return out;
}

function vertical8(src, w, h, step, bands, oh, filter) {
  const c = precomputeCoeffs(h, oh, filter);
  const k = coeffs8(c);
  const out = new Uint8Array(w * oh * bands);
  for (let yy = 0; yy < oh; yy++) {
    const ymin = c.bounds[yy * 2];
    const ymax = c.bounds[yy * 2 + 1];
    const o = yy * c.ksize;
    for (let x = 0; x < w; x++) {
      for (let b = 0; b < bands; b++) {
        let ss = 1 << 21;
        for (let y = 0; y < ymax; y++) ss += src[((y + ymin) * w + x) * step + b] * k[o + y];
        out[(yy * w + x) * bands + b] = clip8(ss);
      }
    }
  }
  return out;
}

// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
// pixels as the width (ImagingResampleInner); the order changes the rounding in between.
const verticalFirst = (w, h, ow, oh) => h - oh > 0 && h - oh > (w - ow) * 2;

/**
 * Image.resize of an 8-bit image with `bands` interleaved channels (stride `step` per pixel, e.g.
 * RGBA data read as RGB: bands 3, step 4). Returns tightly packed `bands`-channel Uint8Array,
 * rounded to 8 bits between the two passes, as Pillow.
 */
export function resize8(data, w, h, step, bands, ow, oh, filter) {
  let cur = data;
  let cstep = step;
  if (verticalFirst(w, h, ow, oh)) {
    cur = vertical8(cur, w, h, cstep, bands, oh, filter);
    cstep = bands;
    if (ow !== w) cur = horizontal8(cur, w, oh, cstep, bands, ow, filter);
  } else {
    if (ow !== w) { cur = horizontal8(cur, w, h, cstep, bands, ow, filter); cstep = bands; }
    if (oh !== h) { cur = vertical8(cur, ow, h, cstep, bands, oh, filter); cstep = bands; }
  }
  if (cstep === bands && cur !== data) return cur;
  const out = new Uint8Array(ow * oh * bands);
  for (let i = 0; i < ow * oh; i++) for (let b = 0; b < bands; b++) out[i * bands + b] = cur[i * cstep + b];
  return out;
}

function horizontalF(src, w, h, ow, filter) {
  const c = precomputeCoeffs(w, ow, filter);
  const out = new Float32Array(ow * h);
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let xx = 0; xx < ow; xx++) {
      const xmin = c.bounds[xx * 2];
      const xmax = c.bounds[xx * 2 + 1];
      const o = xx * c.ksize;
      let ss = 0.0;
      for (let x = 0; x < xmax; x++) ss += src[row + x + xmin] * c.kk[o + x];
      out[y * ow + xx] = ss;
    }
  }
  return out;
}

function verticalF(src, w, h, oh, filter) {
  const c = precomputeCoeffs(h, oh, filter);
  const out = new Float32Array(w * oh);
  for (let yy = 0; yy < oh; yy++) {
    const ymin = c.bounds[yy * 2];
    const ymax = c.bounds[yy * 2 + 1];
    const o = yy * c.ksize;
    for (let x = 0; x < w; x++) {
      let ss = 0.0;
      for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * w + x] * c.kk[o + y];
      out[yy * w + x] = ss;
    }
  }
  return out;
}

/** Image.resize of a mode "F" (float32) image: float64 sums, float32 storage between passes. */
export function resizeF(data, w, h, ow, oh, filter) {
  let cur = data;
  if (verticalFirst(w, h, ow, oh)) {
    cur = verticalF(cur, w, h, oh, filter);
    if (ow !== w) cur = horizontalF(cur, w, oh, ow, filter);
  } else {
    if (ow !== w) cur = horizontalF(cur, w, h, ow, filter);
    if (oh !== h) cur = verticalF(cur, ow, h, oh, filter);
  }
  return cur === data ? Float32Array.from(data) : cur;
}

/** Image.reduce(k) of an 8-bit single-band image (partial boxes at the right and bottom edges). */
export function reduce8(data, w, h, k) {
  const ow = Math.ceil(w / k);
  const oh = Math.ceil(h / k);
  const out = new Uint8Array(ow * oh);
  const mult = (count) => Math.trunc(f32(f32(4294967296) / f32(256 * count)));
  for (let y = 0; y < oh; y++) {
    const y1 = Math.min(h, (y + 1) * k);
    for (let x = 0; x < ow; x++) {
      const x1 = Math.min(w, (x + 1) * k);
      let ss = 0;
      for (let yy = y * k; yy < y1; yy++) for (let xx = x * k; xx < x1; xx++) ss += data[yy * w + xx];
      const count = (y1 - y * k) * (x1 - x * k);
      ss += Math.trunc(count / 2);
      out[y * ow + x] = Math.floor((ss * mult(count)) / 16777216);
    }
  }
  return { data: out, width: ow, height: oh };
}

/** Image.convert("L", matrix=(m0, m1, m2, m3)) of RGB(A) data: float32 arithmetic, truncated. */
export function convertLMatrix(data, w, h, step, m) {
  const m0 = f32(m[0]);
  const m1 = f32(m[1]);
  const m2 = f32(m[2]);
  const m3 = f32(m[3]);
  const out = new Uint8Array(w * h);
  for (let i = 0, p = 0; i < w * h; i++, p += step) {
    let v = f32(m0 * data[p]);
    v = f32(v + f32(m1 * data[p + 1]));
    v = f32(v + f32(m2 * data[p + 2]));
    v = f32(v + m3);
    v = f32(v + 0.5);
    out[i] = v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
  }
  return out;
}

/**
 * Image.transform((ow, oh), PERSPECTIVE, coeffs, BILINEAR) of an 8-bit single-band image:
 * the output pixel centre (x + 0.5, y + 0.5) mapped by the coefficients, bilinear with the input's
 * pixel centres, truncated to 8 bits; outside the input: 0.
 */
export function perspective8(data, w, h, ow, oh, a) {
  const out = new Uint8Array(ow * oh);
  const [a0, a1, a2, a3, a4, a5, a6, a7] = a;
  for (let y = 0; y < oh; y++) {
    const yin = y + 0.5;
    for (let x = 0; x < ow; x++) {
      const xin = x + 0.5;
      const den = a6 * xin + a7 * yin + 1;
      let xx = (a0 * xin + a1 * yin + a2) / den;
      let yy = (a3 * xin + a4 * yin + a5) / den;
      if (!(xx >= 0.0 && xx < w && yy >= 0.0 && yy < h)) continue; // NaN too
      xx -= 0.5;
      yy -= 0.5;
      const xi = Math.floor(xx);
      const yi = Math.floor(yy);
      const dx = xx - xi;
      const dy = yy - yi;
      const x0 = xi < 0 ? 0 : xi < w ? xi : w - 1;
      const x1 = xi + 1 < 0 ? 0 : xi + 1 < w ? xi + 1 : w - 1;
      const r0 = (yi < 0 ? 0 : yi < h ? yi : h - 1) * w;
      const p0 = data[r0 + x0];
      let v1 = p0 + (data[r0 + x1] - p0) * dx;
      let v2 = v1;
      if (yi + 1 >= 0 && yi + 1 < h) {
        const r1 = (yi + 1) * w;
        const q0 = data[r1 + x0];
        v2 = q0 + (data[r1 + x1] - q0) * dx;
      }
      v1 = v1 + (v2 - v1) * dy;
      out[y * ow + x] = Math.trunc(v1);
    }
  }
  return out;
}

function roundf(x) {
  return x >= 0 ? Math.floor(x + 0.5) : -Math.floor(-x + 0.5);
}

function roundUp(f) {
  return f >= 0 ? Math.floor(f32(f + 0.5)) : -Math.floor(f32(Math.abs(f) + 0.5));
}

function roundDown(f) {
  return f >= 0 ? Math.ceil(f32(f - 0.5)) : -Math.ceil(f32(Math.abs(f) - 0.5));
}

function addEdge(x0, y0, x1, y1) {
  const e = { xmin: Math.min(x0, x1), xmax: Math.max(x0, x1), ymin: Math.min(y0, y1), ymax: Math.max(y0, y1) };
  e.dx = y0 === y1 ? 0 : f32((x1 - x0) / (y1 - y0));
  e.x0 = x0;
  e.y0 = y0;
  return e;
}

/**
 * ImageDraw.polygon(poly, fill=255) on a blank "L" image of (h, w), as a 0/1 mask: vertices
 * truncated to integers, Pillow's scan-line filler (Draw.c polygon_generic, float32 crossings).
 */
export function fillPolygon(w, h, poly) {
  const out = new Uint8Array(w * h);
  const count = poly.length;
  if (count === 0) return out;
  const xy = new Int32Array(count * 2);
  for (let i = 0; i < count; i++) {
    xy[2 * i] = Math.trunc(poly[i][0]);
    xy[2 * i + 1] = Math.trunc(poly[i][1]);
  }
  const hline = (x0, y0, x1) => {
    if (y0 < 0 || y0 >= h) return;
    if (x0 < 0) x0 = 0;
    else if (x0 >= w) return;
    if (x1 < 0) return;
    if (x1 >= w) x1 = w - 1;
    if (x0 <= x1) out.fill(1, y0 * w + x0, y0 * w + x1 + 1);
  };
  const e = [];
  let i = 0;
  for (i = 0; i < count - 1; i++) {
    const x0 = xy[i * 2];
    const y0 = xy[i * 2 + 1];
    const x1 = xy[i * 2 + 2];
    const y1 = xy[i * 2 + 3];
    if (y0 === y1 && i !== 0 && y0 === xy[i * 2 - 1]) {
      const last = e[e.length - 1];
      if (x1 > x0 && x0 > xy[i * 2 - 2]) { last.xmax = x1; continue; }
      if (x1 < x0 && x0 < xy[i * 2 - 2]) { last.xmin = x1; continue; }
    }
    e.push(addEdge(x0, y0, x1, y1));
  }
  if (xy[i * 2] !== xy[0] || xy[i * 2 + 1] !== xy[1]) e.push(addEdge(xy[i * 2], xy[i * 2 + 1], xy[0], xy[1]));

  let ymin = h - 1;
  let ymax = 0;
  const table = [];
  for (const edge of e) {
    if (ymin > edge.ymin) ymin = edge.ymin;
    if (ymax < edge.ymax) ymax = edge.ymax;
    if (edge.ymin === edge.ymax) {
      hline(edge.xmin, edge.ymin, edge.xmax);
      continue;
    }
    table.push(edge);
  }
  if (ymin < 0) ymin = 0;
  if (ymax > h) ymax = h;
  const xx = new Float32Array(table.length * 2);
  const at = (edge, y) => f32(f32((y - edge.y0) * edge.dx) + edge.x0);
  for (; ymin <= ymax; ymin++) {
    let j = 0;
    for (let k = 0; k < table.length; k++) {
      const cur = table[k];
      if (ymin >= cur.ymin && ymin <= cur.ymax) {
        xx[j++] = at(cur, ymin);
        if (ymin === cur.ymax && ymin < ymax) {
          xx[j] = xx[j - 1];
          j++;
        } else if ((ymin === cur.ymin || ymin === cur.ymax) && cur.dx !== 0) {
          for (let m = 0; m < k; m++) {
            const other = table[m];
            if ((ymin !== other.ymin && ymin !== other.ymax) || other.dx === 0) continue;
            if (roundf(xx[j - 1]) === roundf(at(other, ymin))) {
              const offset = ymin === cur.ymax ? -1 : 1;
              const adj = at(cur, ymin + offset);
              if (ymin + offset >= other.ymin && ymin + offset <= other.ymax) {
                const adjOther = at(other, ymin + offset);
                if (xx[j - 1] > f32(adj + 1) && xx[j - 1] > f32(adjOther + 1)) {
                  xx[j - 1] = roundf(Math.max(adj, adjOther)) + 1;
                } else if (xx[j - 1] < f32(adj - 1) && xx[j - 1] < f32(adjOther - 1)) {
                  xx[j - 1] = roundf(Math.min(adj, adjOther)) - 1;
                }
                break;
              }
            }
          }
        }
      }
    }
    const row = xx.subarray(0, j).sort();
    for (let k = 1; k < j; k += 2) hline(roundUp(row[k - 1]), ymin, roundDown(row[k]));
  }
  return out;
}

/**
 * How device/photo.open_photo decodes a JPEG of (W, H): the codec's DCT scale (1, 2, 4 or 8, as
 * Pillow's draft picks it) and the integer box reduction after it, with the resulting size.
 * A browser decoder has no DCT scaling: decode at full size and box-reduce by `scale * reduce`
 * to land in the same size range (not bit-identical to libjpeg's scaled IDCT).
 */
export function decodePlan(W, H, decodeSide) {
  let k = 1;
  for (const f of [1, 2, 4, 8]) if (Math.floor(Math.max(W, H) / f) >= decodeSide) k = f;
  const req = [Math.floor(W / k), Math.floor(H / k)];
  let scale = 1;
  if (k > 1) {
    const s = Math.min(Math.floor(W / req[0]), Math.floor(H / req[1]));
    for (const a of [8, 4, 2, 1]) if (s >= a) { scale = a; break; }
  }
  const dw = Math.ceil(W / scale);
  const dh = Math.ceil(H / scale);
  const reduce = Math.max(1, Math.floor(Math.max(dw, dh) / decodeSide));
  return { scale, reduce, width: Math.ceil(dw / reduce), height: Math.ceil(dh / reduce) };
}
