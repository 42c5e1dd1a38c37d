// Bundle + ONNX Runtime Web + its heatmap (the model's own fracture map, or a Grad-CAM head):
// decoded pixels in, a result record out, shaped like edge_runtime/predictor.py's (probability,
// decision, threshold, heatmap, warnings, timings_ms).

import { BundleError, loadBundle } from "./bundle.js";
import { rawMaps } from "./gradcam.js";
import { poolMap, sigmoid } from "./fracturemap.js";
import { calibrate, outlierLogit, scopeScore } from "./scope.js";
import {
  contentProblem, resolutionProblem, mergeMaps, normalizeIntensity, resizeInput, specFromManifest, views,
} from "./preprocess.js";

let ortModule = null;

/** WASM threads need cross-origin isolation (COOP/COEP); without it, one thread. By default half
 * the cores, at most 4 (ONNX Runtime Web's own default: a phone's little cores slow a batch down). */
export function threadCount(requested) {
  if (!globalThis.crossOriginIsolated) return 1;
  const cores = globalThis.navigator?.hardwareConcurrency || 1;
  return Math.max(1, Math.min(requested || Math.min(4, Math.floor(cores / 2)), cores));
}

/** This browser's ONNX Runtime cannot build a session for one artifact (the bundle itself verified):
 * the app may try the bundle's next artifact. Any other BundleError refuses the whole bundle. */
export class ArtifactError extends BundleError {}

