// The out-of-scope gate and the calibrated probability, as edge_runtime/scope.py and
// edge_runtime/manifest.Calibration compute them: the same arithmetic in float64, so the phone
// refuses the images the Pi refuses.

/** A film group's name: FILM_PREFIX + the file group it photographs (edge_runtime/scope.FILM_PREFIX). */
export const FILM_PREFIX = "film/";

/** Median as numpy's: the mean of the two middle values for an even count. */
function median(a) {
  const s = Float64Array.from(a).sort();
  const n = s.length;
  if (!n) return 0;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/** The fraction of pixels (r, g, b in 0..255, equal-length arrays) whose opponent colour lies more
 * than `chroma` from the image's median opponent colour (scope.colour_fraction). */
export function colourFraction(r, g, b, chroma) {
  const n = r.length;
  if (!n) return 0;
  const rg = new Float32Array(n), yb = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    rg[i] = r[i] - g[i];
    yb[i] = Math.fround(0.5 * (r[i] + g[i])) - b[i];
  }
  const mrg = median(rg), myb = median(yb);
  let far = 0;
  for (let i = 0; i < n; i++) {
    const a = rg[i] - mrg, c = yb[i] - myb;
    if (a * a + c * c > chroma * chroma) far++;
  }
  return far / n;
}

/** The bound on the direction's log ratio (scope.RATIO_LOG_BOUND). */
const RATIO_LOG_BOUND = 50;

/** The outlier direction's logit (ScopeGate.outlier_logit), or null. */
export function outlierLogit(pooled, gate) {
  if (!gate.outlier) return null;
  const d = gate.dim, w = gate.outlier;
  let z = 0;
  for (let i = 0; i < d; i++) z += Math.sqrt(Math.max(pooled[i], 0)) * w[i];
  return z + w[d];
}

/** The larger of: min over the groups that apply (a file: the file groups; a flattened film: all)
 * of (Mahalanobis distance of the square-rooted pooled features to the group) / (the group's
 * threshold); and e^(logit - the outlier direction's threshold), bounded to e^(+-50). Above 1:
 * refused (ScopeGate.score). */
export function scopeScore(pooled, gate, film = false) {
  const d = gate.dim;
  const f = new Float64Array(d), diff = new Float64Array(d);
  for (let i = 0; i < d; i++) f[i] = Math.sqrt(Math.max(pooled[i], 0));
  let best = Infinity;
  for (let g = 0; g < gate.groups; g++) {
    if (!film && gate.filmOnly[g]) continue;
    for (let i = 0; i < d; i++) diff[i] = f[i] - gate.means[g * d + i];
    const P = gate.precisions, base = g * d * d;
    let q = 0;
    for (let i = 0; i < d; i++) {
      let row = 0;
      for (let j = 0; j < d; j++) row += P[base + i * d + j] * diff[j];
      q += diff[i] * row;
    }
    const s = Math.sqrt(Math.max(q, 0)) / gate.thresholds[g];
    if (s < best) best = s;
  }
  const z = outlierLogit(pooled, gate);
  if (z !== null && gate.outlierThresholds) {
    const r = z - gate.outlierThresholds[film ? 1 : 0];  // NaN stays NaN through min, max and exp
    best = Math.max(best, Math.exp(Math.min(Math.max(r, -RATIO_LOG_BOUND), RATIO_LOG_BOUND)));
  }
  return best;
}

/** The calibrated probability (manifest decision.calibration: Platt scaling of the logit). */
export function calibrate(p, cal) {
  if (!cal) return p;
  const q = Math.min(Math.max(p, 1e-12), 1 - 1e-12);
  const z = cal.a * Math.log(q / (1 - q)) + cal.b;
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}
