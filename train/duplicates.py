"""Exact and near-duplicate images, within a dataset and across its splits.

Exact: the same file bytes (sha256). Near: a 256-bit perceptual hash (the signs of the 16x16
lowest-frequency DCT coefficients of a 64x64 gray thumbnail against their median, a pHash) of
one image, compared with the other image's hashes in its eight orientations (turned by 90°,
mirrored) each rotated by -8° to +8° in 2° steps: a copy that was mirrored, turned, slightly
rotated, re-encoded, rescaled or re-exposed still lands within a few dozen bits, while different
radiographs of the same anatomy stay further apart. Two images are near-duplicates when the
Hamming distance is at most `threshold` bits (measured on real radiographs, docs/results.md,
"Near-duplicates": `python -m train.duplicates --data DIR --copies N`).

`python -m train.duplicates --data DIR` lists the pairs; training reports the pairs that cross
its splits in run.json and on stderr (a copy of a training image in the test split inflates every
test number).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

BITS = 256
DEFAULT_THRESHOLD = 48  # bits of 256; chosen by measurement (docs/results.md, "Near-duplicates")
_SIDE, _LOW = 64, 16
ANGLES = tuple(range(-8, 9, 2))  # small rotations searched, degrees
_ORIENTATIONS = 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_SIDE)


_D = _DCT[:_LOW]  # only the lowest 16 frequencies are kept: (16, 64)
_SIGN = (-1.0) ** np.arange(_LOW)  # mirroring a row flips the sign of its odd frequencies


def _thumb(img) -> np.ndarray:
    from PIL import Image

    return np.asarray(img.resize((_SIDE, _SIDE), Image.Resampling.BOX), dtype=np.float64)


def _bits(coef: np.ndarray) -> np.ndarray:
    flat = coef.reshape(-1)
    return np.packbits(flat > np.median(flat[1:])).view(">u8").astype(np.uint64)  # (4,) words


def _oriented(coef: np.ndarray):
    """The low-frequency DCT coefficients of the thumbnail in its eight orientations, from one
    transform: in the order [np.rot90(t, k) for k in 0..3] then the same of t[:, ::-1]."""
    for flip in (False, True):
        c = coef * _SIGN[None, :] if flip else coef  # t[:, ::-1]
        for _ in range(4):
            yield c
            c = c.T * _SIGN[:, None]  # np.rot90: transpose, then reverse the rows


def image_hashes(gray: np.ndarray) -> np.ndarray:
    """(72, 4) uint64: the 256-bit hash of the image in each orientation (8) and small rotation
    (9); row 0 is the image as it is, unrotated (its probe hash)."""
    from PIL import Image

    g = np.ascontiguousarray(np.asarray(gray, dtype=np.float32))
    if g.ndim == 3:
        g = g[:, :, 0]
    base = Image.fromarray(g)
    out = []
    for angle in (0, *[a for a in ANGLES if a != 0]):
        img = base if angle == 0 else base.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
        t = _thumb(img)
        out.extend(_bits(c) for c in _oriented(_D @ t @ _D.T))
    return np.stack(out)


def _signs(words: np.ndarray) -> np.ndarray:
    """(..., 4) uint64 hashes -> (..., 256) float32 of +1 / -1 (any fixed bit order will do)."""
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1)
    return bits.astype(np.float32) * 2.0 - 1.0


def distance_matrix(hashes: np.ndarray, others: Optional[np.ndarray] = None,
                    rows: int = 256, cols: int = 512) -> np.ndarray:
    """(n, m) int16: the smallest Hamming distance between image i as it is and image j in any
    orientation and small rotation. `hashes` (n, 72, 4); `others` (m, 72, 4), default `hashes`.
    With +1/-1 bit vectors, Hamming = (256 - dot) / 2, so one BLAS product per block does it."""
    others = hashes if others is None else others
    n, m, v = len(hashes), len(others), others.shape[1] if len(others) else 1
    out = np.full((n, m), BITS, np.int16)
    probes = _signs(hashes[:, 0, :])  # (n, 256)
    for c0 in range(0, m, cols):
        gallery = _signs(others[c0:c0 + cols]).reshape(-1, BITS)  # (cols * 72, 256)
        k = gallery.shape[0] // v
        for r0 in range(0, n, rows):
            dots = (probes[r0:r0 + rows] @ gallery.T).reshape(-1, k, v).max(axis=2)
            out[r0:r0 + rows, c0:c0 + k] = np.rint((BITS - dots) / 2).astype(np.int16)
    return out


def symmetric_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m): the smaller of the two directions (a's probe against b's variants, and back)."""
    return np.minimum(distance_matrix(a, b), distance_matrix(b, a).T)


