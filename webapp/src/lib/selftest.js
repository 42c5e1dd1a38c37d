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

/** {passed, max_abs_diff, tolerance, got, expected}; passed null when the bundle records none. */
export async function runSelfTest(engine, config) {
  const rec = engine.manifest.self_test;
  const expected = rec?.probabilities?.[engine.artifactKey];
  if (!expected) return { passed: null, reason: "the bundle records no self-test answers for this artifact" };
  if (rec.generator !== config.SELFTEST_GENERATOR) return { passed: false, reason: `self-test made by ${rec.generator}, this app has ${config.SELFTEST_GENERATOR}` };
  const got = [];
  for (let i = 0; i < rec.n; i++) {
    const r = await engine.predictPixels(selftestImage(i), 320, 320, { heatmap: false, gate: false });
    if (r.error) return { passed: false, reason: `self-test image ${i} was refused: ${r.error}` };
    got.push(r.probability);
  }
  const tol = rec.tolerance?.[engine.artifact.precision] ?? 1e-3;
  const worst = Math.max(...got.map((p, i) => Math.abs(p - expected[i])));
  return { passed: worst <= tol, max_abs_diff: worst, tolerance: tol, got, expected };
}
