// Runs the JS film path on cases written by tests/test_webapp_film_parity.py and writes its results.
//
//   node webapp/tests/film_parity.mjs CASE_DIR [--repeat N]
//
// CASE_DIR holds constants.json (device.webapp_constants.film_constants()), cases.json
// ([{name, width, height, original: [W, H], source_gray}]) and NAME.rgb (the decoded photo, raw
// RGB bytes). Written there: results.json ({name: {quality, flat: {width, height, corners, notes,
// short_side_px} | null, ms}}) and NAME.flat.f32 (the flattened pixels, float32 little-endian).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readFilm } from '../src/film/read_film.js';

const args = process.argv.slice(2);
const dir = args[0];
const ri = args.indexOf('--repeat');
const repeat = ri >= 0 ? Number(args[ri + 1]) : 1;
if (!dir) {
  console.error('usage: node film_parity.mjs CASE_DIR [--repeat N]');
  process.exit(2);
}
const constants = JSON.parse(readFileSync(join(dir, 'constants.json'), 'utf8'));
const cases = JSON.parse(readFileSync(join(dir, 'cases.json'), 'utf8'));
const results = {};
for (const c of cases) {
  const rgb = readFileSync(join(dir, `${c.name}.rgb`));
  const n = c.width * c.height;
  const data = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    data[4 * i] = rgb[3 * i];
    data[4 * i + 1] = rgb[3 * i + 1];
    data[4 * i + 2] = rgb[3 * i + 2];
    data[4 * i + 3] = 255;
  }
  const image = { width: c.width, height: c.height, data };
  let got;
  const times = [];
  for (let r = 0; r < repeat; r++) {
    const t0 = performance.now();
    got = readFilm(image, c.original, { sourceGray: c.source_gray, constants });
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const rec = { quality: got.quality, flat: null, ms: times[Math.floor(times.length / 2)], ms_min: times[0] };
  if (got.flat) {
    const { pixels, ...rest } = got.flat;
    rec.flat = rest;
    writeFileSync(join(dir, `${c.name}.flat.f32`), Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength));
  }
  results[c.name] = rec;
}
// NaN metrics (edge_width without a border step) are written as null
writeFileSync(join(dir, 'results.json'), JSON.stringify(results, (k, v) => (Number.isNaN(v) ? null : v)));
