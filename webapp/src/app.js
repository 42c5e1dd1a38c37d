// The phone app: load and check the bundle, then read photos of film (camera or gallery) and
// radiograph files, show the answer with its heatmap, keep a history on the phone.

import { ArtifactError, Engine } from "./lib/engine.js";
import { runSelfTest } from "./lib/selftest.js";
import { analyzeFile, analyzePhoto } from "./lib/pipeline.js";
import { blend, displaySize, heatOnImage, paintWithLegend } from "./lib/overlay.js";
import { addRecord, allRecords, clearRecords, latestRecords, toCSV, toJSON } from "./lib/history.js";

const $ = (id) => document.getElementById(id);
let engine = null;
let config = null;

function setStatus(text) { $("status").textContent = text; }

function fatal(text) {
  $("fatal").textContent = text;
  $("fatal").hidden = false;
  setStatus("Not ready");
}

function label(rec, words = config.LABELS) {
  if (rec.error) return ["err", words.error];
  if (rec.retake) return ["retake", words[config.RETAKE]];
  if (rec.decision === config.OUT_OF_SCOPE) return ["scope", words[config.OUT_OF_SCOPE]];
  return rec.decision === engine.positive ? ["pos", words[config.POSITIVE]] : ["neg", words[config.NEGATIVE]];
}

