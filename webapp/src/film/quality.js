// device/quality.py: the gate. Reasons with stable codes and the sentences of quality.TEXT,
// formatted here with a small subset of Python's str.format.

import { resizeF } from '../lib/pil.js';
import { boxMean } from './imageops.js';
import {
  f32, percentileF32, percentileSortedF32Array, pyFixed, pyRound,
} from '../lib/npy.js';

/**
 * Python's str.format for the fields quality.TEXT uses: {name}, {name:.Nf}, {name:.N%}
 * ({{ and }} are literal braces).
 */
export function formatText(template, values) {
  return template.replace(/\{\{|\}\}|\{(\w+)(?::([^}]*))?\}/g, (m, name, spec) => {
    if (m === '{{') return '{';
    if (m === '}}') return '}';
    if (!(name in values)) throw new Error(`missing value for {${name}}`);
    const v = values[name];
    if (!spec) return String(v);
    const f = /^\.(\d+)([f%])$/.exec(spec);
    if (!f) throw new Error(`unsupported format spec ${spec}`);
    const nd = Number(f[1]);
    return f[2] === '%' ? `${pyFixed(v * 100, nd)}%` : pyFixed(v, nd);
  });
}

export function reason(code, C, values = {}) {
  return { code, text: formatText(C.TEXT[code], values) };
}

/** Quality as Quality.to_dict(): metrics rounded to 4 decimals (NaN stays NaN). */
export function qualityDict(ok, reasons, metrics = {}) {
  const m = {};
  for (const [k, v] of Object.entries(metrics)) m[k] = pyRound(v, 4);
  return { ok, reasons: reasons.map((r) => r.text), codes: reasons.map((r) => r.code), metrics: m };
}

/** How much there is to see at a quarter of the working size, over the photo's brightness. */
export function detail(grayImg, w, h) {
  const hh = Math.floor(h / 4);
  const ww = Math.floor(w / 4);
  const g = new Float32Array(hh * ww);
  for (let Y = 0; Y < hh; Y++) {
    for (let X = 0; X < ww; X++) {
      let tot = 0;
      for (let dy = 0; dy < 4; dy++) {
        const p = (4 * Y + dy) * w + 4 * X;
        const row = f32(f32(f32(grayImg[p] + grayImg[p + 1]) + grayImg[p + 2]) + grayImg[p + 3]);
        tot = dy === 0 ? row : f32(tot + row);
      }
      g[Y * ww + X] = f32(tot / 16);
    }
  }
  // np.gradient(g[1:-1, 1:-1]): central differences, one-sided at the edges (float32)
  const ih = hh - 2;
  const iw = ww - 2;
  const at = (y, x) => g[(y + 1) * ww + (x + 1)];
  const mag = new Float32Array(ih * iw);
  for (let y = 0; y < ih; y++) {
    for (let x = 0; x < iw; x++) {
      let gy;
      let gx;
      if (y === 0) gy = f32(at(1, x) - at(0, x));
      else if (y === ih - 1) gy = f32(at(y, x) - at(y - 1, x));
      else gy = f32(f32(at(y + 1, x) - at(y - 1, x)) / 2);
      if (x === 0) gx = f32(at(y, 1) - at(y, 0));
      else if (x === iw - 1) gx = f32(at(y, x) - at(y, x - 1));
      else gx = f32(f32(at(y, x + 1) - at(y, x - 1)) / 2);
      mag[y * iw + x] = f32(Math.hypot(gx, gy));
    }
  }
  const p99 = percentileF32(mag, 99);
  const top = percentileF32(grayImg, 99.5);
  return f32(p99 / f32(Math.max(top, 0.1)));
}

/** Detail at the model's scale: p99 |Laplacian| over the p1-p99 range, film box-resized to side. */
export function sharpness(pixels, w, h, side = 128) {
  const small = resizeF(pixels, w, h, side, side, 'box');
  const sorted = Float32Array.from(small).sort();
  const lo = percentileSortedF32Array(sorted, 1);
  const hi = percentileSortedF32Array(sorted, 99);
  const lap = new Float32Array((side - 2) * (side - 2));
  for (let y = 1; y < side - 1; y++) {
    for (let x = 1; x < side - 1; x++) {
      const i = y * side + x;
      let v = f32(4 * small[i]);
      v = f32(v - small[i - side]);
      v = f32(v - small[i + side]);
      v = f32(v - small[i - 1]);
      v = f32(v - small[i + 1]);
      lap[(y - 1) * (side - 2) + (x - 1)] = Math.abs(v);
    }
  }
  return percentileF32(lap, 99) / Math.max(hi - lo, 1e-3);
}

/** Checks that need no film: blank, a radiograph file rather than a photo, a photo too small. */
export function beforeFinding(originalSize, small, grayFile, grayImg, C) {
  const [W, H] = originalSize;
  const size = `${W}x${H} px`;
  if (Math.min(small.w, small.h) < 16) return reason('photo_too_small', C, { size, min: C.MIN_FILM_SIDE_PX });
  if (detail(grayImg, small.w, small.h) < C.MIN_DETAIL) {
    const thr = f32(0.98);
    let sat = 0;
    const d = small.data;
    for (let i = 0; i < small.w * small.h; i++) {
      if (Math.max(d[3 * i], d[3 * i + 1], d[3 * i + 2]) >= thr) sat++;
    }
    return sat / (small.w * small.h) > C.MAX_SATURATED ? reason('washed_out', C) : reason('blank', C);
  }
  if (grayFile) return reason('radiograph_file', C);
  if (Math.min(W, H) < C.MIN_FILM_SIDE_PX) return reason('photo_too_small', C, { size, min: C.MIN_FILM_SIDE_PX });
  return null;
}

