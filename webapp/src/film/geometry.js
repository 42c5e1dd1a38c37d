// device/geometry.py: homographies, hulls, robust lines, quads, connected components.
// Points are [x, y] arrays; masks are 0/1 Uint8Array, row-major (index y * w + x).

import { argsort, lstsq } from '../lib/npy.js';
import { fillPolygon as pilFillPolygon } from '../lib/pil.js';

export class LinAlgError extends Error {}

const norm2 = (x, y) => Math.sqrt(x * x + y * y);

/** 3x3 H (row-major array of 9) with dst ~ H @ src, least squares with h33 = 1. */
export function homographyFromPoints(src, dst) {
  const m = src.length * 2;
  const A = new Float64Array(m * 8);
  const b = new Float64Array(m);
  for (let i = 0; i < src.length; i++) {
    const [x, y] = src[i];
    const [u, v] = dst[i];
    A.set([x, y, 1, 0, 0, 0, -u * x, -u * y], 2 * i * 8);
    A.set([0, 0, 0, x, y, 1, -v * x, -v * y], (2 * i + 1) * 8);
    b[2 * i] = u;
    b[2 * i + 1] = v;
  }
  const h = lstsq(A, b, m, 8);
  return [...h, 1.0];
}

export function applyHomography(H, x, y) {
  const p0 = x * H[0] + y * H[1] + H[2];
  const p1 = x * H[3] + y * H[4] + H[5];
  const p2 = x * H[6] + y * H[7] + H[8];
  return [p0 / p2, p1 / p2];
}

/** Pillow's PERSPECTIVE coefficients (output pixel -> input pixel) from a 3x3 matrix. */
export function pilPerspective(H) {
  return H.slice(0, 8).map((v) => v / H[8]);
}

/** Counter-clockwise hull (image coordinates, y down), Andrew's monotone chain. */
export function convexHull(points) {
  const sorted = points.map((p) => [p[0], p[1]]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const pts = [];
  for (const p of sorted) {
    const q = pts[pts.length - 1];
    if (!q || q[0] !== p[0] || q[1] !== p[1]) pts.push(p);
  }
  if (pts.length < 3) return pts;
  const half = (seq) => {
    const out = [];
    for (const p of seq) {
      while (out.length >= 2) {
        const [ax, ay] = out[out.length - 2];
        const [bx, by] = out[out.length - 1];
        if ((bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0) break;
        out.pop();
      }
      out.push(p);
    }
    return out;
  };
  const lower = half(pts);
  const upper = half(pts.slice().reverse());
  return lower.slice(0, -1).concat(upper.slice(0, -1));
}

export function polygonArea(poly) {
  let a = 0;
  let b = 0;
  const n = poly.length;
  for (let i = 0; i < n; i++) {
    const j = (i + 1) % n;
    a += poly[i][0] * poly[j][1];
    b += poly[i][1] * poly[j][0];
  }
  return 0.5 * Math.abs(a - b);
}

/** Drop the hull vertex whose removal loses the least area until four remain (Visvalingam). */
export function simplifyToQuad(hull) {
  const poly = hull.map((p) => [p[0], p[1]]);
  const loss = (i) => {
    const n = poly.length;
    const [ax, ay] = poly[(i - 1 + n) % n];
    const [bx, by] = poly[i];
    const [cx, cy] = poly[(i + 1) % n];
    return Math.abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax));
  };
  while (poly.length > 4) {
    let best = 0;
    let bestLoss = loss(0);
    for (let i = 1; i < poly.length; i++) {
      const l = loss(i);
      if (l < bestLoss) { best = i; bestLoss = l; }
    }
    poly.splice(best, 1);
  }
  return poly;
}

/**
 * Total least squares: unit normal n and offset c with n . p = c. numpy takes the last right
 * singular vector of the centred points (LAPACK); here the 2x2 scatter matrix's minor eigenvector:
 * the same line to the last bits (its sign is arbitrary in both and fixed by the caller).
 */
