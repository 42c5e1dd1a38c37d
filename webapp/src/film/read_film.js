// device/triage.py read_film, end to end: checks, finding, flattening and the gate.
//
// readFilm(rgb, originalSize, {sourceGray, sourceMode, constants, spec})
//   rgb: {width, height, data} with data RGBA (a canvas's getImageData), the photo as decoded
//        (reduced: long side between DECODE_SIDE and twice that, as device/photo.open_photo);
//   originalSize: [W, H] of the photo as stored (after EXIF rotation);
//   sourceGray: the file was stored as grayscale (or pass sourceMode, checked against
//        constants.GRAYSCALE_MODES);
//   constants: device.webapp_constants.film_constants(), the only source of thresholds and texts;
//   spec: the model's {size, resize}, from which the film's least size follows (quality.film_minimum).
// Returns {quality: Quality.to_dict(), flat: null | {pixels, width, height, corners, notes,
//   short_side_px}} where corners and short_side_px are rounded as triage_photo's "film" record.

import { FilmNotFound, flattenFilm } from './flatten.js';
import { gray, workingCopy } from './finder.js';
import { f32, npRound, percentileF32, pyRound } from '../lib/npy.js';
import { assess, beforeFinding, filmMinimum, notFound, qualityDict } from './quality.js';

export { decodePlan } from '../lib/pil.js';

export const REQUIRED_CONSTANTS = [
  'WORK_SIDE', 'MIN_FILM_SHARE', 'MAX_HOLE_SHARE', 'MIN_QUADNESS', 'MIN_ENCLOSURE', 'MIN_RING_LEVEL',
  'MAX_FILM_LEVEL', 'OUT_LONG_SIDE', 'INSET', 'PROFILE_OFFSETS', 'GRID', 'MIN_FILM_SIDE_PX', 'MIN_DETAIL',
  'MAX_SATURATED', 'MIN_LIGHTBOX_LEVEL', 'SCREEN_EDGE', 'SCREEN_SURROUND', 'SCREEN_LIT_PANEL', 'SCREEN_WINDOW',
  'SCREEN_BRIGHT', 'SCREEN_FLAT', 'SATURATED_LEVEL', 'OVER_LEVEL', 'MAX_CLIPPED_SHARE',
  'MAX_GLARE_SHARE', 'MAX_EDGE_WIDTH', 'MIN_SHARPNESS', 'GRAY_CHROMA', 'TEXT', 'DECODE_SIDE',
  'GRAYSCALE_MODES', 'MIN_PX_PER_INPUT_PX', 'MIN_FILL',
];

function checkConstants(C) {
  if (!C) throw new Error('readFilm needs constants (device.webapp_constants.film_constants())');
  const missing = REQUIRED_CONSTANTS.filter((k) => !(k in C));
  if (missing.length) throw new Error(`film constants missing: ${missing.join(', ')}`);
}

/** 99th percentile of max - min over the channels, in 8-bit steps (float32 RGB in [0, 1]). */
export function chromaSpread(small) {
  const { w, h, data } = small;
  let mx = 0;
  for (let i = 0; i < data.length; i++) if (data[i] > mx) mx = data[i];
  const k = mx <= 1.0 ? 255 : 1;
  const spread = new Float32Array(w * h);
  for (let i = 0; i < w * h; i++) {
    const r = f32(data[3 * i] * k);
    const g = f32(data[3 * i + 1] * k);
    const b = f32(data[3 * i + 2] * k);
    spread[i] = f32(Math.max(r, g, b) - Math.min(r, g, b));
  }
  return percentileF32(spread, 99);
}

export function readFilm(rgb, originalSize, { sourceGray = false, sourceMode = null, constants, spec = null } = {}) {
  const C = constants;
  checkConstants(C);
  const photo = { width: rgb.width, height: rgb.height, data: rgb.data };
  const wc = workingCopy(photo, C.WORK_SIDE);
  const { small } = wc;
  const grayFile = Boolean(sourceGray) || (sourceMode !== null && C.GRAYSCALE_MODES.includes(sourceMode))
    || chromaSpread(small) < C.GRAY_CHROMA;
  const graySmall = gray(small.data, small.w, small.h);
  const early = beforeFinding(originalSize, small, grayFile, graySmall, C);
  if (early !== null) return { quality: qualityDict(false, [early]), flat: null };
  let flat;
  try {
    flat = flattenFilm(photo, C, originalSize, wc);
  } catch (e) {
    if (e instanceof FilmNotFound) return { quality: qualityDict(false, [notFound(graySmall, small.w, small.h, C)]), flat: null };
    throw e;
  }
  // the flattened film must hold what a file must (preprocess.min_filled_side)
  const q = assess(flat, C, filmMinimum(spec, C), spec ? Math.ceil(C.MIN_FILL * spec.size) : null);
  return {
    quality: qualityDict(q.ok, q.reasons, q.metrics),
    flat: {
      pixels: flat.pixels,
      width: flat.width,
      height: flat.height,
      corners: flat.corners.map(([x, y]) => [npRound(x, 1), npRound(y, 1)]),
      notes: flat.notes,
      short_side_px: pyRound(flat.film_short_side_px, 1),
    },
  };
}
