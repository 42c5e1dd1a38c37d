// numpy's percentile (linear interpolation) and friends, on typed arrays.

/** np.percentile(x, q) for each q in qs, computed in float32 like numpy on a float32 array. */
export function percentiles(x, qs) {
  const s = Float32Array.from(x).sort();
  const n = s.length;
  return qs.map((q) => {
    const idx = (q / 100) * (n - 1);
    const lo = Math.floor(idx), hi = Math.min(lo + 1, n - 1);
    const t = idx - lo;
    const a = s[lo], b = s[hi], d = Math.fround(b - a);
    // numpy's _lerp: a + d*t below the midpoint, b - d*(1-t) from it on (float32 arithmetic)
    return t >= 0.5 ? Math.fround(b - Math.fround(d * Math.fround(1 - t))) : Math.fround(a + Math.fround(d * t));
  });
}

export function mean(x) {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s / x.length;
}

export function std(x) {
  const m = mean(x);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i] - m) * (x[i] - m);
  return Math.sqrt(s / x.length);
}
