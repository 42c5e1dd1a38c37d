// The phone's own history of results, in IndexedDB (nothing leaves the phone), exportable as
// CSV or JSON. Each record keeps a small JPEG of its overlay so the list can show it.

const DB = "fracture-edge", STORE = "results";

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function tx(mode, fn) {
  return open().then((db) => new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    const out = fn(t.objectStore(STORE));
    t.oncomplete = () => { db.close(); resolve(out.result ?? out); };
    t.onerror = () => { db.close(); reject(t.error); };
    t.onabort = () => { db.close(); reject(t.error || new Error("history transaction aborted (storage full?)")); };
  }));
}

export const addRecord = (rec) => tx("readwrite", (s) => s.add(rec));
export const allRecords = () => tx("readonly", (s) => s.getAll());
export const clearRecords = () => tx("readwrite", (s) => s.clear());

/** The newest `n` records (a cursor from the end: the list does not read years of history). */
export const latestRecords = (n) => tx("readonly", (s) => {
  const out = [];
  const req = s.openCursor(null, "prev");
  req.onsuccess = () => {
    const c = req.result;
    if (c && out.length < n) { out.push(c.value); c.continue(); }
  };
  return out;
});

export const CSV_COLUMNS = ["id", "when_utc", "name", "mode", "decision", "probability", "threshold", "model",
  "bundle_digest", "retake_reasons", "scope_code", "error", "warnings"];

function csvCell(v) {
  if (v === undefined || v === null) return "";
  let s = Array.isArray(v) ? v.join(" | ") : String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s; // a spreadsheet must not run a file name as a formula
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCSV(records) {
  const rows = records.map((r) => CSV_COLUMNS.map((c) => csvCell(r[c])).join(","));
  return [CSV_COLUMNS.join(","), ...rows].join("\r\n") + "\r\n";
}

export function toJSON(records) {
  return JSON.stringify(records.map(({ thumbnail, ...r }) => r), null, 2);
}