def near_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, chunk: int = 256):
    """[(i, j, distance)] with i < j and distance <= threshold, in bounded memory."""
    pairs = []
    n = len(hashes)
    for start in range(0, n, chunk):
        d = symmetric_distances(hashes[start:start + chunk], hashes)
        ii, jj = np.nonzero(d <= threshold)
        for i, j in zip(ii + start, jj):
            if i < j:
                pairs.append((int(i), int(j), int(d[i - start, j])))
    return pairs


def nearest_distances(hashes: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Each image's distance to its nearest other image."""
    n = len(hashes)
    out = np.full(n, BITS, np.int16)
    for start in range(0, n, chunk):
        d = symmetric_distances(hashes[start:start + chunk], hashes)
        for r in range(d.shape[0]):
            d[r, start + r] = BITS
        out[start:start + chunk] = d.min(axis=1)
    return out


def find_duplicates(ids: Sequence[str], hashes: np.ndarray, file_digests: Optional[Sequence[str]] = None,
                    splits: Optional[Sequence[Optional[str]]] = None, threshold: int = DEFAULT_THRESHOLD,
                    listed: int = 50) -> Dict:
    """Exact and near-duplicate pairs; with `splits`, the ones across splits are the finding."""
    pairs: Dict = {}
    if file_digests is not None:
        by_digest: Dict[str, List[int]] = {}
        for i, dg in enumerate(file_digests):
            by_digest.setdefault(dg, []).append(i)
        for group in by_digest.values():
            for x in range(len(group)):
                for y in range(x + 1, len(group)):
                    pairs[(group[x], group[y])] = ("exact", 0)
    for i, j, d in near_pairs(hashes, threshold):
        pairs.setdefault((i, j), ("near", d))
    rows = []
    for (i, j), (kind, d) in sorted(pairs.items(), key=lambda kv: (kv[1][1], kv[0])):
        row = {"a": ids[i], "b": ids[j], "kind": kind, "distance": d}
        if splits is not None:
            row["splits"] = [splits[i], splits[j]]
        rows.append(row)
    cross = [r for r in rows if splits is not None and r["splits"][0] != r["splits"][1]]
    out = {"method": f"sha256 of the file (exact); 256-bit DCT hash over 8 orientations x rotations "
                     f"{ANGLES[0]}..{ANGLES[-1]} deg, Hamming <= {threshold} bits (near)",
           "threshold": threshold, "images": len(ids), "pairs": len(rows),
           "exact_pairs": sum(r["kind"] == "exact" for r in rows), "near_pairs": sum(r["kind"] == "near" for r in rows),
           "listed": rows[:listed]}
    if splits is not None:
        out["across_splits"] = len(cross)
        out["across_splits_listed"] = cross[:listed]
    return out


PHANTOM_NOTE = ("phantoms are drawn independently from (seed, image number): near-duplicate pairs among them are "
                "look-alikes of a simple generator (a leg is a bar on a dark ground at 64 px), not copies; "
                "only exact copies would be a leak")


def warning_lines(report: Dict, phantom: bool = False) -> List[str]:
    """What to tell people about pairs that cross splits (nothing when there are none; for
    phantom data, only exact copies count, see PHANTOM_NOTE)."""
    n = report.get("across_splits", 0)
    if not n:
        return []
    lines = [f"WARNING: {n} image pair(s) sit in two splits as the same or nearly the same image "
             f"(exact {sum(r['kind'] == 'exact' for r in report['across_splits_listed'])}, "
             f"near {sum(r['kind'] == 'near' for r in report['across_splits_listed'])} of those listed); "
             "test numbers are optimistic by that much:"]
    for r in report["across_splits_listed"][:10]:
        lines.append(f"  {r['a']} ({r['splits'][0]}) ~ {r['b']} ({r['splits'][1]}): {r['kind']}, "
                     f"distance {r['distance']}")
    return lines


def across_splits(parts: Dict, threshold: int = DEFAULT_THRESHOLD, phantom: bool = False) -> Dict:
    """The report for a run's loaded splits ({split: LoadedSplit}), from the images as resized
    for the model (what the model sees is what must not repeat) and the files' bytes. Near pairs
    of two phantoms (look-alikes, PHANTOM_NOTE) are counted apart from real ones; with `phantom`
    (phantom data only) the whole report says so."""
    from edge_runtime.bundle import sha256_file
    from fracdata.data import PHANTOM_SOURCE, record_source

    ids, hashes, digests, splits, is_phantom = [], [], [], [], []
    for name, part in parts.items():
        for r, x in zip(part.records, part.resized):
            ids.append(r.image_id)
            hashes.append(image_hashes(x))
            digests.append(sha256_file(r.path))
            splits.append(name)
            is_phantom.append(phantom or record_source(r) == PHANTOM_SOURCE)
    h = np.stack(hashes) if hashes else np.zeros((0, 72, 4), np.uint64)
    report = find_duplicates(ids, h, digests, splits, threshold, listed=10 ** 6)
    ph = {i for i, f in zip(ids, is_phantom) if f}

    def lookalike(row: Dict) -> bool:
        return row["kind"] == "near" and row["a"] in ph and row["b"] in ph

    cross = report.get("across_splits_listed", [])
    kept = [r for r in cross if not lookalike(r)]
    report["phantom_lookalikes_across_splits"] = len(cross) - len(kept)
    report["across_splits"] = len(kept)
    report["across_splits_listed"] = kept[:50]
    report["listed"] = [r for r in report["listed"] if not lookalike(r)][:50]
    if ph:
        report["note"] = PHANTOM_NOTE
    return report


def duplicate_groups(records: Sequence, threshold: int = DEFAULT_THRESHOLD, near: bool = True,
                     progress: bool = False) -> Dict[str, str]:
    """image_id -> its group (the smallest image_id in it): images joined by exact copies (same
    bytes) and, with `near`, near-duplicates (flipped, turned, re-encoded copies of one
    radiograph). A split keeps each group whole. Phantoms pass near=False: they are drawn
    independently, and their look-alikes are not copies (PHANTOM_NOTE). Unreadable images stay
    alone (training's loader names them)."""
    from edge_runtime.errors import ImageReadError
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import PreprocessSpec, resize_input
    from fracdata.progress import progress as progress_of
    from fracdata.provenance import sha256_file

    # Hashed twice: stretched (as `python -m train.duplicates` does) and letterboxed (which keeps the
    # geometry: a turned copy of a radiograph with another aspect ratio is found only this way).
    specs = (PreprocessSpec(), PreprocessSpec(resize="letterbox"))
    ids = [r.image_id for r in records]
    parent = {i: i for i in ids}

    def root(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_digest: Dict[str, str] = {}
    hashed, hashes = [], {k: [] for k in range(len(specs))}
    for r in progress_of(list(records), "grouping near-duplicates" if near else "grouping copies", enabled=progress):
        try:
            digest = sha256_file(r.path)
        except OSError:
            continue
        if digest in by_digest:
            join(by_digest[digest], r.image_id)
        by_digest.setdefault(digest, r.image_id)
        if near:
            try:
                pixels = read_image(r.path, specs[0]).pixels
            except ImageReadError:
                continue
            for k, spec in enumerate(specs):
                hashes[k].append(image_hashes(resize_input(pixels, spec)))
            hashed.append(r.image_id)
    if near and len(hashed) > 1:
        for k in hashes:
            for i, j, _ in near_pairs(np.stack(hashes[k]), threshold):
                join(hashed[i], hashed[j])
    return {i: root(i) for i in ids}


# ---------------------------------------------------------------- the command

def _copy_of(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What publishing does to a radiograph: mirrored (half the time), rotated up to ±7° with black
    corners, rescaled by 0.8-1.2, re-encoded as JPEG at quality 60-90."""
    import io

    from PIL import Image

    img = Image.fromarray((np.clip(gray, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.rotate(float(rng.uniform(-7, 7)), resample=Image.Resampling.BILINEAR, fillcolor=0)
    s = float(rng.uniform(0.8, 1.2))
    img = img.resize((max(8, round(img.width * s)), max(8, round(img.height * s))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(60, 91)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), np.float32) / 255.0


def _quantiles(v) -> Dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    if not len(v):
        return {}
    return {f"p{q}": float(np.percentile(v, q)) for q in (0, 1, 5, 25, 50, 75, 95, 100)}


def build_parser() -> argparse.ArgumentParser:
    from fracdata.readers import FORMATS

    ap = argparse.ArgumentParser(prog="python -m train.duplicates", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data folder (any layout fracdata.readers reads)")
    ap.add_argument("--data-format", default="auto", choices=FORMATS,
                    help="the data folder's layout (default: %(default)s, detected)")
    ap.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD,
                    help="largest Hamming distance (of 256 bits) that counts as a near-duplicate (default: %(default)s)")
    ap.add_argument("--copies", type=int, default=0, metavar="N",
                    help="also make a published-style copy of N images (mirrored, rotated ±7°, rescaled, JPEG) "
                         "and measure how many the threshold finds (default: %(default)s, none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the copies (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (default: a summary for people)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from edge_runtime.errors import ImageReadError
    from edge_runtime.inputs import read_image
    from edge_runtime.preprocess import PreprocessSpec, resize_input
    from fracdata.data import DataError, load_data
    from fracdata.provenance import sha256_file

    try:
        ds = load_data(args.data, quiet=True, data_format=args.data_format)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = PreprocessSpec()
    records = ds.records + ds.unlabelled
    ids, hashes, digests, splits, skipped, pixels = [], [], [], [], [], []
    for r in records:
        try:
            px = read_image(r.path, spec).pixels
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        ids.append(r.image_id)
        hashes.append(image_hashes(resize_input(px, spec)))
        digests.append(sha256_file(r.path))
        splits.append(r.split)
        if len(pixels) < args.copies:
            pixels.append(px)
    h = np.stack(hashes) if hashes else np.zeros((0, 72, 4), np.uint64)
    has_splits = any(s is not None for s in splits)
    report = find_duplicates(ids, h, digests, splits if has_splits else None, args.threshold)
    report.update(data=str(ds.root), format=ds.format, skipped=skipped,
                  nearest_other_distance=_quantiles(nearest_distances(h)) if len(h) > 1 else {})
    if args.copies:
        rng = np.random.default_rng(args.seed)
        own, other = [], []
        for i, px in enumerate(pixels):
            c = image_hashes(resize_input(_copy_of(px, rng), spec))[None]
            d = symmetric_distances(c, h)[0]
            own.append(int(d[i]))
            d[i] = BITS
            other.append(int(d.min()))
        own_a, other_a = np.array(own), np.array(other)
        report["copies"] = {
            "n": len(own), "seed": args.seed,
            "what": "mirrored (p=0.5), rotated uniform ±7° (black corners), rescaled 0.8-1.2, JPEG quality 60-90",
            "distance_to_original": _quantiles(own_a), "distance_to_nearest_other_image": _quantiles(other_a),
            "found_at_threshold": float((own_a <= args.threshold).mean()),
            "mistaken_for_another_image": float((other_a <= args.threshold).mean()),
            "by_threshold": {str(t): {"copies_found": float((own_a <= t).mean()),
                                      "pairs_flagged_in_data": int(sum(1 for _ in near_pairs(h, t)))}
                             for t in (16, 24, 32, 40, 48, 56)},
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['images']} images ({ds.format}, {ds.root}); {report['exact_pairs']} exact and "
          f"{report['near_pairs']} near-duplicate pair(s) at Hamming <= {args.threshold}")
    if has_splits:
        print(f"across splits: {report['across_splits']}")
    for r in report["listed"][:20]:
        print(f"  {r['a']} ~ {r['b']}: {r['kind']}, distance {r['distance']}"
              + (f" ({r['splits'][0]} / {r['splits'][1]})" if has_splits else ""))
    if report["nearest_other_distance"]:
        q = report["nearest_other_distance"]
        print(f"distance to the nearest other image: min {q['p0']:.0f}, 5th pct {q['p5']:.0f}, median {q['p50']:.0f}")
    if args.copies:
        c = report["copies"]
        print(f"published-style copies of {c['n']} images: found {c['found_at_threshold']:.1%} at <= {args.threshold}; "
              f"distance to original median {c['distance_to_original']['p50']:.0f}, max {c['distance_to_original']['p100']:.0f}")
        for t, v in c["by_threshold"].items():
            print(f"  threshold {t:>2}: copies found {v['copies_found']:.1%}, pairs flagged in the data {v['pairs_flagged_in_data']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