function overlayCanvas(rec) {
  if (!rec.display) return null;
  const d = displaySize(rec.display.pixels, rec.display.width, rec.display.height, config.OVERLAY.max_side);
  const canvas = document.createElement("canvas");
  if (rec.heat) {
    // The heatmap with its colour scale beside it, as the Python overlay: "1" at the top for a
    // fracture map (absolute: P(fracture) per place), "peak" for Grad-CAM (relative to this image).
    const heat = heatOnImage(rec.heat.data, rec.heat.side, rec.display.height, rec.display.width, engine.spec);
    const rgba = blend(d.pixels, d.width, d.height, heat.data, heat.width, heat.height, config.OVERLAY);
    paintWithLegend(canvas, rgba, d.width, d.height, config.OVERLAY, rec.heat.absolute === true);
    return canvas;
  }
  canvas.width = d.width; canvas.height = d.height;
  const rgba = new Uint8ClampedArray(d.width * d.height * 4);
  for (let i = 0; i < d.width * d.height; i++) {
    const g = Math.round(d.pixels[i] * 255);
    rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = g; rgba[4 * i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(new ImageData(rgba, d.width, d.height), 0, 0);
  return canvas;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function showResult(rec) {
  const box = $("result");
  box.replaceChildren();
  box.hidden = false;
  const [cls, text] = label(rec);
  box.append(el("div", rec.file, "small"));
  const canvas = overlayCanvas(rec);
  if (canvas) box.append(canvas);
  box.append(el("div", text, `badge ${cls}`));
  if (rec.error) box.append(el("p", rec.error));
  if (rec.retake) {
    const ul = el("ul");
    for (const r of rec.quality.reasons) ul.append(el("li", r));
    box.append(ul);
  } else if (rec.decision === config.OUT_OF_SCOPE) {
    box.append(el("p", `${rec.scope?.reason ?? "not an image this model was trained to read"}; ${config.OUT_OF_SCOPE_ADVICE}`));
  } else if (!rec.error) {
    box.append(el("p", `probability ${rec.probability.toFixed(3)} (threshold ${rec.threshold.toFixed(3)})`));
  }
  for (const w of [...(rec.warnings || []), ...(rec.film?.notes || [])]) box.append(el("p", w, "small"));
  box.append(el("p", config.DISCLAIMER, "small"));
  box.scrollIntoView({ behavior: "instant", block: "start" });
  return canvas;
}

async function keep(rec, canvas) {
  try {
    await store(rec, canvas);
  } catch (e) { // private mode, storage full: the answer on screen stands, only the history misses it
    $("history-note").textContent = `History not saved on this phone (${e.name || e.message}).`;
    return;
  }
  await renderHistory();
}

async function store(rec, canvas) {
  let thumbnail = null;
  if (canvas) {
    const c = new OffscreenCanvas(96, Math.max(1, Math.round(96 * canvas.height / canvas.width)));
    c.getContext("2d").drawImage(canvas, 0, 0, c.width, c.height);
    thumbnail = await c.convertToBlob({ type: "image/jpeg", quality: 0.7 });
  }
  await addRecord({
    when_utc: new Date().toISOString(), name: rec.file, mode: rec.mode, decision: rec.error ? "error" : rec.decision,
    probability: rec.probability ?? null, threshold: rec.threshold ?? engine.threshold, model: engine.manifest.model.name,
    bundle_digest: engine.digest, retake_reasons: rec.retake ? rec.quality.codes : [], error: rec.error ?? null,
    scope_code: rec.scope?.in_scope === false ? rec.scope.code : null,
    warnings: rec.warnings || [], thumbnail,
  });
}

let shownUrls = [];

async function renderHistory() {
  const list = $("history-list");
  let records;
  try {
    records = await latestRecords(50);
  } catch (e) {
    $("history-note").textContent = `No history on this phone (${e.name || e.message}): results are shown, not kept.`;
    return;
  }
  shownUrls.forEach((u) => URL.revokeObjectURL(u));
  shownUrls = [];
  list.replaceChildren();
  for (const r of records) {
    const li = el("li");
    if (r.thumbnail) {
      const img = el("img");
      img.alt = "";
      img.src = URL.createObjectURL(r.thumbnail);
      shownUrls.push(img.src);
      li.append(img);
    }
    const fake = { error: r.error, retake: r.decision === config.RETAKE, decision: r.decision };
    const [cls, text] = label(fake, config.LABELS_SHORT);
    const div = el("div");
    div.append(el("span", text, `badge mini ${cls}`), el("div", `${r.name} · ${r.when_utc.replace("T", " ").slice(0, 19)}`, "small"));
    li.append(div);
    list.append(li);
  }
}

async function run(kind, blob, name) {
  setStatus(`Reading ${name}…`);
  try {
    const rec = kind === "film" ? await analyzePhoto(engine, blob, name) : await analyzeFile(engine, blob, name);
    const canvas = showResult(rec);
    await keep(rec, canvas);
    if (window.fractureEdge) window.fractureEdge.last = rec;
    setStatus("Ready");
    return rec;
  } catch (e) {
    const rec = { file: name, mode: kind, error: `internal error (${e.name}) on this file: ${e.message}`, warnings: [] };
    showResult(rec);
    setStatus("Ready");
    return rec;
  }
}

function download(text, name, type) {
  const a = el("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
}

async function startCamera() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: { ideal: "environment" }, width: { ideal: 4096 }, height: { ideal: 3072 } }, audio: false });
  } catch (e) {
    setStatus(`Camera unavailable (${e.name}): use "Open photo of film"`);
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  $("camera").hidden = false;
  $("actions").hidden = true;
  const stop = () => { stream.getTracks().forEach((t) => t.stop()); $("camera").hidden = true; $("actions").hidden = false; };
  $("cancel-btn").onclick = stop;
  $("capture-btn").onclick = async () => {
    const c = new OffscreenCanvas(video.videoWidth, video.videoHeight);
    c.getContext("2d").drawImage(video, 0, 0);
    const blob = await c.convertToBlob({ type: "image/jpeg", quality: 0.95 });
    stop();
    await run("film", blob, `camera ${new Date().toISOString().slice(0, 19).replace("T", " ")}`);
  };
}

async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return "no service worker in this browser: works only while the server is reachable";
  if (!window.isSecureContext) return "not a secure origin (https or localhost): the app cannot be kept for offline use";
  try {
    await navigator.serviceWorker.register("sw.js");
    await navigator.serviceWorker.ready;
    // The first visit has no isolation (threads); once the worker adds the headers, a reload has.
    return "kept for offline use";
  } catch (e) {
    return `offline copy failed (${e.message})`;
  }
}

