// A fracture map's pooling (edge_runtime/fracture_map.py): the image's logit from the map of cell
// logits alone; the same arithmetic, in float64, as the Python (tests/test_webapp.py pins it).

/** The logistic function, safe at both ends (as fracture_map.sigmoid). */
export function sigmoid(x) {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

/** The image logit of a map (Float32Array of cell logits): max, log-sum-exp (r) or top-k mean. */
export function poolMap(logits, pooling) {
  const m = Array.from(logits, Number);
  let top = -Infinity;
  for (const v of m) if (v > top) top = v;
  if (pooling.kind === "max") return top;
  if (pooling.kind === "topk") {
    const k = Math.min(pooling.k, m.length);
    const sorted = m.slice().sort((a, b) => a - b);
    let s = 0;
    for (let i = sorted.length - k; i < sorted.length; i++) s += sorted[i];
    return s / k;
  }
  if (pooling.kind !== "lse") throw new Error(`unknown map pooling ${pooling.kind}`);
  let s = 0;
  for (const v of m) s += Math.exp(pooling.r * (v - top));
  return top + Math.log(s / m.length) / pooling.r;
}
