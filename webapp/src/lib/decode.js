// Files and camera frames -> pixels, with edge_runtime/imageio.py's limits and reductions: a
// radiograph file becomes gray [0, 1] pixels box-reduced by the factor JPEG draft mode would use;
// a photo of film becomes RGBA reduced to DECODE_SIDE..2x on its long side (device/photo.py).
// Every refusal names the file and the reason.

import { boxReduce } from "./resample.js";
import { percentiles } from "./stats.js";

import { colourFraction } from "./scope.js";

export class ImageReadError extends Error {
  constructor(name, reason) { super(`${name}: ${reason}`); this.file = name; this.reason = reason; }
}

function sniff(b) {
  const s = (o, str) => [...str].every((c, i) => b[o + i] === c.charCodeAt(0));
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (b[0] === 0x89 && s(1, "PNG")) return "PNG";
  if (s(0, "RIFF") && s(8, "WEBP")) return "WEBP";
  if (s(0, "GIF8")) return "GIF";
  if (s(0, "BM")) return "BMP";
  if (b.length > 132 && s(128, "DICM")) return "DICOM";
  return null;
}

// A browser decodes the whole image at full size (4 bytes a pixel) before anything can reduce it;
// a phone's tab has a few hundred MB. 64 MP (256 MB) is the most decoded here: a 108 or 200 MP
// photo is refused with advice, before decoding, from the size its header declares.
const MAX_BROWSER_PIXELS = 64_000_000;

/** [width, height] as the file's header declares them (PNG, JPEG, WebP, GIF, BMP), or null when
 * the header does not say (then the file is refused: every valid image of these formats says). */