export class Engine {
  static async open(bundleBase, config, { vendorBase, threads, artifact } = {}) {
    const b = await loadBundle(bundleBase, config, artifact);
    if (!ortModule) ortModule = await import(new URL("ort.wasm.min.mjs", vendorBase).href);
    const ort = ortModule;
    ort.env.wasm.wasmPaths = vendorBase;
    ort.env.wasm.numThreads = threadCount(threads);
    ort.env.logLevel = "error";
    let session;
    try {
      session = await ort.InferenceSession.create(b.modelBytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    } catch (e) {
      throw new ArtifactError(`${b.artifact.file}: ONNX Runtime cannot load it (${e.message})`);
    }
    return new Engine(b, session, ort, config);
  }

  constructor(b, session, ort, config) {
    Object.assign(this, b);
    this.session = session;
    this.ort = ort;
    this.config = config;
    this.spec = specFromManifest(b.manifest.preprocess);
    this.threshold = b.manifest.decision.threshold;
    this.positive = b.manifest.decision.positive_class ?? config.POSITIVE;
    if (this.positive !== config.POSITIVE) {
      throw new BundleError(`manifest: this app's models answer P(${config.POSITIVE}), the bundle says P(${this.positive})`);
    }
    this.threads = ort.env.wasm.numThreads;
    const shape = b.manifest.model.input.shape;
    this.inputName = b.manifest.model.input.name;
    if (shape[1] !== this.spec.size || shape[2] !== this.spec.size) throw new BundleError("manifest: model input and preprocess size differ");
  }

  /** Frees the WASM session (an artifact that failed its self-test is not kept in memory). */
  async release() {
    try { await this.session.release(); } catch { /* already released, or this runtime cannot */ }
  }

  /** Raw outputs for a batch of preprocessed views (count, size, size, 1). */
  async infer(data, count) {
    const n = this.spec.size;
    const feeds = { [this.inputName]: new this.ort.Tensor("float32", data, [count, n, n, 1]) };
    const out = await this.session.run(feeds);
    return Object.fromEntries(Object.entries(out).map(([k, t]) => [k, { data: t.data, dims: t.dims }]));
  }

  /** Outside what the model reads (edge_runtime/predictor._refused): no probability, no heatmap. */
  refused(scope, warnings, t) {
    return { decision: this.config.OUT_OF_SCOPE, scope, threshold: this.threshold, model: this.manifest.model.name,
      artifact: this.artifactKey, warnings: [...warnings],
      timings_ms: Object.fromEntries(Object.entries(t).map(([k, ms]) => [k, Math.round(ms * 100) / 100])) };
  }

  /** One decoded gray image (Float32Array h*w in [0, 1]) -> record, as Predictor.predict_pixels.
   * `colour`: the file's coloured fraction (decode.js), null for gray files and flattened films.
   * `film`: a flattened film photo, refused by the gate only when the bundle has film groups. */
  async predictPixels(pixels, w, h, { heatmap = true, warnings = [], colour = null, gate = true, film = false } = {}) {
    const t = {};
    const reasons = this.config.SCOPE.REASONS;
    const enforce = gate && this.gate && (!film || this.gate.coversFilm);
    if (enforce && colour !== null && colour > this.gate.colourLimit) {
      return this.refused({ in_scope: false, code: "colour", reason: reasons.colour, colour: Math.round(colour * 1e4) / 1e4 }, warnings, t);
    }
    let t0 = performance.now();
    const small = resizeInput(pixels, w, h, this.spec);
    // a file's own size is checked (not a flattened film's, which the film path bounds, nor the self-test's images)
    const problem = (gate && !film ? resolutionProblem(w, h, this.spec, this.config.CONTENT_LIMITS) : null)
      || contentProblem(small, this.spec.size, this.spec.size, this.config.CONTENT_LIMITS);
    if (problem) return { error: problem, warnings: [...warnings] };
    const x = normalizeIntensity(small, this.spec);
    const v = views(x, this.spec);
    t.preprocess = performance.now() - t0;
    t0 = performance.now();
    const out = await this.infer(v.data, v.count);
    let p = 0;
    let mapLogits = null;
    if (this.manifest.fracture_map) {
      // Each view's map turned back, the logits averaged, then pooled (edge_runtime/fracture_map.py).
      const dims = out.map.dims.map(Number);
      mapLogits = mergeMaps(Float32Array.from(out.map.data), dims[0], dims[1], this.spec);
      p = sigmoid(poolMap(mapLogits, this.manifest.fracture_map.pooling));
    } else {
      const probs = out.prob.data;
      for (let i = 0; i < v.count; i++) p += probs[i];
      p /= v.count;
    }
    t.inference = performance.now() - t0;
    let scope;
    if (this.gate) {
      // The pooled features averaged over the views, their distance to the training groups.
      const d = this.gate.dim;
      const pooled = new Float64Array(d);
      for (let k = 0; k < v.count; k++) for (let i = 0; i < d; i++) pooled[i] += out.pooled.data[k * d + i] / v.count;
      scope = { in_scope: true };
      if (colour !== null) scope.colour = Math.round(colour * 1e4) / 1e4;
      scope.score = Math.round(scopeScore(pooled, this.gate, film) * 1e4) / 1e4;
      const zOut = outlierLogit(pooled, this.gate);
      if (zOut !== null) scope.outlier_logit = Math.round(zOut * 1e4) / 1e4;
      if (!(scope.score <= 1)) scope = { ...scope, in_scope: false, code: "unfamiliar", reason: reasons.unfamiliar };
      if (!enforce) scope.enforced = false; // the self-test's drawn images; a film, where the gate has no film groups
      else if (!scope.in_scope) return this.refused(scope, warnings, t);
    }
    const pModel = p;
    p = calibrate(p, this.manifest.decision.calibration);
    const rec = {
      probability: Math.round(p * 1e6) / 1e6,
      decision: p >= this.threshold ? this.positive : this.config.NEGATIVE,
      threshold: this.threshold, model: this.manifest.model.name, artifact: this.artifactKey,
      warnings: [...warnings],
    };
    if (this.spec.n_views > 1) rec.views = this.spec.n_views;
    if (scope) rec.scope = scope;
    // said, though not enforced (predictor.UNFAMILIAR_PHOTO): the reader should look twice
    if (scope && scope.enforced === false && !scope.in_scope) rec.warnings.push(this.config.SCOPE.UNFAMILIAR_PHOTO);
    if (this.manifest.decision.calibration) rec.probability_model = Math.round(pModel * 1e6) / 1e6;
    if (heatmap && mapLogits) {
      // The map is the heatmap: each cell's P(fracture), on an absolute scale (0 to 1).
      rec.heat = { data: mapLogits.map((a) => sigmoid(a)), side: out.map.dims.map(Number)[1], absolute: true };
    } else if (heatmap && this.head) {
      t0 = performance.now();
      const dims = out.features.dims.map(Number);
      const maps = rawMaps(this.head, out.features.data, dims, out.hidden?.data);
      const raw = mergeMaps(maps, dims[0], dims[1], this.spec);
      let peak = 0;
      for (const a of raw) if (a > peak) peak = a;
      rec.heat = { data: raw.map((a) => (peak > 0 ? a / peak : 0)), side: dims[1] };
      t.gradcam = performance.now() - t0;
    }
    rec.timings_ms = Object.fromEntries(Object.entries(t).map(([k, ms]) => [k, Math.round(ms * 100) / 100]));
    return rec;
  }
}