export function fitLine(xs, ys, idx) {
  const k = idx.length;
  let sx = 0;
  let sy = 0;
  for (const i of idx) { sx += xs[i]; sy += ys[i]; }
  const cx = sx / k;
  const cy = sy / k;
  let sxx = 0;
  let syy = 0;
  let sxy = 0;
  for (const i of idx) {
    const dx = xs[i] - cx;
    const dy = ys[i] - cy;
    sxx += dx * dx;
    syy += dy * dy;
    sxy += dx * dy;
  }
  // eigenvector of the smaller eigenvalue, from whichever row of (S - lambda I) is better
  // conditioned; exactly an axis when the points are (a film edge along a pixel row or column)
  const lam = (sxx + syy) / 2 - Math.hypot((sxx - syy) / 2, sxy);
  let vx = sxy;
  let vy = lam - sxx;
  const ux = lam - syy;
  const uy = sxy;
  if (ux * ux + uy * uy > vx * vx + vy * vy) { vx = ux; vy = uy; }
  const len = Math.hypot(vx, vy);
  const n = len > 0 ? [vx / len, vy / len] : [0, 1];
  return [n, n[0] * cx + n[1] * cy];
}

/** A film edge from boundary points that fingers, clips and bites disturb. */
export function robustLine(xs, ys, outward, keep = 0.6, rounds = 3) {
  const all = Array.from({ length: xs.length }, (_, i) => i);
  let [n, c] = fitLine(xs, ys, all);
  const d = new Float64Array(xs.length);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < xs.length; i++) d[i] = Math.abs(xs[i] * n[0] + ys[i] * n[1] - c);
    const k = Math.max(2, Math.trunc(xs.length * keep));
    [n, c] = fitLine(xs, ys, argsort(d).slice(0, k));
  }
  if (n[0] * outward[0] + n[1] * outward[1] < 0) {
    n = [-n[0], -n[1]];
    c = -c;
  }
  return [n, c];
}

/** Where two lines n . p = c meet (LU with partial pivoting, as LAPACK's solve). */
export function intersect(l1, l2) {
  const [[a00, a01], c1] = l1;
  const [[a10, a11], c2] = l2;
  const det = a00 * a11 - a01 * a10;
  if (!(Math.abs(det) >= 1e-9)) throw new LinAlgError('parallel lines');
  let [p0, p1, b0, b1] = [[a00, a01], [a10, a11], c1, c2];
  if (Math.abs(a10) > Math.abs(a00)) [p0, p1, b0, b1] = [p1, p0, b1, b0];
  const l = p1[0] * (1 / p0[0]);
  const u11 = p1[1] - l * p0[1];
  const y1 = b1 - l * b0;
  const x1 = y1 / u11;
  const x0 = (b0 - p0[1] * x1) / p0[0];
  return [x0, x1];
}

/** Corners as TL, TR, BR, BL of the rectangle nearest the photo's own axes. */
export function orderQuad(quad) {
  const cx = (quad[0][0] + quad[1][0] + quad[2][0] + quad[3][0]) / 4;
  const cy = (quad[0][1] + quad[1][1] + quad[2][1] + quad[3][1]) / 4;
  const ang = quad.map((p) => Math.atan2(p[1] - cy, p[0] - cx));
  const q = argsort(ang).map((i) => [quad[i][0], quad[i][1]]);
  let best = null;
  let bestI = 0;
  for (let i = 0; i < 4; i++) {
    const a = q[i];
    const b = q[(i + 1) % 4];
    const score = Math.abs(Math.atan2(b[1] - a[1], b[0] - a[0]));
    if (best === null || score < best) { best = score; bestI = i; }
  }
  return [0, 1, 2, 3].map((k) => q[(k + bestI) % 4]);
}

/** Could this quadrilateral be a rectangle seen in perspective? */
export function filmShaped(q, minRatio = 0.5, angles = [45.0, 135.0]) {
  const sides = [0, 1, 2, 3].map((i) => norm2(q[(i + 1) % 4][0] - q[i][0], q[(i + 1) % 4][1] - q[i][1]));
  if (Math.min(...sides) <= 0) return false;
  for (let i = 0; i < 2; i++) {
    const a = sides[i];
    const b = sides[i + 2];
    if (Math.min(a, b) < minRatio * Math.max(a, b)) return false;
  }
  for (let i = 0; i < 4; i++) {
    const p = q[(i + 3) % 4];
    const r = q[(i + 1) % 4];
    const u = [p[0] - q[i][0], p[1] - q[i][1]];
    const v = [r[0] - q[i][0], r[1] - q[i][1]];
    const cos = (u[0] * v[0] + u[1] * v[1]) / (norm2(u[0], u[1]) * norm2(v[0], v[1]));
    const ang = Math.acos(Math.min(1, Math.max(-1, cos))) * (180 / Math.PI);
    if (!(angles[0] <= ang && ang <= angles[1])) return false;
  }
  return true;
}

