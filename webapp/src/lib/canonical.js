// The manifest digest (edge_runtime/manifest.py): sha256 of the manifest's canonical JSON, as
// Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True) writes it.
// Numbers are kept as the text the manifest holds (Python wrote them with repr, which is what
// json.dumps writes again); a JS round trip would turn 1.0 into 1 and 1e-05 into 0.00001.

function parse(text) {
  let i = 0;
  const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++; const entries = []; ws();
      if (text[i] === "}") { i++; return { t: "o", entries }; }
      for (;;) {
        ws(); const key = string(); ws();
        if (text[i++] !== ":") throw new Error("manifest.json: ':' expected");
        entries.push([key, value()]); ws();
        const d = text[i++];
        if (d === "}") return { t: "o", entries };
        if (d !== ",") throw new Error("manifest.json: ',' or '}' expected");
      }
    }
    if (c === "[") {
      i++; const items = []; ws();
      if (text[i] === "]") { i++; return { t: "a", items }; }
      for (;;) {
        items.push(value()); ws();
        const d = text[i++];
        if (d === "]") return { t: "a", items };
        if (d !== ",") throw new Error("manifest.json: ',' or ']' expected");
      }
    }
    if (c === '"') return { t: "s", v: string() };
    const m = /^(-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null|NaN|-?Infinity)/.exec(text.slice(i, i + 64));
    if (!m) throw new Error(`manifest.json: unexpected character at ${i}`);
    i += m[0].length;
    return { t: "n", v: m[0] };
  };
  const string = () => {
    if (text[i] !== '"') throw new Error("manifest.json: string expected");
    const start = i++;
    while (text[i] !== '"') { if (text[i] === "\\") i++; i++; if (i >= text.length) throw new Error("manifest.json: open string"); }
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const v = value(); ws();
  if (i !== text.length) throw new Error("manifest.json: trailing data");
  return v;
}

function pyString(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || c > 0x7e) {
      if (c > 0xffff) {
        const u = c - 0x10000;
        out += "\\u" + (0xd800 + (u >> 10)).toString(16).padStart(4, "0") + "\\u" + (0xdc00 + (u & 0x3ff)).toString(16).padStart(4, "0");
      } else out += "\\u" + c.toString(16).padStart(4, "0");
    } else out += ch;
  }
  return out + '"';
}

// Python sorts keys by code point; JS compares strings by UTF-16 unit, which differs once a key
// holds characters above U+FFFF next to ones in U+E000-U+FFFF: compare code points.
function byCodePoint([a], [b]) {
  const x = Array.from(a, (c) => c.codePointAt(0)), y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

function dump(node) {
  switch (node.t) {
    case "o": return "{" + [...node.entries].sort(byCodePoint).map(([k, v]) => pyString(k) + ":" + dump(v)).join(",") + "}";
    case "a": return "[" + node.items.map(dump).join(",") + "]";
    case "s": return pyString(node.v);
    default:
      if (["NaN", "Infinity", "-Infinity"].includes(node.v)) throw new Error("manifest.json holds a non-finite number");
      return node.v;
  }
}

/** The canonical bytes of a manifest's text, without `digestKey` (what Python hashes). */
export function canonicalBytes(text, digestKey) {
  const root = parse(text);
  if (root.t !== "o") throw new Error("manifest.json is not a JSON object");
  const body = { t: "o", entries: root.entries.filter(([k]) => k !== digestKey) };
  return new TextEncoder().encode(dump(body));
}
