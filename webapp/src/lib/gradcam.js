// Grad-CAM from the model's outputs (edge_runtime/gradcam.py): channel weights from the bundle's
// head, one (h*w x C) @ (C) product per view, ReLU.

export function channelWeights(head, hidden) {
  if (head.alpha) return head.alpha.data;
  if (!hidden) throw new Error("this model's Grad-CAM needs the hidden layer output");
  const [C, H] = head.mix.shape;
  const w = new Float32Array(C);
  for (let c = 0; c < C; c++) {
    let s = 0;
    for (let k = 0; k < H; k++) if (hidden[k] > 0) s += head.mix.data[c * H + k] * head.w_out.data[k];
    w[c] = s;
  }
  return w;
}

/** Raw maps for `count` views: features (count, h, w, C) NHWC -> (count, h, w). */
export function rawMaps(head, features, dims, hidden) {
  const [count, h, w, C] = dims;
  const out = new Float32Array(count * h * w);
  for (let v = 0; v < count; v++) {
    const alpha = channelWeights(head, hidden ? hidden.subarray(v * hidden.length / count, (v + 1) * hidden.length / count) : null);
    for (let p = 0; p < h * w; p++) {
      const base = (v * h * w + p) * C;
      let s = 0;
      for (let c = 0; c < C; c++) s += features[base + c] * alpha[c];
      out[v * h * w + p] = s > 0 ? s : 0;
    }
  }
  return out;
}
