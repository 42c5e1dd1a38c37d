// Load a bundle over HTTP and check it as edge_runtime/bundle.py does: format, version, status,
// the manifest's own digest, the signature where a trusted key is configured, and the sha256 of
// every file before it is used. A bundle that fails any of these is refused, never half-used.

import { canonicalBytes } from "./canonical.js";
import { FILM_PREFIX } from "./scope.js";
import { sha256Hex } from "./sha256.js";

export class BundleError extends Error {}

async function fetchBytes(url, what) {
  let r;
  try {
    r = await fetch(url, { cache: "no-cache" });
  } catch (e) {
    throw new BundleError(`${what}: cannot be fetched (${e.message})`);
  }
  if (!r.ok) throw new BundleError(`${what}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function verifySignature(base, digest, keyB64, config) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder().decode(await fetchBytes(new URL(config.SIGNATURE_FILE, base), config.SIGNATURE_FILE)));
  } catch (e) {
    throw new BundleError(`bundle is not signed (${config.SIGNATURE_FILE}: ${e.message}), and this app only accepts signed bundles`);
  }
  if (!globalThis.crypto?.subtle) throw new BundleError("signatures can only be checked over https (or on localhost): open the app's https address");
  if (doc.algorithm !== "ed25519") throw new BundleError(`${config.SIGNATURE_FILE} is malformed (not ed25519)`);
  const raw = Uint8Array.from(atob(keyB64), (c) => c.charCodeAt(0));
  let sig;
  try { sig = Uint8Array.from(atob(doc.signature), (c) => c.charCodeAt(0)); } catch { throw new BundleError(`${config.SIGNATURE_FILE} is malformed`); }
  const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, sig, new TextEncoder().encode(config.SIGNED_PREFIX + digest));
  if (!ok) throw new BundleError("signature does not verify with the trusted key: the bundle was changed after signing, or signed by another key");
}

/** {manifest, artifactKey, modelBytes, head, digest} for the bundle at `base` (a URL ending in /):
 * the artifact `wanted`, or the first of the app's preference that export's check passed. */
export async function loadBundle(base, config, wanted) {
  const text = new TextDecoder().decode(await fetchBytes(new URL("manifest.json", base), "manifest.json"));
  let m;
  try { m = JSON.parse(text); } catch (e) { throw new BundleError(`manifest.json is not JSON (${e.message})`); }
  if (m.format !== config.BUNDLE_FORMAT) throw new BundleError("manifest.json is not a fracture-edge bundle manifest");
  if (!config.FORMAT_VERSIONS.includes(m.format_version)) {
    throw new BundleError(`bundle format version ${m.format_version}; this app reads versions ${config.FORMAT_VERSIONS.join(", ")}`);
  }
  const digest = await sha256Hex(canonicalBytes(text, config.DIGEST_KEY));
  if (digest !== m[config.DIGEST_KEY]) throw new BundleError("manifest.json does not match its own digest: damaged or edited");
  if (m.status !== "accepted") throw new BundleError(`bundle status is '${m.status}': export's fidelity check did not accept it`);
  if (config.TRUSTED_KEY) await verifySignature(base, digest, config.TRUSTED_KEY, config);
  const key = (wanted ? [wanted] : config.ARTIFACT_PREFERENCE).find((k) => m.artifacts?.[k]?.check?.passed);
  if (!key) throw new BundleError(`the bundle has no ONNX artifact this app can run (it has ${Object.keys(m.artifacts || {}).join(", ")})`);
  const art = m.artifacts[key];
  const verified = async (file, want) => {
    if (!want) throw new BundleError(`${file} is not listed with a sha256 in the manifest`);
    const bytes = await fetchBytes(new URL(file, base), file);
    const got = await sha256Hex(bytes);
    if (got !== want) throw new BundleError(`${file}: sha256 mismatch (damaged or replaced): expected ${want.slice(0, 12)}…, got ${got.slice(0, 12)}…`);
    return bytes;
  };
  const modelBytes = await verified(art.file, art.sha256);
  if (m.files?.[art.file] && m.files[art.file] !== art.sha256) throw new BundleError(`${art.file}: two different sha256 in the manifest`);
  let head = null;
  if (m.gradcam) head = parseHead(await verified(m.gradcam.file, m.files?.[m.gradcam.file]), m.gradcam);
  let gate = null;
  if (m.scope) gate = parseGate(await verified(m.scope.file, m.files?.[m.scope.file]), m.scope, key, m.format_version);
  return { manifest: m, artifactKey: key, artifact: art, modelBytes, head, gate, digest };
}

/** float32 little-endian arrays of a bundle file, by the manifest's {name: {offset, shape}} index
 * (edge_runtime/bundle.Bundle.read_arrays), into arrays of type `Out`. */
function readArrays(bytes, file, index, Out = Float64Array) {
  if (bytes.length % 4) throw new BundleError(`${file} is not a whole number of float32 values`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length / 4;
  const arrays = {};
  for (const [name, a] of Object.entries(index)) {
    const count = a.shape.reduce((x, y) => x * y, 1);
    if (a.offset + count > n) throw new BundleError(`${file}: array '${name}' runs past the end of the file`);
    const out = new Out(count);
    for (let i = 0; i < count; i++) out[i] = dv.getFloat32((a.offset + i) * 4, true);
    arrays[name] = { data: out, shape: a.shape };
  }
  return arrays;
}

/** The out-of-scope gate (edge_runtime/scope.load_gate) for the artifact this app runs; its checks
 * are edge_runtime/manifest.ScopeInfo's, so both runtimes refuse the same bundles. */
function parseGate(bytes, spec, key, version) {
  const a = readArrays(bytes, spec.file, spec.arrays);
  for (const [name, arr] of Object.entries(a)) {
    if (!arr.data.every(Number.isFinite)) throw new BundleError(`${spec.file}: array '${name}' holds non-finite values`);
  }
  if (!a.means || !a.precisions) throw new BundleError(`${spec.file}: needs 'means' and 'precisions'`);
  const [groups, dim] = a.means.shape;
  const ps = a.precisions.shape;
  if (ps[0] !== groups || ps[1] !== dim || ps[2] !== dim) throw new BundleError(`${spec.file}: precisions are not ${groups} x ${dim} x ${dim}`);
  const thresholds = spec.thresholds?.[key];
  if (!Array.isArray(thresholds) || thresholds.length !== groups) throw new BundleError(`manifest: the out-of-scope gate has no thresholds for ${key}`);
  // Film groups (photographed training films) are measured on the film path only (scope.ScopeGate.applies);
  // checked as edge_runtime/manifest.ScopeInfo checks them: "film/" + a file group of this gate, each once.
  const names = spec.groups;
  const film = spec.film_groups === undefined ? [] : spec.film_groups;
  if (!Array.isArray(names) || names.length !== groups || new Set(names).size !== groups) {
    throw new BundleError(`manifest: the out-of-scope gate's groups do not match its ${groups} arrays`);
  }
  if (!Array.isArray(film) || new Set(film).size !== film.length
      || !film.every((f) => typeof f === "string" && f.startsWith(FILM_PREFIX) && names.includes(f)
        && names.includes(f.slice(FILM_PREFIX.length)))) {
    throw new BundleError(`manifest: scope.film_groups must each be '${FILM_PREFIX}' + a file group's name`);
  }
  const filmOnly = names.map((g) => film.includes(g));
  // The outlier direction (format 5; scope.ScopeGate.outlier): D weights then the bias, and its
  // (file, film) logit thresholds for this artifact; both or neither, as manifest.ScopeInfo checks.
  let outlier = null, outlierThresholds = null;
  if ((a.outlier !== undefined) !== (spec.outlier !== undefined)) {
    throw new BundleError("manifest: scope.outlier: the outlier direction needs both its array and its section");
  }
  if (a.outlier !== undefined) {
    if (!(version >= 5)) throw new BundleError("manifest: the out-of-scope gate's outlier direction needs format version 5");
    if (a.outlier.shape.length !== 1 || a.outlier.shape[0] !== dim + 1) {
      throw new BundleError(`${spec.file}: the outlier direction is not ${dim + 1} numbers`);
    }
    const t = spec.outlier?.thresholds?.[key];
    const ok = (v) => typeof v === "number" && Number.isFinite(v) && v >= -50 && v <= 50;
    if (!t || !ok(t.file) || !ok(t.film)) {
      throw new BundleError(`manifest: the out-of-scope gate's outlier direction has no thresholds in [-50, 50] for ${key}`);
    }
    outlier = a.outlier.data;
    outlierThresholds = [t.file, t.film];
  }
  return { groups, dim, means: a.means.data, precisions: a.precisions.data, thresholds, colourLimit: spec.colour_limit,
    filmOnly, coversFilm: filmOnly.some(Boolean), outlier, outlierThresholds };
}

/** The Grad-CAM head's arrays from its float32 little-endian file (edge_runtime/gradcam.load_head). */
function parseHead(bytes, spec) {
  const arrays = readArrays(bytes, spec.file, spec.arrays, Float32Array);
  if (!arrays.alpha && !(arrays.mix && arrays.w_out)) throw new BundleError(`${spec.file}: needs 'alpha' or 'mix' and 'w_out'`);
  return arrays;
}