/**
 * quality.screen_layout: [edge, lit panel] of the photo at the finder's working size: its edge's
 * brightness over its brightest level, and the share of it that is a flat, bright panel.
 */
export function screenLayout(grayImg, w, h, C, top = percentileF32(grayImg, 99.5)) {
  const b = Math.min(Math.max(2, Math.floor(C.SCREEN_EDGE * Math.min(h, w))), h, w);
  const edge = new Float32Array(2 * b * w + 2 * b * h);
  let k = 0;
  for (let y = 0; y < b; y++) for (let x = 0; x < w; x++) edge[k++] = grayImg[y * w + x];
  for (let y = h - b; y < h; y++) for (let x = 0; x < w; x++) edge[k++] = grayImg[y * w + x];
  for (let y = 0; y < h; y++) for (let x = 0; x < b; x++) edge[k++] = grayImg[y * w + x];
  for (let y = 0; y < h; y++) for (let x = w - b; x < w; x++) edge[k++] = grayImg[y * w + x];
  const surround = percentileF32(edge, 90) / Math.max(top, 1e-6);
  const r = C.SCREEN_WINDOW;
  const sq = new Float32Array(w * h);
  for (let i = 0; i < w * h; i++) sq[i] = f32(grayImg[i] * grayImg[i]);
  const m = boxMean(boxMean(grayImg, w, h, r, 0), w, h, r, 1);
  const m2 = boxMean(boxMean(sq, w, h, r, 0), w, h, r, 1);
  const bright = f32(C.SCREEN_BRIGHT * top);
  const flat = f32(C.SCREEN_FLAT * top);
  let lit = 0;
  for (let i = 0; i < w * h; i++) {
    const spread = f32(Math.sqrt(Math.max(f32(m2[i] - f32(m[i] * m[i])), 0)));
    if (m[i] >= bright && spread <= flat) lit++;
  }
  return [surround, lit / (w * h)];
}

/** No film found: a photo too dark to see one, a photo of a screen, or one without a film on a lit lightbox. */
export function notFound(grayImg, w, h, C) {
  const top = percentileF32(grayImg, 99.5);
  if (top < C.MIN_LIGHTBOX_LEVEL) return reason('too_dark', C, { level: top });
  const [surround, litPanel] = screenLayout(grayImg, w, h, C, top);
  if (surround < C.SCREEN_SURROUND && litPanel < C.SCREEN_LIT_PANEL) return reason('screen', C);
  return reason('no_film', C);
}

/** quality.film_minimum: [side, least px] of the film for a model's input (size, resize); without
 * one, the short side and MIN_FILM_SIDE_PX. */
export function filmMinimum(spec, C) {
  if (!spec) return ['short', C.MIN_FILM_SIDE_PX];
  return [spec.resize === 'letterbox' ? 'long' : 'short', Math.ceil(C.MIN_PX_PER_INPUT_PX * spec.size)];
}

/** The gate on a found, flattened film: {ok, reasons: [{code, text}], metrics}; `flatLeast`: the
 * least pixels the flattened film itself must hold along the film's side (quality.assess). */
export function assess(flat, C, minimum = null, flatLeast = null) {
  const [side, least] = minimum || filmMinimum(null, C);
  const m = {
    sharpness: sharpness(flat.pixels, flat.width, flat.height),
    edge_width: flat.edge_width !== null ? flat.edge_width : NaN,
    glare_share: flat.glare_share,
    lightbox_level: flat.lightbox_level,
    clipped_share: flat.raw_peak_share,
    film_short_side_px: flat.film_short_side_px,
    film_long_side_px: flat.film_long_side_px,
    film_share_of_photo: flat.film_share,
  };
  const reasons = [];
  if (flat.cut_off) reasons.push(reason('cut_off', C));
  if (flat.off_lightbox) reasons.push(reason('off_lightbox', C));
  // quality.film_side_shown: rounded half up once, compared as shown
  const shown = Math.floor((side === 'long' ? flat.film_long_side_px : flat.film_short_side_px) + 0.5);
  if (shown < least) reasons.push(reason('film_too_small', C, { px: shown, side, min: least }));
  else if (flatLeast !== null) {
    const read = side === 'long' ? Math.max(flat.width, flat.height) : Math.min(flat.width, flat.height);
    if (read < flatLeast) {
      reasons.push(reason('film_too_small', C, { px: shown, side, min: Math.ceil(shown * flatLeast / Math.max(read, 1)) }));
    }
  }
  const over = flat.lightbox_level >= C.SATURATED_LEVEL
    || (flat.lightbox_level >= C.OVER_LEVEL && flat.raw_peak_share > C.MAX_CLIPPED_SHARE);
  if (over) reasons.push(reason('over_exposed', C, { level: flat.lightbox_level, clipped: flat.raw_peak_share }));
  if (flat.lightbox_level < C.MIN_LIGHTBOX_LEVEL) reasons.push(reason('under_exposed', C, { level: flat.lightbox_level }));
  if (!over && flat.glare_share > C.MAX_GLARE_SHARE) reasons.push(reason('glare', C, { glare: flat.glare_share }));
  const blurred = flat.edge_width !== null ? flat.edge_width > C.MAX_EDGE_WIDTH : m.sharpness < C.MIN_SHARPNESS;
  if (blurred && !reasons.length) reasons.push(reason('blur', C));
  return { ok: !reasons.length, reasons, metrics: m };
}