/** (start corner, edge vector, unit outward normal) for each side of a quad. */
export function sides(quad) {
  const cx = (quad[0][0] + quad[1][0] + quad[2][0] + quad[3][0]) / 4;
  const cy = (quad[0][1] + quad[1][1] + quad[2][1] + quad[3][1]) / 4;
  const out = [];
  for (let i = 0; i < 4; i++) {
    const a = quad[i];
    const b = quad[(i + 1) % 4];
    const d = [b[0] - a[0], b[1] - a[1]];
    const len = norm2(d[0], d[1]) || 1.0;
    let n = [-d[1] / len, d[0] / len];
    if (n[0] * (a[0] - cx) + n[1] * (a[1] - cy) < 0) n = [-n[0], -n[1]];
    out.push([a, d, n]);
  }
  return out;
}

/** (mean width, mean height) of a TL, TR, BR, BL quad. */
export function sideLengths(q) {
  const d = (a, b) => norm2(a[0] - b[0], a[1] - b[1]);
  return [(d(q[1], q[0]) + d(q[2], q[3])) / 2, (d(q[3], q[0]) + d(q[2], q[1])) / 2];
}

/**
 * 4-connected components: {labels: Int32Array (0 = background), count}. Labels are numbered in
 * the order of each component's first pixel in raster order, as the Python run-length version.
 */
export function labelComponents(mask, w, h) {
  const rs = [];
  const sc = [];
  const ec = [];
  const rowFirst = new Int32Array(h + 1);
  for (let y = 0; y < h; y++) {
    rowFirst[y] = rs.length;
    const base = y * w;
    let x = 0;
    while (x < w) {
      if (mask[base + x]) {
        const s = x;
        while (x < w && mask[base + x]) x++;
        rs.push(y);
        sc.push(s);
        ec.push(x);
      } else x++;
    }
  }
  rowFirst[h] = rs.length;
  const n = rs.length;
  const parent = new Int32Array(n);
  for (let i = 0; i < n; i++) parent[i] = i;
  const find = (i) => {
    while (parent[i] !== i) {
      parent[i] = parent[parent[i]];
      i = parent[i];
    }
    return i;
  };
  for (let r = 1; r < h; r++) {
    const a0 = rowFirst[r - 1];
    const a1 = rowFirst[r];
    const b1 = rowFirst[r + 1];
    let i = a0;
    for (let j = a1; j < b1; j++) {
      const s = sc[j];
      const e = ec[j];
      while (i < a1 && ec[i] <= s) i++;
      let k = i;
      while (k < a1 && sc[k] < e) {
        const ri = find(k);
        const rj = find(j);
        if (ri !== rj) parent[Math.max(ri, rj)] = Math.min(ri, rj);
        k++;
      }
    }
  }
  const labelOfRoot = new Int32Array(n).fill(0);
  let count = 0;
  const labels = new Int32Array(w * h);
  for (let j = 0; j < n; j++) {
    const root = find(j);
    if (root === j) labelOfRoot[j] = ++count; // roots are each component's first run
    labels.fill(labelOfRoot[root], rs[j] * w + sc[j], rs[j] * w + ec[j]);
  }
  return { labels, count };
}

/** [label, area] of each component. */
export function componentAreas(labels, count) {
  const area = new Int32Array(count + 1);
  for (let i = 0; i < labels.length; i++) area[labels[i]]++;
  const out = [];
  for (let k = 1; k <= count; k++) if (area[k]) out.push([k, area[k]]);
  return out;
}

/** {xs, ys} (Float64Array) of mask pixels with a 4-neighbour outside the mask, row-major order. */
export function boundaryPoints(mask, w, h) {
  const xs = [];
  const ys = [];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      const inner = (y === 0 || mask[i - w]) && (y === h - 1 || mask[i + w])
        && (x === 0 || mask[i - 1]) && (x === w - 1 || mask[i + 1]);
      if (!inner) { xs.push(x); ys.push(y); }
    }
  }
  return { xs: Float64Array.from(xs), ys: Float64Array.from(ys) };
}

/** Leftmost and rightmost pixel of every row: all the left ones, then all the right ones. */
export function rowExtremes(mask, w, h) {
  const left = [];
  const right = [];
  for (let y = 0; y < h; y++) {
    const base = y * w;
    let l = -1;
    for (let x = 0; x < w; x++) if (mask[base + x]) { l = x; break; }
    if (l < 0) continue;
    let r = w - 1;
    while (!mask[base + r]) r--;
    left.push([l, y]);
    right.push([r, y]);
  }
  return left.concat(right);
}

/** Pillow's polygon fill on an (h, w) mask. */
export function fillPolygon(w, h, poly) {
  return pilFillPolygon(w, h, poly);
}
