// The bundle's self-test (edge_runtime/selftest.py): images drawn from arithmetic alone, answered
// here and compared with the probabilities export recorded. It catches a port, a WASM build or a
// browser that computes differently, before the app answers a patient's image.

export function selftestImage(i, size = 320) {
  const out = new Float32Array(size * size);
  const angle = ((i * 0.61) % 1.0) - 0.5;
  const broken = i % 2 === 0;
  const exposure = 0.8 + 0.1 * (i % 3);
  const ca = Math.cos(angle), sa = Math.sin(angle);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const yy = y / size, xx = x / size;
      let u = (xx - 0.5) * ca + (yy - 0.5) * sa;
      const v = -(xx - 0.5) * sa + (yy - 0.5) * ca;
      if (broken) u = u + (v > 0.05 ? 0.035 : 0.0);
      const soft = 0.25 + 0.15 * Math.exp(-((u / 0.3) ** 2));
      const cortex = Math.exp(-(((Math.abs(u) - 0.06) / 0.012) ** 2));
      const medulla = 0.35 * Math.exp(-((u / 0.045) ** 2));
      let img = soft + 0.5 * cortex + medulla;
      if (broken) img = img * (1.0 - 0.6 * Math.exp(-(((v - 0.05) / 0.008) ** 2)) * (Math.abs(u) < 0.09 ? 1 : 0));
      img = img * exposure + 0.02 * Math.sin(37.0 * xx + 23.0 * yy + i);
      out[y * size + x] = Math.min(1, Math.max(0, img));
    }
  }
  return out;
}

/** The largest difference between two lists of gate scores, relative to the score above 1
 * (selftest.scope_difference); Infinity when they cannot be compared. */
function scopeDifference(got, want) {
  if (!Array.isArray(want) || !Array.isArray(got) || want.length !== got.length || got.some((v) => v === null)) return Infinity;
  return Math.max(...got.map((v, i) => Math.abs(v - want[i]) / Math.max(1, Math.abs(want[i]))));
}

async function answers(engine, n, film) {
  const probs = [], scores = [], outliers = [];
  for (let i = 0; i < n; i++) {
    // The drawn images are outside what a real model reads: the gate's verdict is measured, not enforced.
    const r = await engine.predictPixels(selftestImage(i), 320, 320, { heatmap: false, gate: false, film });
    if (r.error) return { error: `self-test image ${i} was refused: ${r.error}` };
    probs.push(r.probability);
    scores.push(r.scope?.score ?? null);
    outliers.push(r.scope?.outlier_logit ?? null);
  }
  return { probs, scores, outliers };
}

/** {passed, max_abs_diff, tolerance, got, expected} (and the gate's scores, for files and films,
 * where the bundle records them: scope_max_diff, scope_film_max_diff); passed null when the bundle
 * records none. As edge_runtime/selftest.run, with its tolerances. */
export async function runSelfTest(engine, config) {
  const rec = engine.manifest.self_test;
  const expected = rec?.probabilities?.[engine.artifactKey];
  if (!expected) return { passed: null, reason: "the bundle records no self-test answers for this artifact" };
  if (rec.generator !== config.SELFTEST_GENERATOR) return { passed: false, reason: `self-test made by ${rec.generator}, this app has ${config.SELFTEST_GENERATOR}` };
  const a = await answers(engine, rec.n, false);
  if (a.error) return { passed: false, reason: a.error };
  const got = a.probs;
  const tol = rec.tolerance?.[engine.artifact.precision] ?? 1e-3;
  const worst = Math.max(...got.map((p, i) => Math.abs(p - expected[i])));
  const out = { passed: worst <= tol, max_abs_diff: worst, tolerance: tol, got, expected };
  const sTol = config.SELFTEST_SCOPE_TOLERANCE[engine.artifact.precision] ?? 2e-3;
  for (const [section, film] of [["scope_scores", false], ["scope_scores_film", true]]) {
    const want = rec[section]?.[engine.artifactKey];
    if (want === undefined || want === null) continue;
    let mine = a.scores;
    if (film) {
      const f = await answers(engine, rec.n, true);
      if (f.error) return { passed: false, reason: f.error };
      mine = f.scores;
    }
    const diff = scopeDifference(mine, want);
    out[film ? "scope_film_max_diff" : "scope_max_diff"] = diff;
    out.scope_tolerance = sTol;
    if (!(diff <= sTol) && out.passed) {
      Object.assign(out, { passed: false, reason: `the out-of-scope gate's scores ${film ? "on films " : ""}differ from those export recorded` });
    }
  }
  const wantOut = rec.scope_outlier_logits?.[engine.artifactKey];
  if (wantOut !== undefined && wantOut !== null) {
    // the gate's outlier direction's logits, compared as the scores are (selftest.run)
    const diff = scopeDifference(a.outliers, wantOut);
    out.scope_outlier_max_diff = diff;
    out.scope_tolerance = sTol;
    if (!(diff <= sTol) && out.passed) {
      Object.assign(out, { passed: false, reason: "the out-of-scope gate's outlier direction differs from what export recorded" });
    }
  }
  return out;
}
