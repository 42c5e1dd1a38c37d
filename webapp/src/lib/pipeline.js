// One input -> one result record, as device/triage.py: a radiograph file goes straight to the
// engine; a photo of film is found, flattened and gated first, and a refused photo gets
// "retake", its reasons and no probability.

import { readGrayscale, readPhoto, ImageReadError } from "./decode.js";
import { windowed } from "./preprocess.js";
import { readFilm } from "../film/read_film.js";

/** The flattened film as a viewer would show it (triage.display_image: auto-window 0.5-99.5%). */
const displayWindow = (px) => windowed(px, [0.5, 99.5]);

export async function analyzeFile(engine, blob, name) {
  const t0 = performance.now();
  let decoded;
  try {
    decoded = await readGrayscale(blob, name, engine.spec.size, engine.config.IMAGE_LIMITS);
  } catch (e) {
    if (e instanceof ImageReadError) return { file: name, mode: "file", error: e.reason, warnings: [] };
    throw e;
  }
  const decodeMs = performance.now() - t0;
  const rec = await engine.predictPixels(decoded.pixels, decoded.width, decoded.height,
    { warnings: decoded.warnings, colour: decoded.colour });
  rec.file = name;
  rec.mode = "file";
  rec.source = decoded.source;
  rec.display = { pixels: decoded.pixels, width: decoded.width, height: decoded.height };
  if (rec.timings_ms) rec.timings_ms = { decode: Math.round(decodeMs * 100) / 100, ...rec.timings_ms, total: Math.round((performance.now() - t0) * 100) / 100 };
  return rec;
}

export async function analyzePhoto(engine, blob, name) {
  const t0 = performance.now();
  const base = { file: name, mode: "film", threshold: engine.threshold, model: engine.manifest.model.name };
  let photo;
  try {
    photo = await readPhoto(blob, name, engine.config.IMAGE_LIMITS);
  } catch (e) {
    if (e instanceof ImageReadError) return { ...base, error: e.reason, warnings: [] };
    throw e;
  }
  const timings = { decode: performance.now() - t0 };
  let t1 = performance.now();
  const got = readFilm(photo.rgba, photo.originalSize,
    { sourceGray: photo.sourceGray, constants: engine.config.FILM, spec: engine.spec });
  timings.film = performance.now() - t1;
  const round = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Math.round(v * 100) / 100]));
  const q = got.quality;
  const rec = { ...base, quality: q };
  const flat = got.flat;
  let display = null;
  if (flat) {
    rec.film = { corners: flat.corners, notes: flat.notes, short_side_px: flat.short_side_px };
    display = { pixels: displayWindow(flat.pixels), width: flat.width, height: flat.height };
  }
  if (!q.ok) {
    timings.total = performance.now() - t0;
    return { ...rec, retake: true, decision: engine.config.RETAKE, warnings: [], display, timings_ms: round(timings) };
  }
  const r = await engine.predictPixels(flat.pixels, flat.width, flat.height, { film: true });
  if (r.error) {
    const blank = engine.config.FILM.TEXT.blank_film.replace("{why}", r.error);
    const quality = { ...q, ok: false, reasons: [blank], codes: ["blank_film"] };
    timings.total = performance.now() - t0;
    return { ...rec, quality, retake: true, decision: engine.config.RETAKE, warnings: [], display, timings_ms: round(timings) };
  }
  timings.total = performance.now() - t0;
  return { ...rec, ...r, mode: "film", retake: false, display, timings_ms: round({ ...timings, ...r.timings_ms, total: timings.total }) };
}