async function main() {
  config = await (await fetch("config.json")).json();
  $("disclaimer").textContent = config.DISCLAIMER;
  // The shipped artifacts in the app's preference (int8 first): the first whose self-test passes in
  // this browser is used; one that fails is noted and the next is tried.
  // A refused bundle (digest, signature, manifest, a file's sha256) ends here, as in the Python
  // runtime; an artifact this browser's ONNX Runtime cannot load falls back to the next.
  let st = null;
  const failed = [];
  for (const artifact of config.ARTIFACTS_SHIPPED) {
    engine = null;
    try {
      engine = await Engine.open(new URL("bundle/", location.href).href, config, {
        vendorBase: new URL("vendor/", location.href).href, artifact,
        threads: Number(new URLSearchParams(location.search).get("threads")) || undefined,
      });
    } catch (e) {
      if (!(e instanceof ArtifactError)) failed.length = 0;
      failed.push({ artifact, error: e.message });
      if (e instanceof ArtifactError) continue;
      break;
    }
    // Remembered per bundle, app build and browser: a new Chrome (its WASM engine) or a new app checks again.
    const key = `selftest:${engine.digest}:${engine.artifactKey}:${config.APP_BUILD}:${navigator.userAgent}`;
    st = JSON.parse(localStorage.getItem(key) || "null");
    if (!st) {
      st = await runSelfTest(engine, config);
      if (st.passed !== false) localStorage.setItem(key, JSON.stringify(st));
    }
    if (st.passed !== false) break;
    failed.push({ artifact, selftest: st });
    await engine.release();
    engine = null;
  }
  if (!engine && failed.every((f) => f.error)) {
    const reason = failed.length ? failed[0].error : "the app ships no artifact it can run";
    fatal(`This model bundle is refused: ${reason}`);
    window.fractureEdge = { error: reason, failed };
    return;
  }
  if (!engine) {
    st = failed.find((f) => f.selftest).selftest;
    fatal(`The model answers its self-test differently from export (${st.reason || `max |Δp| ${st.max_abs_diff.toFixed(4)}`}): not used.`);
    window.fractureEdge = { error: "self-test failed", selftest: st, failed };
    return;
  }
  if (engine.manifest.demonstration_only) {
    $("demo").textContent = `${config.LABELS.demonstration} (${engine.manifest.model.name})`;
    $("demo").hidden = false;
  }
  for (const id of ["camera-btn", "photo-input", "file-input"]) $(id).disabled = false;
  for (const [label, input] of [["photo-label", "photo-input"], ["file-label", "file-input"]]) {
    $(label).setAttribute("aria-disabled", "false");
    $(label).onkeydown = (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $(input).click(); } };
  }
  $("camera-btn").onclick = startCamera;
  $("photo-input").onchange = async (ev) => { for (const f of ev.target.files) await run("film", f, f.name); ev.target.value = ""; };
  $("file-input").onchange = async (ev) => { for (const f of ev.target.files) await run("file", f, f.name); ev.target.value = ""; };
  const exporting = (fn) => async () => {
    try { await fn(); } catch (e) { $("history-note").textContent = `Export failed (${e.name || e.message}).`; }
  };
  $("csv-btn").onclick = exporting(async () => download(toCSV(await allRecords()), "fracture-screening-history.csv", "text/csv"));
  $("json-btn").onclick = exporting(async () => download(toJSON(await allRecords()), "fracture-screening-history.json", "application/json"));
  $("clear-btn").onclick = exporting(async () => { if (confirm("Delete the history on this phone?")) { await clearRecords(); await renderHistory(); } });
  await renderHistory();
  const readyMs = performance.now(); // since navigation started
  const offline = await registerServiceWorker();
  setStatus(`Ready · ${engine.threads} thread${engine.threads > 1 ? "s" : ""}`);
  $("about").textContent = `${engine.manifest.model.name} · ${engine.artifactKey} · bundle ${engine.digest.slice(0, 12)} · self-test ${st.passed === null ? "not recorded" : "passed"}${failed.length ? ` (${failed.map((f) => f.artifact).join(", ")} failed it here)` : ""} · ${offline} · app ${config.APP_VERSION}`;
  // For tests and benchmarks: the same calls the buttons make.
  window.fractureEdge = { engine, config, selftest: st, selftestFailed: failed, readyMs, offline,
    analyzeFile: (b, n) => analyzeFile(engine, b, n),
    analyzePhoto: (b, n) => analyzePhoto(engine, b, n), run };
}

main().catch((e) => { fatal(`The app failed to start: ${e.message}`); window.fractureEdge = { error: e.message }; });
