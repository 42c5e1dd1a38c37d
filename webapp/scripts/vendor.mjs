// Copy the pinned ONNX Runtime Web files the app uses from node_modules into vendor/, with their
// licence and sha256, so the Python package can ship them and a Pi needs no Node.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = join(root, "node_modules", "onnxruntime-web");
const { version } = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));
const files = ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];
const out = join(root, "vendor");
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
const sums = {};
for (const f of files) {
  copyFileSync(join(pkg, "dist", f), join(out, f));
  sums[f] = createHash("sha256").update(readFileSync(join(out, f))).digest("hex");
}
const meta = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));
const info = { package: "onnxruntime-web", version, license: meta.license, homepage: meta.homepage, sha256: sums };
writeFileSync(join(out, "VENDOR.json"), JSON.stringify(info, null, 2) + "\n");
console.log(`vendor/: onnxruntime-web ${version}, ${files.length} files`);
