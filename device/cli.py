"""python -m device: what a clinic runs.

  demo              answer the phantom samples shipped in the package, in seconds: what the product does
  film PHOTO...     photos of film on a lightbox -> flattened radiograph, quality gate, prediction
  capture           take one photo with the Pi camera into the service's queue
  serve             the service: watched folders + captures -> results log + results page
  film-agreement    same answer from a photographed film as from the file? (simulated photos, every condition)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from edge_runtime.cli import (DISCLAIMER, EXIT_UNUSABLE, check_output_dir, exit_status, printable, run_command,
                              thread_count)
from edge_runtime.backends import BACKEND_CHOICES, BACKENDS
from edge_runtime.labels import SHORT, demonstration_notice, refusal_text
from edge_runtime.memlimit import DEFAULT_MB, ENV_VAR as MEMORY_ENV, allowance_mb, megabytes, memory_ceiling

from .simulate import CONDITIONS


WATCH_ENV = "FRACTURE_EDGE_WATCH"  # more watched folders, separated by ':' (the install script writes it)


def _film(args) -> int:
    from edge_runtime.predictor import Predictor, UniqueStems, internal_error_record

    from .triage import Triaged, triage_photo

    for problem in (check_output_dir(args.keep, "--keep"), check_output_dir(args.heatmap, "--heatmap")):
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_UNUSABLE
    predictor = Predictor(args.bundle, args.backend, None, args.threads)
    demo = predictor.bundle.demonstration_only
    if demo:
        print(demonstration_notice(predictor.bundle.manifest), file=sys.stderr)
    if predictor.spec.normalize == "none":  # views are an export choice (a fracture map ships one, measured)
        print("WARNING: this bundle predates film photos (no intensity normalisation): answers from photos may "
              "differ from the file's; re-export it with the current pipeline.", file=sys.stderr)
    records = []
    stems = UniqueStems()
    with memory_ceiling(allowance_mb(args.memory_mb)):  # as predict: a refusal, not the OOM killer
        for photo in args.photos:
            stem = stems.take(photo)
            heat = args.heatmap / f"{stem}_heatmap.jpg" if args.heatmap else None
            try:
                rec = triage_photo(predictor, photo, args.keep, heat, stem=stem)
            except Exception as exc:  # noqa: BLE001 - a bug on one photo must not lose the rest of the batch
                rec = internal_error_record(Triaged(file=str(photo), mode="film"), exc)
            records.append(rec)
            name = printable(str(photo))
            if args.json:
                print(json.dumps({**rec.to_dict(), "demonstration_only": demo}), flush=True)
            elif rec.error:
                print(f"{name}: ERROR {rec.error}")
            elif rec.retake:
                print(f"{name}: RETAKE — " + "; ".join(rec.quality["reasons"]))
            elif rec.out_of_scope:
                print(f"{name}: {SHORT[rec.decision]} — {refusal_text(rec.scope)}"
                      + (f"  [flattened: {rec.flattened}]" if rec.flattened else ""))
            else:
                notes = (rec.film or {}).get("notes", [])
                print(f"{name}: p={rec.probability:.3f} (threshold {rec.threshold:.3f}) {SHORT[rec.decision]}"
                      + (" [DEMONSTRATION MODEL]" if demo else "")
                      + (f"  [flattened: {rec.flattened}]" if rec.flattened else "")
                      + "".join(f"\n    note: {n}" for n in notes))
    if not args.json:
        print(DISCLAIMER, file=sys.stderr)
    return exit_status(records)


def _demo(args) -> int:
    import time

    from edge_runtime.labels import WORDING
    from edge_runtime.predictor import Predictor

    from . import demo

    problem = check_output_dir(args.out, "--out")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    t0 = time.perf_counter()
    try:
        demo.samples()
    except (OSError, ValueError) as exc:
        print(f"error: the shipped samples cannot be read ({exc}); reinstall the package", file=sys.stderr)
        return EXIT_UNUSABLE
    predictor = Predictor(args.bundle, args.backend, None, args.threads)
    bundle = predictor.bundle
    if not args.json:
        print(f"Samples shipped with the package (PHANTOMS, drawn by our generator, not patients), answered by the "
              f"bundle {bundle.model_name}" + (" (a DEMONSTRATION model, not for patients)" if bundle.demonstration_only
                                                else "") + ":\n")
    records = []
    for name, meta, rec in demo.run(predictor, args.out):
        records.append(rec)
        if args.json:
            print(json.dumps({"sample": name, "sample_is": meta, **rec.to_dict()}), flush=True)
            continue
        print(f"{name}\n  is:      {demo.describe(meta)}")
        if rec.error:
            print(f"  answer:  could not be read: {rec.error}")
        elif rec.retake_asked:
            print("  answer:  " + WORDING[rec.decision] + ": " + "; ".join(rec.quality["reasons"]))
        elif rec.out_of_scope:
            print("  answer:  " + WORDING[rec.decision] + ": " + refusal_text(rec.scope))
        else:
            print(f"  answer:  {WORDING[rec.decision]} (P(fractured) {rec.probability:.2f}, "
                  f"threshold {rec.threshold:.2f})")
        for label, path in (("heatmap", rec.heatmap), ("film", getattr(rec, "flattened", None))):
            if path:
                print(f"  {label + ':':9}{printable(path)}")
    if not args.json:
        print(f"\nOpen the pictures in {printable(str(args.out))}/ (done in {time.perf_counter() - t0:.1f} s). "
              "The colour shows where the model sees a fracture.\nYour own files: python -m edge_runtime predict "
              "--heatmap OUT FILE...; photos of film: python -m device film --heatmap OUT PHOTO...\n" + DISCLAIMER)
    return exit_status(records)


def _capture(args) -> int:
    from .camera import CameraUnavailable, open_camera
    from .service import Spool

    try:
        cam = open_camera(args.camera, args.files)
    except CameraUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        path = Spool(args.data).add_photo(cam.capture())
    finally:
        cam.close()
    print(path)
    return 0


def _serve(args) -> int:
    import logging
    import os

    from .service import Service, ServiceError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    watch = list(args.watch) + [Path(w) for w in os.environ.get(WATCH_ENV, "").split(os.pathsep) if w.strip()]
    outbox = None
    if args.refer_to:
        outbox = _outbox(args)
        if outbox is None:
            return EXIT_UNUSABLE
    try:
        service = Service(args.data, watch, args.bundle, backend=args.backend, threads=args.threads,
                          settle_s=args.settle, isolate=not args.in_process, reader_memory_mb=args.reader_memory_mb,
                          file_timeout_s=args.file_timeout, keep_days=args.keep_days,
                          max_store_gb=args.max_store_gb, outbox=outbox)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    sender = None
    if outbox is not None:
        from .outbox import Sender

        sender = Sender(outbox)
        sender.start()
    receiver = None
    if args.dicom_port is not None:
        receiver = _start_receiver(args)
        if receiver is None:
            service.close()
            return EXIT_UNUSABLE
    if args.once:
        if receiver is not None:
            receiver.stop()
        if sender is not None:
            sender.stop()
        try:
            n = service.run_once()
            if outbox is not None:
                outbox.run_once()  # one round of referrals: what is due and recorded goes now
        finally:
            service.close()
        print(f"processed {n} new file(s); log: {service.ledger.path}", file=sys.stderr)
        return 0
    page = None
    if not args.no_page:
        page = _serve_page(args, service)
        if page is None:
            return EXIT_UNUSABLE
    try:
        service.run_forever(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if receiver is not None:
            receiver.stop()
        if sender is not None:
            sender.stop()
        if page:
            page.shutdown()
        service.close()
    return 0


def _outbox(args):
    """The PACS outbox for serve --refer-to; None (the reason printed) if it cannot work."""
    import importlib.util

    from .outbox import Outbox, ReferralError, destination, read_credentials

    need = ["pydicom", "highdicom"] + (["dicomweb_client"] if "://" in args.refer_to else ["pynetdicom"])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: --refer-to needs {', '.join(missing)}; install the extra: pip install 'fracture-edge[dicomnet]'",
              file=sys.stderr)
        return None
    try:
        dest = destination(args.refer_to, read_credentials(args.refer_credentials), args.ae_title, args.refer_ca)
        outbox = Outbox(args.data / "outbox", dest, refer_all=args.refer_all)
    except ReferralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"error: the outbox in {args.data} cannot be made ({exc.strerror or exc})", file=sys.stderr)
        return None
    print(f"referring {'every answer' if args.refer_all else 'positive answers'} to {dest.describe()}",
          file=sys.stderr)
    return outbox


def _start_receiver(args):
    """The DICOM C-STORE receiver for serve --dicom-port; None (the reason printed) if it cannot run."""
    import importlib.util

    from .dicom_receiver import ReceiverConfig, ReceiverError, parse_allowed, start_receiver

    missing = [m for m in ("pynetdicom", "pydicom") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: --dicom-port needs {' and '.join(missing)}; install the extra: "
              "pip install 'fracture-edge[dicomnet]'", file=sys.stderr)
        return None
    from .service import MAX_FILE_BYTES, RESERVE_BYTES

    config = ReceiverConfig(port=args.dicom_port, ae_title=args.ae_title, host=args.dicom_host,
                            allowed=parse_allowed(args.dicom_allow), max_associations=args.dicom_max_associations,
                            max_bytes=MAX_FILE_BYTES, reserve_bytes=RESERVE_BYTES)
    try:
        receiver = start_receiver(args.data, config)
    except ReceiverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"error: the DICOM receiver's folders in {args.data} cannot be made ({exc.strerror or exc}); "
              "fix the data folder, or start without --dicom-port", file=sys.stderr)
        return None
    allowed = f"from {', '.join(config.allowed)}" if config.allowed else "from any AE title"
    print(f"DICOM receiver {config.ae_title} on {config.host}:{receiver.port} ({allowed})", file=sys.stderr)
    return receiver


def _serve_page(args, service):
    """Start the results page for `service` and say where it is and who can read it; None (the
    reason printed) when it cannot be served. It answers to --host as well as to the address it
    is bound to (start_page), so the access link printed, which names --host, works."""
    from .page import start_page

    token = _page_token(args)
    if token is False:
        service.close()
        return None
    tls = _page_tls(args) if args.https else None
    try:
        page = start_page(service.ledger, service.store, args.host, args.port,
                          status=lambda: _banners(service), bundle=lambda: service.bundle, tls=tls,
                          allowed_hosts=[*args.allowed_host, *args.tls_name], token=token)
    except OSError as exc:
        print(f"error: cannot serve the results page on {args.host}:{args.port} ({exc.strerror or exc}); "
              "another program uses the port? choose one with --port, or --no-page", file=sys.stderr)
        return None
    scheme = "https" if args.https else "http"
    print(f"results page on {scheme}://{_url_host(args.host)}:{page.server_address[1]}/, phone app at /app/",
          file=sys.stderr)
    _announce_access(args, scheme, page.server_address[1], token)
    return page


def _banners(service) -> list:
    """What the page shows above the results: the service's notes, and the outbox's state."""
    out = list(service.status.values())
    if service.outbox is not None:
        try:
            line = service.outbox.banner()
        except OSError as exc:
            line = f"Referrals: the outbox cannot be read ({exc.strerror or exc})"
        if line:
            out.append(line)
    return out


def _page_tls(args):
    """(ssl context, CA certificate) for serve --https: the device's own CA and a certificate for
    the names and addresses the CA may vouch for, with a warning for each it may not."""
    from .tls import (PERMITTED_DNS, ensure_certificates, fingerprint, has_lan_address, local_names,
                      outside_constraints, server_context)

    asked = [n for n in (args.host, *args.tls_name) if n not in ("", "0.0.0.0", "::")]
    for bad in outside_constraints(asked):
        print(f"warning: {bad} is not a local-network name or address (an address of a private network, or "
              f"a name under {', '.join('.' + d for d in PERMITTED_DNS)}): the device's CA may not vouch for "
              "it, so it is left out of the certificate", file=sys.stderr)
    names = [n for n in local_names(args.host, args.tls_name) if not outside_constraints([n])]
    if not has_lan_address(names):
        print("warning: no network address found on this device; phones can only reach it by a name given "
              "with --tls-name", file=sys.stderr)
    notes: list = []
    cert, key, ca = ensure_certificates(args.data / "tls", names, notes)
    for note in notes:
        print(f"WARNING: {note}", file=sys.stderr)
    context = server_context(cert, key)
    print(f"https for {', '.join(names)}; phones install the device's CA once from /ca.crt "
          f"(SHA-256 fingerprint {fingerprint(ca)})", file=sys.stderr)
    return context, ca


def _page_token(args):
    """The token the page asks of clients: None on loopback (unless --token), else --token or the
    one kept in DATA/page-token; False when --token is not a usable token."""
    from .page import is_loopback, load_token, valid_token

    if args.token is not None:
        if not valid_token(args.token):
            print("error: --token must be 16-128 letters, digits, '-' or '_'", file=sys.stderr)
            return False
        return args.token
    if args.no_token or is_loopback(args.host):
        return None
    token, note = load_token(args.data)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return token


def _url_host(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host


def _announce_access(args, scheme: str, port: int, token) -> None:
    """Say plainly who can read the results, and give the link with the token."""
    from .page import is_loopback

    if is_loopback(args.host):
        if token:
            print(f"access link: {scheme}://127.0.0.1:{port}/?token={token}", file=sys.stderr)
        return
    if args.host in ("", "0.0.0.0", "::"):
        import socket

        from .tls import interface_addresses
        hosts = [a for a in interface_addresses() if not a.startswith("127.")] or [f"{socket.gethostname()}.local"]
    else:
        hosts = [args.host]
    if token is None:
        print(f"WARNING: --no-token: the results page on {args.host}:{port} is readable by ANYONE on this network, "
              "with no password: patient results, file names and images. Use it only on a network where that is "
              "allowed; without --no-token a secret link is required.", file=sys.stderr)
        return
    print(f"WARNING: the results page listens on {args.host}:{port}: it is readable by anyone on this network who has "
          "the access link below (keep it like a password; it is also in "
          f"{args.data / 'page-token'} unless --token was given). Open on a phone or PC:", file=sys.stderr)
    for h in hosts:
        print(f"  {scheme}://{_url_host(h)}:{port}/?token={token}", file=sys.stderr)


def _agreement(args) -> int:
    from edge_runtime.predictor import Predictor

    from .agreement import collect, film_agreement, markdown, totals, write_outputs
    from .simulate import conditions

    files = collect(args.files, args.limit, args.every, args.split, args.part)
    if not files:
        print("error: no image files found", file=sys.stderr)
        return 2
    try:
        chosen = conditions(args.conditions.split(","))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor = Predictor(args.bundle, args.backend, None, args.threads, gradcam=False)
    rows: list = []
    res = film_agreement(predictor, files, chosen, args.seed, progress=not args.json, log_rows=rows)
    meta = {"files": len(files), "sources": [str(p) for p in args.files], "seed": args.seed,
            "split": str(args.split) if args.split else None, "part": args.part if args.split else None, "bundle": str(predictor.bundle.path),
            "model": predictor.bundle.model_name, "demonstration_only": predictor.bundle.demonstration_only,
            "artifact": predictor.artifact, "backend": predictor.backend, "command": "python -m device " + " ".join(args.argv)}
    if args.out:
        write_outputs(args.out, res, rows, meta, args.title or f"{len(files)} radiographs, seed {args.seed}")
    if args.json:
        print(json.dumps({"meta": meta, "totals": totals(res), "conditions": res}, indent=2))
    else:
        print(markdown(res, args.title or f"{len(files)} radiographs, seed {args.seed}"))
        if args.out:
            print(f"written: {args.out}/agreement.json, agreement.md, photos.csv", file=sys.stderr)
    return 0


def _update(args) -> int:
    from .update import UpdateError, install, rollback

    try:
        if args.rollback:
            res = rollback(args.root)
        else:
            if args.source is None:
                print("error: give a bundle folder or .zip, or --rollback", file=sys.stderr)
                return EXIT_UNUSABLE
            res = install(args.source, args.root, self_test=not args.skip_self_test, backend=args.backend,
                          allow_older=args.allow_older)
    except UpdateError as exc:
        print(f"error: {exc}; the current bundle is unchanged", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps(res, indent=2))
    elif not res["switched"]:
        print(f"already current: {res['current']}")
    else:
        st = res.get("self_test") or {}
        print(f"now current: {res['current']}" + (f" (self-test passed on {st['artifact']}, max |dp| "
                                                   f"{st['max_abs_diff']:.1e})" if st.get("passed") else "")
              + (f"\nprevious: {args.root / res['previous']} (python -m device update --rollback)" if res["previous"] else ""))
    return 0


def _fetch_runtime(args) -> int:
    from .webapp import VENDOR_FILES, webapp_root
    from .webapp_runtime import RuntimeFetchError, fetch_runtime

    try:
        res = fetch_runtime(webapp_root(), VENDOR_FILES, source=args.source, registry=args.registry,
                            force=args.force)
    except RuntimeFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps(res))
    elif res["changed"]:
        print(f"the phone app's runtime (onnxruntime-web {res['version']}, integrity checked) is in {res['vendor']}; "
              "a running service serves /app/ now")
    else:
        print(f"already in place: onnxruntime-web {res['version']} in {res['vendor']} (every file checked"
              + ("; the file given was not needed: --force replaces the runtime from it" if args.source else "") + ")")
    return 0


def _webapp(args) -> int:
    from edge_runtime.bundle import load_bundle

    from edge_runtime.signature import SignatureError

    from .webapp import WebAppError, build_site, write_site

    if args.fetch_runtime:
        return _fetch_runtime(args)
    if args.source or args.registry or args.force:
        print("error: --from, --registry and --force go with --fetch-runtime", file=sys.stderr)
        return 2
    try:
        site = build_site(load_bundle(args.bundle), args.trusted_key)
        out = write_site(site, args.out, overwrite=args.overwrite)
    except (WebAppError, SignatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    info = {"out": str(out), "version": site.version, "artifact": site.artifact, "files": len(site.files),
            "bytes": site.size(compressed=False), "bytes_gzip": site.size(compressed=True)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"web app written to {out}: {info['files']} files, {info['bytes'] / 1e6:.1f} MB "
              f"({info['bytes_gzip'] / 1e6:.1f} MB as gzip), model {site.artifact}, version {site.version}\n"
              "serve it over https (or from `python -m device serve` at /app/); see docs/webapp.md")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device", description=__doc__.splitlines()[0], epilog=DISCLAIMER)
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", type=Path, help="bundle folder (default: $FRACTURE_EDGE_BUNDLE, else the reference bundle)")
    common.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="interpreter (default: %(default)s, the first installed of " + ", ".join(BACKENDS) + ")")
    common.add_argument("--threads", type=thread_count, help="interpreter threads, 1-64")
    d = sub.add_parser("demo", parents=[common], help="answer the phantom samples shipped in the package (seconds)",
                       description="Answer the samples shipped in the package (phantom radiographs with and without "
                                   "a fracture, and a photo of a film on a lightbox) with the default bundle, writing "
                                   "the overlays to one folder: what the product does, in seconds.")
    d.add_argument("--out", type=Path, default=Path("fracture-edge-demo"),
                   help="where the overlays go (default: %(default)s)")
    d.add_argument("--json", action="store_true", help="one JSON object per sample")
    d.set_defaults(func=_demo)
    f = sub.add_parser("film", parents=[common], help="predict from photos of film on a lightbox")
    f.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photos of films on a lightbox (JPEG, PNG, ...)")
    f.add_argument("--keep", type=Path, default=Path("runs/film"), help="where flattened radiographs go (default: %(default)s)")
    f.add_argument("--heatmap", type=Path, metavar="OUT_DIR", help="write an overlay per photo here: where the model sees a fracture")
    f.add_argument("--json", action="store_true", help="one JSON object per photo")
    f.add_argument("--memory-mb", type=megabytes, default=None,
                   help=f"address space the photos may take beyond the loaded model; past it a photo is refused "
                        f"(default: ${MEMORY_ENV}, else {DEFAULT_MB}; 0: no ceiling)")
    f.set_defaults(func=_film)
    c = sub.add_parser("capture", help="take a photo with the camera into the service's queue")
    c.add_argument("--data", type=Path, default=Path("/var/lib/fracture-edge"), help="service data folder (default: %(default)s)")
    c.add_argument("--camera", default="pi", choices=("pi", "file"), help="pi (picamera2) or file (for testing) (default: %(default)s)")
    c.add_argument("--files", nargs="*", type=Path, default=[], help="photo files for --camera file")
    c.set_defaults(func=_capture)
    s = sub.add_parser("serve", parents=[common], help="the service: queue, results log, results page")
    s.add_argument("--data", type=Path, default=Path("/var/lib/fracture-edge"), help="data folder: queue, store, log (default: %(default)s)")
    s.add_argument("--watch", type=Path, action="append", default=[],
                   help="a folder a CR reader exports into (repeatable; also $FRACTURE_EDGE_WATCH, ':'-separated); "
                        "sub-folders are watched too, 4 deep")
    s.add_argument("--once", action="store_true", help="process what is waiting, then exit")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between folder scans (default: %(default)s)")
    s.add_argument("--settle", type=float, default=2.0, help="ignore files changed within this many seconds: still being written (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="results page address; 0.0.0.0 or the LAN address lets phones on the "
                                                       "local network see it (default: %(default)s, this device only)")
    s.add_argument("--port", type=int, default=8080, help="results page port (default: %(default)s)")
    s.add_argument("--no-page", action="store_true", help="do not serve the results page")
    s.add_argument("--https", action="store_true",
                   help="serve the page and the phone app over HTTPS with a certificate from the device's own CA "
                        "(made once in DATA/tls); phones need it for the app's offline copy and camera")
    s.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                   help="another name or address phones use for this device, put in its certificate (repeatable; "
                        "default: its hostname, hostname.local and every interface's address)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another name the page may be opened by (a DNS name or address the clinic uses for this "
                        "device; repeatable). It always answers to loopback, its --host, its host name, host "
                        "name.local, its addresses and any --tls-name; other names are refused (DNS rebinding)")
    s.add_argument("--token", metavar="TOKEN",
                   help="the access token the page asks for (16-128 letters, digits, - or _); default when --host is "
                        "not loopback: one made once and kept in DATA/page-token (mode 0600). Shown as a link on "
                        "the console; given once, a browser keeps it as a cookie")
    s.add_argument("--no-token", action="store_true",
                   help="let anyone on the network read the results page without a token (not recommended)")
    s.add_argument("--reader-memory-mb", type=int, default=512,
                   help="memory the image reader process may take beyond its model (default: %(default)s)")
    s.add_argument("--file-timeout", type=float, default=120.0,
                   help="seconds one image may take before the reader is restarted (default: %(default)s)")
    s.add_argument("--keep-days", type=float, help="delete stored images older than this (results are kept)")
    s.add_argument("--max-store-gb", type=float, help="delete the oldest stored images beyond this size (results are kept)")
    s.add_argument("--in-process", action="store_true",
                   help="read images in the service's own process (no memory limit; for debugging)")
    s.add_argument("--dicom-port", type=int, metavar="N",
                   help="also receive images over DICOM (C-STORE, C-ECHO) on this port, e.g. 11112, from a CR reader "
                        "or digitiser: they join the same queue (docs/device.md, 'Receiving over DICOM') "
                        "(default: off; needs the dicomnet extra)")
    s.add_argument("--ae-title", default="FRACTURE_EDGE",
                   help="this device's DICOM AE title, as the reader's destination names it (default: %(default)s)")
    s.add_argument("--dicom-host", default="0.0.0.0",
                   help="address the DICOM receiver listens on (default: %(default)s, every interface)")
    s.add_argument("--dicom-allow", action="append", default=[], metavar="AE",
                   help="accept associations only from these calling AE titles (repeatable or comma-separated; "
                        "default: any; set it on any network a stranger can reach)")
    s.add_argument("--dicom-max-associations", type=int, default=4,
                   help="associations at once; more are rejected and the reader tries again (default: %(default)s)")
    s.add_argument("--refer-to", metavar="DEST",
                   help="send each positive answer's study to the district PACS: a DICOMweb STOW-RS URL "
                        "(https://pacs/dicom-web) or a DICOM node AE@host:port; the original, an overlay image and "
                        "a structured report, in the original's study; kept on disk until sent (default: off)")
    s.add_argument("--refer-all", action="store_true",
                   help="with --refer-to: refer every answer, not only positives (default: positives only)")
    s.add_argument("--refer-credentials", type=Path, metavar="FILE",
                   help="with a DICOMweb --refer-to: a JSON file readable by the service user only, "
                        '{"username": ..., "password": ...} or {"token": ...}')
    s.add_argument("--refer-ca", type=Path, metavar="PEM",
                   help="with a DICOMweb --refer-to: the CA certificate(s) that sign the PACS's (default: the system's)")
    s.set_defaults(func=_serve)
    a = sub.add_parser("film-agreement", parents=[common], help="photo vs file: same answer? (simulated photos, every condition)",
                       description="Photograph each radiograph in every condition (simulated), read the photo as a clinic "
                                   "would, and compare with the file's own answer. Conditions: " + ", ".join(CONDITIONS))
    a.add_argument("files", nargs="+", type=Path, metavar="FILE_OR_DIR", help="radiograph files or folders (e.g. a test split)")
    a.add_argument("--conditions", default=",".join(CONDITIONS), help="comma list (default: all)")
    a.add_argument("--split", type=Path, help="a split.csv: use only one part's images (FILE_OR_DIR is then the data folder)")
    a.add_argument("--part", default="test", choices=("train", "val", "test"), help="which part of --split (default: %(default)s)")
    a.add_argument("--limit", type=int, default=0, help="at most this many files (default: all)")
    a.add_argument("--every", type=int, default=1, help="take every n-th file (default: 1)")
    a.add_argument("--seed", type=int, default=1000, help="scene seed (default: %(default)s; thresholds were tuned on seeds below 100)")
    a.add_argument("--out", type=Path, help="write agreement.json, agreement.md and photos.csv here")
    a.add_argument("--title", help="table title")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")
    a.set_defaults(func=_agreement)
    u = sub.add_parser("update", help="install a new bundle (folder or .zip), verified and self-tested, or roll back",
                       description="Install a bundle beside the current one, verify it (checksums, manifest, signature "
                                   "where a trusted key is configured, self-test on this device) and switch atomically; "
                                   "the replaced bundle is kept for --rollback.")
    u.add_argument("source", nargs="?", type=Path, metavar="BUNDLE_DIR_OR_ZIP",
                   help="the new bundle: a folder or a .zip (omit with --rollback)")
    u.add_argument("--root", type=Path, default=Path("/opt/fracture-edge"),
                   help="install prefix holding bundle -> bundles/<id> (default: %(default)s)")
    u.add_argument("--rollback", action="store_true", help="go back to the previous bundle")
    u.add_argument("--skip-self-test", action="store_true", help="do not check the new bundle's answers on this device "
                                                                 "(not recommended)")
    u.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="interpreter the self-test uses (default: %(default)s, what predict would use)")
    u.add_argument("--allow-older", action="store_true", help="install a bundle exported before the current one")
    u.add_argument("--json", action="store_true", help="print the outcome as JSON")
    u.set_defaults(func=_update)
    w = sub.add_parser("webapp", help="build the offline phone web app (a static site) for a bundle",
                       description="Build a self-contained static site that runs the bundle in a phone's browser, offline "
                                   "after the first load (service worker), installable to the home screen. `serve` also "
                                   "serves it at /app/.")
    w.add_argument("--bundle", type=Path, help="bundle folder (default: $FRACTURE_EDGE_BUNDLE, else the reference bundle)")
    w.add_argument("--out", type=Path, default=Path("runs/webapp"), help="output folder (default: %(default)s)")
    w.add_argument("--trusted-key", type=Path, help="Ed25519 public key (PEM): the app then refuses unsigned bundles "
                                                    "(default: the device's configured key, if any)")
    w.add_argument("--overwrite", action="store_true", help="replace a non-empty folder that is not an earlier build")
    w.add_argument("--fetch-runtime", action="store_true",
                   help="put the app's WASM runtime in place without Node: the onnxruntime-web tarball pinned in "
                        "webapp/package-lock.json, from the npm registry, checked against the lock's sha512, "
                        "then stop (a clinic install does this once)")
    w.add_argument("--from", dest="source", type=Path, metavar="FILE.tgz|DIR",
                   help="with --fetch-runtime: read the tarball from this file, or from the folder holding it under "
                        "its registry name (offline, e.g. a USB stick)")
    w.add_argument("--registry", metavar="URL", help="with --fetch-runtime: an npm registry mirror "
                                                     "(default: $NPM_CONFIG_REGISTRY, else registry.npmjs.org)")
    w.add_argument("--force", action="store_true", help="with --fetch-runtime: replace the runtime even if it checks out")
    w.add_argument("--json", action="store_true", help="print what was written as JSON")
    w.set_defaults(func=_webapp)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(args)