export async function declaredSize(blob, b, format) {
  const u16 = (a, o, le) => (le ? a[o] | (a[o + 1] << 8) : (a[o] << 8) | a[o + 1]);
  const u24le = (a, o) => a[o] | (a[o + 1] << 8) | (a[o + 2] << 16);
  const u32 = (a, o, le) => (le ? (u16(a, o, true) | (u16(a, o + 2, true) << 16)) >>> 0 : ((u16(a, o) << 16) | u16(a, o + 2)) >>> 0);
  if (format === "PNG" && b.length >= 24) return [u32(b, 16), u32(b, 20)];
  if (format === "GIF" && b.length >= 10) return [u16(b, 6, true), u16(b, 8, true)];
  if (format === "BMP" && b.length >= 26) return [u32(b, 18, true), Math.abs(u32(b, 22, true) | 0)];
  if (format === "WEBP" && b.length >= 30) {
    const chunk = String.fromCharCode(b[12], b[13], b[14], b[15]);
    if (chunk === "VP8X") return [u24le(b, 24) + 1, u24le(b, 27) + 1];
    if (chunk === "VP8 ") return [u16(b, 26, true) & 0x3fff, u16(b, 28, true) & 0x3fff];
    if (chunk === "VP8L") {
      const bits = u32(b, 21, true);
      return [(bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1];
    }
    return null;
  }
  if (format === "JPEG") { // walk the segments to the frame header, wherever it is
    let o = 2;
    for (let n = 0; n < 10000 && o + 9 < blob.size; n++) {
      const h = new Uint8Array(await blob.slice(o, o + 9).arrayBuffer());
      if (h[0] !== 0xff) return null;
      if (h[1] === 0xff) { o++; continue; }
      // SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC)
      if (h[1] >= 0xc0 && h[1] <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(h[1])) return [u16(h, 7), u16(h, 5)];
      if (h[1] === 0xda || h[1] === 0xd9) return null; // scan data or the end, and no frame header yet
      o += 2 + u16(h, 2);
    }
  }
  return null;
}

async function bitmapOf(blob, name, limits) {
  const head = new Uint8Array(await blob.slice(0, 160).arrayBuffer());
  const format = sniff(head);
  if (format === "DICOM") throw new ImageReadError(name, "DICOM is read by the clinic's Pi (python -m edge_runtime predict), not in the browser; export it as PNG or JPEG");
  if (!format) throw new ImageReadError(name, "not an image, or an image format this app cannot read (JPEG, PNG, WebP, GIF, BMP)");
  if (format === "PNG" && head[24] === 16) {
    throw new ImageReadError(name, "16-bit PNG: a browser reads only 8 of its bits, which would lose most gray levels of a 10-14-bit radiograph; read it on the clinic's Pi (python -m edge_runtime predict)");
  }
  const size = await declaredSize(blob, head, format);
  if (!size) throw new ImageReadError(name, `corrupt ${format}: its header does not give the image's size`);
  if (size[0] * size[1] > Math.min(limits.MAX_PIXELS, MAX_BROWSER_PIXELS)) {
    throw new ImageReadError(name, `image is ${size[0]}x${size[1]} px, more than this app decodes in a phone's memory `
      + `(${Math.min(limits.MAX_PIXELS, MAX_BROWSER_PIXELS).toLocaleString("en")} px): set the camera to 12 MP, or read it on the clinic's Pi`);
  }
  let bmp;
  try {
    bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
  } catch (e) {
    throw new ImageReadError(name, `corrupt or truncated image (${e.name}: ${e.message})`);
  }
  const { width, height } = bmp;
  if (width * height > limits.MAX_PIXELS) {
    bmp.close();
    throw new ImageReadError(name, `image is ${width}x${height} px, above the ${limits.MAX_PIXELS.toLocaleString("en")} px limit`);
  }
  return { bmp, format };
}

function rgbaOf(bmp) {
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const data = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  bmp.close();
  return data;
}

/** Partly transparent pixels composited onto black, in place (edge_runtime/imageio.on_black):
 * the canvas stores colour times alpha and getImageData divides it back out, so multiplying again
 * gives the levels Pillow's premultiplied conversion gives, where the stored colour under a
 * see-through pixel (what Python would otherwise read) is lost. Returns whether any pixel was
 * transparent. */
export function onBlack(rgba) {
  let transparent = false;
  for (let i = 0; i < rgba.length; i += 4) {
    const a = rgba[i + 3];
    if (a === 255) continue;
    transparent = true;
    for (let c = i; c < i + 3; c++) rgba[c] = Math.round((rgba[c] * a) / 255);
    rgba[i + 3] = 255;
  }
  return transparent;
}

/** JPEG draft mode's choice: the largest of 1, 2, 4, 8 keeping both sides >= size. */
export function reduceFactor(w, h, size) {
  return [8, 4, 2].find((f) => Math.floor(w / f) >= size && Math.floor(h / f) >= size) ?? 1;
}

/** A radiograph file -> {pixels, width, height, source: {mode, width, height}, warnings}. */
export async function readGrayscale(blob, name, size, limits) {
  const { bmp, format } = await bitmapOf(blob, name, limits);
  const W = bmp.width, H = bmp.height;
  if (Math.min(W, H) < limits.MIN_SIDE) { bmp.close(); throw new ImageReadError(name, `image is ${W}x${H} px, too small to read`); }
  if (Math.max(W, H) > limits.MAX_ASPECT * Math.min(W, H)) {
    bmp.close();
    throw new ImageReadError(name, `image is ${W}x${H} px: a strip more than ${limits.MAX_ASPECT}:1, not a radiograph`);
  }
  const rgba = rgbaOf(bmp);
  const transparent = onBlack(rgba);
  const n = W * H;
  const gray = new Float32Array(n);
  const spread = new Float32Array(Math.ceil(n / 7));
  let allGray = true;
  for (let i = 0, j = 0; i < n; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    // Pillow's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded
    gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    if (r !== g || g !== b) allGray = false;
    if (i % 7 === 0) spread[j++] = Math.max(r, g, b) - Math.min(r, g, b);
  }
  const warnings = [];
  if (percentiles(spread, [99])[0] > 8) {
    warnings.push("colour image converted to grayscale; if it is a photo of a film on a lightbox, read it as a film photo instead");
  }
  if (transparent) warnings.push("transparent pixels read as composited onto black");
  const f = reduceFactor(W, H, size);
  // The codec's DCT scaling (draft mode) is the box mean of the full IDCT, so a box mean of the
  // decoded levels reproduces it up to the codec's rounding.
  const red = boxReduce(gray, W, H, f);
  for (let i = 0; i < red.data.length; i++) red.data[i] /= 255;
  // The out-of-scope gate's colour measure, on the image reduced as Python reduces it (null: gray).
  const colour = allGray ? null : colourOf(rgba, W, H, f, limits.CHROMA);
  return { pixels: red.data, width: red.width, height: red.height, source: { mode: format, width: W, height: H }, warnings, colour };
}

/** The coloured fraction of the image box-reduced by f, as Pillow's reduce gives it (each channel
 * a rounded box mean), read straight from the RGBA bytes: no full-size copy per channel. */
function colourOf(rgba, W, H, f, chroma) {
  const w = Math.ceil(W / f), h = Math.ceil(H / f);
  const sums = [new Float64Array(w * h), new Float64Array(w * h), new Float64Array(w * h)];
  const count = new Float64Array(w * h);
  for (let y = 0; y < H; y++) {
    const oy = Math.floor(y / f) * w;
    for (let x = 0; x < W; x++) {
      const o = oy + Math.floor(x / f), i = 4 * (y * W + x);
      sums[0][o] += rgba[i]; sums[1][o] += rgba[i + 1]; sums[2][o] += rgba[i + 2]; count[o] += 1;
    }
  }
  const [r, g, b] = sums.map((s) => Float32Array.from(s, (v, k) => Math.min(255, Math.max(0, Math.round(v / count[k])))));
  return colourFraction(r, g, b, chroma);
}

/** A photo of film -> {rgba: {data, width, height}, originalSize, sourceGray}, reduced as device/photo.py. */
export async function readPhoto(blob, name, limits) {
  const { bmp, format } = await bitmapOf(blob, name, limits);
  const W = bmp.width, H = bmp.height;
  const side = limits.DECODE_SIDE;
  const k = format === "JPEG" ? ([8, 4, 2].find((f) => Math.floor(Math.max(W, H) / f) >= side) ?? 1) : 1;
  // The codec's DCT scaling (draft mode: a box mean by k), done by the browser's own resize from
  // the decoded bitmap: 'medium' quality averages power-of-two blocks (mipmaps), in native code.
  let w = Math.ceil(W / k), h = Math.ceil(H / k), small = bmp;
  if (k > 1) {
    small = await createImageBitmap(bmp, { resizeWidth: w, resizeHeight: h, resizeQuality: "medium" });
    bmp.close();
  }
  const rgba = rgbaOf(small);
  onBlack(rgba);
  let chans = [0, 1, 2].map((c) => {
    const a = new Float32Array(w * h);
    for (let i = 0; i < a.length; i++) a[i] = rgba[4 * i + c];
    return a;
  });
  const reduceAll = (f) => {
    if (f <= 1) return;
    const out = chans.map((a) => boxReduce(a, w, h, f));
    chans = out.map((o) => o.data); w = out[0].width; h = out[0].height;
  };
  reduceAll(Math.max(1, Math.floor(Math.max(w, h) / side))); // Image.reduce after decoding
  const data = new Uint8ClampedArray(w * h * 4);
  let gray = true;
  for (let i = 0; i < w * h; i++) {
    const r = Math.round(chans[0][i]), g = Math.round(chans[1][i]), b = Math.round(chans[2][i]);
    data[4 * i] = r; data[4 * i + 1] = g; data[4 * i + 2] = b; data[4 * i + 3] = 255;
    if (r !== g || g !== b) gray = false;
  }
  return { rgba: { data, width: w, height: h }, originalSize: [W, H], sourceGray: gray, format };
}
