// numpy / Python numeric semantics the film reader depends on (ES module, no dependencies).
//
// Arrays that are float32 in the Python reader are Float32Array here, and every float32 operation
// is rounded with Math.fround where numpy would round (NumPy 2 promotion rules: a Python float
// meeting a float32 array is cast to float32 first, "weak" promotion).

export const f32 = Math.fround;

/** Python's round(x) to an integer: half to even. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  if (Math.abs(x % 1) === 0.5) return 2 * Math.round(x / 2);
  return r;
}

/** Python's format(x, f".{nd}f"): the exact binary value rounded to nd decimals, ties to even. */
export function pyFixed(x, nd) {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : (x > 0 ? 'inf' : '-inf');
  const neg = x < 0 || Object.is(x, -0);
  const ax = Math.abs(x);
  let s = ax.toFixed(nd); // exact value, ties away from zero
  const K = ax * 2 ** (nd + 1); // an exact tie iff this is an odd integer
  if (Number.isInteger(K) && K % 2 === 1) {
    const digits = s.replace('.', '');
    let n = BigInt(digits);
    if (n % 2n === 1n) {
      n -= 1n;
      let t = n.toString().padStart(digits.length, '0');
      s = nd > 0 ? `${t.slice(0, t.length - nd)}.${t.slice(t.length - nd)}` : t;
    }
  }
  return (neg ? '-' : '') + s;
}

/** Python's round(x, nd) for a float. */
export function pyRound(x, nd) {
  if (!Number.isFinite(x)) return x;
  return Number(pyFixed(x, nd));
}

/** numpy's np.round(x, nd): rint(x * 10**nd) / 10**nd. */
export function npRound(x, nd) {
  const f = 10 ** nd;
  return roundHalfEven(x * f) / f;
}

/** np.linspace(start, stop, num) in float64. */
export function linspace(start, stop, num) {
  const out = new Float64Array(num);
  const div = num - 1;
  const step = div > 0 ? (stop - start) / div : NaN;
  for (let i = 0; i < num; i++) out[i] = (div > 0 ? i * step : i * (stop - start)) + start;
  if (num > 1) out[num - 1] = stop;
  return out;
}

function sortedF32(values) {
  const s = Float32Array.from(values);
  s.sort();
  return s;
}

function sortedF64(values) {
  const s = Float64Array.from(values);
  s.sort();
  return s;
}

/** The k-th smallest of `a` (reordered in place), by quickselect. */
function select(a, k) {
  let lo = 0;
  let hi = a.length - 1;
  while (hi > lo) {
    const mid = (lo + hi) >> 1;
    const x = a[lo];
    const y = a[mid];
    const z = a[hi];
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : (x < z ? x : y < z ? z : y);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else break;
  }
  return a[k];
}

/** [k-th, (k+1)-th] smallest of a copy-free typed array (reordered in place). */
function selectPair(a, k, k2) {
  const v = select(a, k);
  if (k2 === k) return [v, v];
  let m = Infinity;
  for (let i = k + 1; i < a.length; i++) if (a[i] < m) m = a[i];
  return [v, m];
}

function quantileIndexes(n, q) {
  const vi = (n - 1) * (q / 100);
  let prev = Math.floor(vi);
  let next = prev + 1;
  if (vi >= n - 1) { prev = n - 1; next = n - 1; }
  if (vi < 0) { prev = 0; next = 0; }
  return [vi, prev, next];
}

/** np.percentile(float32 array, q) with q a Python number: the float32 result. `sorted` ascending. */
export function percentileSortedF32(sorted, q) {
  const n = sorted.length;
  const [vi, prev, next] = quantileIndexes(n, q);
  const t = vi - (vi >= n - 1 ? -1 : prev); // numpy's gamma (index -1 above bounds: value is the last anyway)
  const a = sorted[prev];
  const b = sorted[next];
  const d = f32(b - a);
  if (t >= 0.5) return f32(b - f32(d * f32(1 - t)));
  return f32(a + f32(d * f32(t)));
}

/** np.percentile(float32 array, (q1, q2, ...)): a float64 result (gamma is a float64 array). */
export function percentileSortedF32Array(sorted, q) {
  const n = sorted.length;
  const [vi, prev, next] = quantileIndexes(n, q);
  const t = vi - (vi >= n - 1 ? -1 : prev);
  const a = sorted[prev];
  const b = sorted[next];
  const d = f32(b - a);
  return t >= 0.5 ? b - d * (1 - t) : a + d * t;
}

