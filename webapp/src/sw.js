// The offline copy: every file of the app, the WASM runtime and the bundle is cached on install,
// and answered from the cache first. The build writes VERSION (a hash of every file) and FILES
// (each file's sha256), so a new app or a new bundle on the server installs a new cache and the
// old one is dropped. Install fetches past the HTTP cache and checks every file against its
// sha256: a stale or half-updated server (a bundle switched mid-install) fails the install, and
// the previous, consistent copy stays in use until the next visit tries again.
// Responses get COOP/COEP headers, so the page is cross-origin isolated (WASM threads) even
// where the server that first delivered it did not send them.
const VERSION = "__VERSION__";
const FILES = __FILES__;
const CACHE = `fracture-edge-${VERSION}`;

async function hex(buffer) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(d, (v) => v.toString(16).padStart(2, "0")).join("");
}

async function install() {
  const cache = await caches.open(CACHE);
  try {
    for (const [url, sha] of Object.entries(FILES)) {
      const response = await fetch(new Request(url, { cache: "reload" }));
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      if (sha && (await hex(await response.clone().arrayBuffer())) !== sha) throw new Error(`${url}: not this version's file`);
      await cache.put(url, response);
    }
  } catch (e) {
    await caches.delete(CACHE);
    throw e;
  }
  await self.skipWaiting();
}

self.addEventListener("install", (event) => event.waitUntil(install()));

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith("fracture-edge-") && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

function isolated(response) {
  if (!response || response.status === 0 || response.type === "opaque") return response;
  const headers = new Headers(response.headers);
  headers.set("Cross-Origin-Opener-Policy", "same-origin");
  headers.set("Cross-Origin-Embedder-Policy", "require-corp");
  headers.set("Cross-Origin-Resource-Policy", "same-origin");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const hit = await cache.match(event.request, { ignoreSearch: true });
    if (hit) return isolated(hit);
    try {
      return isolated(await fetch(event.request));
    } catch (e) {
      if (event.request.mode === "navigate") {
        const index = await cache.match("./");
        if (index) return isolated(index);
      }
      throw e;
    }
  })());
});
