// numpy's percentile (linear interpolation) and friends, on typed arrays.

import { percentileSortedF32 } from "./npy.js";

/** np.percentile(x, q) for each q in qs, in float32 like numpy on a float32 array (one sort). */
export function percentiles(x, qs) {
  const s = Float32Array.from(x).sort();
  return qs.map((q) => percentileSortedF32(s, q));
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