/** np.percentile(float32 values, q) (a Python number q): by selection, `values` is copied. */
export function percentileF32(values, q) {
  const a = Float32Array.from(values);
  const n = a.length;
  const [vi, prev, next] = quantileIndexes(n, q);
  const t = vi - (vi >= n - 1 ? -1 : prev);
  const [lo, hi] = selectPair(a, prev, next);
  const d = f32(hi - lo);
  if (t >= 0.5) return f32(hi - f32(d * f32(1 - t)));
  return f32(lo + f32(d * f32(t)));
}

export function percentileF64(values, q) {
  const a = Float64Array.from(values);
  const n = a.length;
  const [vi, prev, next] = quantileIndexes(n, q);
  const t = vi - (vi >= n - 1 ? -1 : prev);
  const [lo, hi] = selectPair(a, prev, next);
  const d = hi - lo;
  return t >= 0.5 ? hi - d * (1 - t) : lo + d * t;
}

/** np.median of a float32 array (float32 result: the two middle values added in float32). */
export function medianF32(values) {
  const n = values.length;
  if (n === 0) return NaN;
  if (n < 64) {
    const s = sortedF32(values);
    return n % 2 ? s[(n - 1) / 2] : f32(f32(s[n / 2 - 1] + s[n / 2]) / 2);
  }
  const a = Float32Array.from(values);
  if (n % 2) return select(a, (n - 1) / 2);
  const [lo, hi] = selectPair(a, n / 2 - 1, n / 2);
  return f32(f32(lo + hi) / 2);
}

/** np.median of a float64 array. */
export function medianF64(values) {
  const n = values.length;
  if (n === 0) return NaN;
  if (n < 64) {
    const s = sortedF64(values);
    return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }
  const a = Float64Array.from(values);
  if (n % 2) return select(a, (n - 1) / 2);
  const [lo, hi] = selectPair(a, n / 2 - 1, n / 2);
  return (lo + hi) / 2;
}

/** np.interp(x, xp, fp) for increasing xp (float64). */
export function interp(x, xp, fp) {
  const n = xp.length;
  const out = new Float64Array(x.length);
  let j = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (v > xp[n - 1]) { out[i] = fp[n - 1]; continue; }
    if (v < xp[0]) { out[i] = fp[0]; continue; }
    if (v === xp[n - 1]) { out[i] = fp[n - 1]; continue; }
    while (j > 0 && xp[j] > v) j--;
    while (j < n - 2 && xp[j + 1] <= v) j++;
    if (v === xp[j]) { out[i] = fp[j]; continue; }
    const slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    out[i] = slope * (v - xp[j]) + fp[j];
  }
  return out;
}

/**
 * Least squares min |A x - b| for a tall A (m x n, row-major Float64Array), by Householder QR in
 * float64. numpy's lstsq uses an SVD (LAPACK gelsd); on the well-conditioned systems here the two
 * agree to ~1e-12 relative.
 */
export function lstsq(A, b, m, n) {
  const R = Float64Array.from(A);
  const y = Float64Array.from(b);
  const v = new Float64Array(m);
  for (let k = 0; k < n; k++) {
    let norm = 0;
    for (let i = k; i < m; i++) norm += R[i * n + k] * R[i * n + k];
    norm = Math.sqrt(norm);
    if (norm === 0) continue;
    const alpha = R[k * n + k] > 0 ? -norm : norm;
    for (let i = k; i < m; i++) v[i] = R[i * n + k];
    v[k] -= alpha;
    let vv = 0;
    for (let i = k; i < m; i++) vv += v[i] * v[i];
    if (vv === 0) continue;
    for (let j = k; j < n; j++) {
      let s = 0;
      for (let i = k; i < m; i++) s += v[i] * R[i * n + j];
      s = (2 * s) / vv;
      for (let i = k; i < m; i++) R[i * n + j] -= s * v[i];
    }
    let s = 0;
    for (let i = k; i < m; i++) s += v[i] * y[i];
    s = (2 * s) / vv;
    for (let i = k; i < m; i++) y[i] -= s * v[i];
  }
  const x = new Float64Array(n);
  for (let k = n - 1; k >= 0; k--) {
    let s = y[k];
    for (let j = k + 1; j < n; j++) s -= R[k * n + j] * x[j];
    const d = R[k * n + k];
    x[k] = d === 0 ? 0 : s / d;
  }
  return x;
}

/** Indices that sort `d` ascending (ties by index; numpy's default argsort is not stable). */
export function argsort(d) {
  const idx = Array.from({ length: d.length }, (_, i) => i);
  idx.sort((a, b) => d[a] - d[b] || a - b);
  return idx;
}
