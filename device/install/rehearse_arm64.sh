#!/usr/bin/env bash
# Install rehearsal on arm64: a clinic install (device/install/install.sh) run inside an emulated
# Debian bookworm arm64 system on an ordinary x86_64 machine, then its answers compared with the host's.
#
#   device/install/rehearse_arm64.sh [--work DIR] [--offline] [--stages LIST] [--fresh] ...
#
# Not part of CI (about ten minutes on two cores). Needs root for debootstrap's first stage,
# apt-get and dpkg-deb, and network access to a Debian mirror and PyPI. Nothing machine-wide is changed:
# qemu-user-static, proot and debootstrap are fetched with `apt-get download` and unpacked under the
# work folder, proot runs each arm64 program through qemu-aarch64 itself (-q), so no binfmt handler
# is registered, no kernel module loaded, nothing mounted. See docs/install-rehearsal.md.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=/var/tmp/rehearsal
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
HOST_PY="$SRC/.venv/bin/python"
N_IMAGES=12
BACKEND=auto
NICE=19
OFFLINE=0
FRESH=0
STAGES=tools,bootstrap,second,copy,install,predict
PREFIX=/opt/fracture-edge  # install.sh's default
APT_PKGS=python3-venv,python3-pip,ca-certificates
CA_DIR=/usr/local/share/ca-certificates
CPU=cortex-a72  # the Raspberry Pi 4's core

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --work DIR          work folder, outside the repository (default: $WORK); the rootfs is DIR/rootfs
  --mirror URL        Debian mirror (default: $MIRROR)
  --host-python PY    host interpreter for the reference images and answers (default: $HOST_PY)
  --images N          reference images (default: $N_IMAGES)
  --backend NAME      predict --backend, on both sides (default: $BACKEND)
  --offline           download the aarch64 wheels on the host and install with install.sh --wheels
                      (the offline path of docs/device.md) instead of pip inside the emulated system
  --stages LIST       comma-separated subset of: $STAGES (default: all; each skips what is done)
  --fresh             delete DIR/rootfs (and the recorded timings) first and build it again
  --nice N            niceness of every step (default: $NICE)
  --cpu MODEL         CPU qemu emulates (QEMU_CPU; default: $CPU, a Raspberry Pi 4's; "max": all features)
  --ca-dir DIR        extra CA certificates (*.crt) to trust inside, e.g. a TLS proxy's on the way to
                      PyPI (default: the host's $CA_DIR; '' for none)
  -h, --help          this text

Stages:
  tools      apt-get download qemu-user-static, proot, debootstrap (+libtalloc2); dpkg-deb -x into DIR/tools
  bootstrap  debootstrap --foreign --arch=arm64 --variant=minbase --include=$APT_PKGS (host side)
  second     debootstrap --second-stage inside the rootfs, under proot -q qemu-aarch64-static
  copy       the working tree (tracked and untracked, not ignored files) into rootfs /root/fracture-edge
  install    install.sh --target generic --no-systemd inside (apt step checks python3-venv/pip are there)
  predict    reference images made on the host, predicted inside with $PREFIX/venv and
             $PREFIX/bundle, and on the host with --host-python and the same bundle files;
             the bundle self-test run again inside; DIR/report.md and DIR/results.json written
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --work) WORK=$2; shift 2 ;;
        --mirror) MIRROR=$2; shift 2 ;;
        --host-python) HOST_PY=$2; shift 2 ;;
        --images) N_IMAGES=$2; shift 2 ;;
        --backend) BACKEND=$2; shift 2 ;;
        --offline) OFFLINE=1; shift ;;
        --stages) STAGES=$2; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        --nice) NICE=$2; shift 2 ;;
        --ca-dir) CA_DIR=$2; shift 2 ;;
        --cpu) CPU=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "error: $*" >&2; exit 1; }
IFS=, read -r -a _stages <<< "$STAGES"
for st in "${_stages[@]}"; do
    case "$st" in tools|bootstrap|second|copy|install|predict) ;; *) echo "unknown stage: $st" >&2; exit 2 ;; esac
done
want() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK/" in "$SRC"/*) die "--work must be outside the repository ($SRC): the rootfs is never committed" ;; esac
[ "$(uname -m)" = x86_64 ] || echo "warning: written for an x86_64 host (this is $(uname -m))" >&2
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap's first stage extracts packages with their owners"
for tool in apt-get dpkg-deb tar; do command -v "$tool" >/dev/null || die "$tool is missing"; done
[ -x "$HOST_PY" ] || die "host python not found: $HOST_PY (--host-python)"

TOOLS=$WORK/tools
ROOTFS=$WORK/rootfs
LOGS=$WORK/logs
TIMES=$WORK/timings.tsv
mkdir -p "$TOOLS/debs" "$LOGS" "$WORK/tmp"
NICE_CMD=(nice -n "$NICE")
QEMU=$TOOLS/root/usr/bin/qemu-aarch64-static
PROOT=$TOOLS/root/usr/bin/proot
export PROOT_TMP_DIR=$WORK/tmp
export LD_LIBRARY_PATH=$TOOLS/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

exec 3>&1  # the terminal, for timed's note while a step's own output goes to a file
# timed NAME CMD...: run, log the seconds to timings.tsv (also on failure)
timed() {
    local name=$1 t0 rc=0
    shift
    t0=$(date +%s)
    "$@" || rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$rc" "$(date -u +%FT%TZ)" >> "$TIMES"
    echo "   ($name: $(( $(date +%s) - t0 )) s, exit $rc)" >&3
    return "$rc"
}

# A Raspberry Pi 4's CPU as LiteRT's cpuinfo (XNNPACK) sees it: the host's /proc/cpuinfo and /sys
# describe x86 cores, and with them Interpreter() segfaults inside; with no /sys at all cpuinfo gives
# up ("Error in cpuinfo") and LiteRT runs without XNNPACK, unlike a device. qemu emulates $CPU.
FAKE=$WORK/fake-cpu
mkdir -p "$FAKE/sys-cpu"
for f in possible present online; do echo 0-3 > "$FAKE/sys-cpu/$f"; done
for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n' "$i"
    printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
done > "$FAKE/cpuinfo"

# inside CMD...: run CMD in the arm64 rootfs under proot + qemu-aarch64, as a fake root, in a clean
# environment (the host's PIP_* settings and the like do not leak into the "device").
EXTRA_BINDS=()
inside() {
    "${NICE_CMD[@]}" "$PROOT" -0 -q "$QEMU" -r "$ROOTFS" \
        -b /dev -b /proc -b /etc/resolv.conf -b "$FAKE/cpuinfo:/proc/cpuinfo" -b "$FAKE/sys-cpu:/sys/devices/system/cpu" \
        "${EXTRA_BINDS[@]+"${EXTRA_BINDS[@]}"}" -w /tmp \
        /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$CPU" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

if [ "$FRESH" -eq 1 ] && [ -e "$ROOTFS" ]; then
    step "--fresh: removing $ROOTFS"
    rm -rf "$ROOTFS"
    rm -f "$TIMES"
fi

if want tools; then
    step "tools: qemu-user-static, proot, debootstrap (apt-get download + dpkg-deb -x; nothing installed)"
    if [ -x "$QEMU" ] && [ -x "$PROOT" ] && [ -x "$TOOLS/root/usr/sbin/debootstrap" ]; then
        echo "  (already unpacked in $TOOLS/root)"
    else
        fetch() { (cd "$TOOLS/debs" && apt-get download -o APT::Sandbox::User=root qemu-user-static proot debootstrap libtalloc2); }
        fetch_all() { fetch || { echo "  apt-get download failed; apt-get update and again"; apt-get update -q && fetch; }; }
        timed tools fetch_all
        for deb in "$TOOLS"/debs/*.deb; do dpkg-deb -x "$deb" "$TOOLS/root"; done
    fi
    "$QEMU" --version | head -n 1
    echo "proot $("$PROOT" --version | grep -m1 -oE '[0-9]+\.[0-9]+\.[0-9]+' || echo '(version unknown)')"
fi
[ -x "$QEMU" ] && [ -x "$PROOT" ] || die "tools missing in $TOOLS/root: run with --stages tools first"
export DEBOOTSTRAP_DIR=$TOOLS/root/usr/share/debootstrap

if want bootstrap; then
    step "bootstrap: debootstrap --foreign (first stage, on the host: downloads and unpacks)"
    if [ -e "$ROOTFS/debootstrap/debootstrap" ] || [ -e "$ROOTFS/etc/.rehearsal-second-stage-done" ]; then
        echo "  (already done: $ROOTFS)"
    else
        timed bootstrap "${NICE_CMD[@]}" "$TOOLS/root/usr/sbin/debootstrap" --arch=arm64 --foreign \
            --variant=minbase --include="$APT_PKGS" "$SUITE" "$ROOTFS" "$MIRROR" > "$LOGS/bootstrap.log" 2>&1 \
            || { tail -n 20 "$LOGS/bootstrap.log" >&2; die "first stage failed, see $LOGS/bootstrap.log"; }
        tail -n 2 "$LOGS/bootstrap.log"
    fi
fi

if want second; then
    step "second: debootstrap --second-stage inside (emulated arm64: slow)"
    if [ -e "$ROOTFS/etc/.rehearsal-second-stage-done" ]; then
        echo "  (already done)"
    else
        [ -e "$ROOTFS/debootstrap/debootstrap" ] || die "no first stage in $ROOTFS"
        # The first stage leaves /proc a symlink; make it a folder so proot can bind the host's
        # (debootstrap then sees a populated /proc and does not try to mount one).
        if [ -L "$ROOTFS/proc" ]; then rm -f "$ROOTFS/proc"; mkdir "$ROOTFS/proc"; fi
        # DEBOOTSTRAP_DIR given: under proot -q, access(X_OK) is false for a script (it still runs), so
        # debootstrap's own `[ -x /debootstrap/debootstrap ]` would look in /usr/share/debootstrap.
        timed second inside /usr/bin/env DEBOOTSTRAP_DIR=/debootstrap /bin/sh /debootstrap/debootstrap --second-stage \
            > "$LOGS/second.log" 2>&1 \
            || { tail -n 30 "$LOGS/second.log" >&2; die "second stage failed, see $LOGS/second.log (and $ROOTFS/debootstrap/debootstrap.log)"; }
        tail -n 2 "$LOGS/second.log"
        touch "$ROOTFS/etc/.rehearsal-second-stage-done"
    fi
    # shellcheck disable=SC2016  # expanded inside, by the arm64 shell
    inside /bin/sh -c 'echo "  inside: $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME"), $(python3 --version)"'
fi

if want copy; then
    step "copy: the working tree into $ROOTFS/root/fracture-edge"
    # A copy, not a bind mount: pip's build writes build/ and *.egg-info next to the sources.
    rm -rf "$ROOTFS/root/fracture-edge"
    mkdir -p "$ROOTFS/root/fracture-edge"
    if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$SRC" ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [ -f "$SRC/$f" ] && printf '%s\0' "$f"; done \
            | tar -C "$SRC" --null -T - -cf - | tar -C "$ROOTFS/root/fracture-edge" -xf -
        git -C "$SRC" rev-parse HEAD > "$WORK/source-commit.txt"
        git -C "$SRC" status --porcelain > "$WORK/source-status.txt"
    else
        tar -C "$SRC" --exclude=.git --exclude='.venv*' --exclude=build -cf - . | tar -C "$ROOTFS/root/fracture-edge" -xf -
    fi
    du -sh "$ROOTFS/root/fracture-edge" | sed 's/^/  /'
fi

if want install; then
    step "install: device/install/install.sh --target generic --no-systemd, inside"
    [ -x "$ROOTFS/root/fracture-edge/device/install/install.sh" ] || die "no copy of the repository in the rootfs (stage copy)"
    # Locally added CAs of the host (e.g. a TLS-inspecting proxy on the way to PyPI) are trusted inside
    # too, as a device on that network would need; Debian's own bundle is left as it is otherwise.
    if [ -n "$CA_DIR" ] && compgen -G "$CA_DIR/*.crt" >/dev/null; then
        if ! diff -rq "$CA_DIR" "$ROOTFS/usr/local/share/ca-certificates" >/dev/null 2>&1; then
            cp "$CA_DIR"/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
            timed ca_certificates inside /usr/sbin/update-ca-certificates > "$LOGS/ca.log" 2>&1 \
                || { cat "$LOGS/ca.log" >&2; die "update-ca-certificates failed inside"; }
        fi
        echo "  trusted inside, from $CA_DIR: $(cd "$CA_DIR" && echo ./*.crt)"
    fi
    INSTALL_ARGS=(--target generic --no-systemd)
    if [ "$OFFLINE" -eq 1 ]; then
        # The offline recipe of docs/device.md, for the rootfs's platform (aarch64, its python3's version).
        pyver=$(inside /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        rm -rf "$WORK/wheels" "$ROOTFS/root/wheels"
        mkdir -p "$WORK/wheels"
        # ai-edge-litert >= 2 publishes manylinux_2_27 wheels only; pip does not widen --platform.
        host_wheels() {
            "$HOST_PY" -m pip wheel --quiet --no-deps -w "$WORK/wheels" "$ROOTFS/root/fracture-edge" \
            && "$HOST_PY" -m pip download --quiet -d "$WORK/wheels" --only-binary=:all: \
                --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 --python-version "$pyver" \
                numpy Pillow ai-edge-litert pydicom cryptography
        }
        timed wheels host_wheels > "$LOGS/wheels.log" 2>&1 || { tail -n 20 "$LOGS/wheels.log" >&2; die "wheel download failed"; }
        cp -r "$WORK/wheels" "$ROOTFS/root/wheels"
        rm -rf "$ROOTFS/root/fracture-edge/build"
        INSTALL_ARGS+=(--wheels /root/wheels)
    fi
    echo "  log: $LOGS/install.log"
    timed install inside /bin/bash /root/fracture-edge/device/install/install.sh "${INSTALL_ARGS[@]}" \
        > "$LOGS/install.log" 2>&1 || { tail -n 40 "$LOGS/install.log" >&2; die "install.sh failed inside, see $LOGS/install.log"; }
    grep -E '^== |self-test|now current|already current|^done' "$LOGS/install.log" | sed 's/^/  /'
fi

if want predict; then
    step "predict: $N_IMAGES reference images, arm64 (emulated) against the x86_64 host"
    [ -x "$ROOTFS$PREFIX/venv/bin/python" ] || die "nothing installed in $ROOTFS$PREFIX (stage install)"
    IMG=$WORK/images
    rm -rf "$IMG"
    "$HOST_PY" -c "from fracdata.phantom import generate_phantom_dataset as g; g('$IMG', n_images=$N_IMAGES, seed=3, progress=False)"
    # Bound at the same path inside: proot 5.1.0 does not translate faccessat2, which qemu's glibc
    # calls for every access(), so os.access(image, R_OK) (edge_runtime/filecheck.py) is answered
    # for the HOST path (and a relative one against proot's real cwd, not the emulated one); a file
    # that exists only in the rootfs reads as "permission denied". Hence the same path, and absolute.
    EXTRA_BINDS=(-b "$IMG")
    # The host answers with the very files installed inside ($PREFIX/bundle is a symlink there).
    link=$(readlink "$ROOTFS$PREFIX/bundle" || true)
    case "$link" in
        "") BUNDLE_HOST=$ROOTFS$PREFIX/bundle ;;
        /*) BUNDLE_HOST=$ROOTFS$link ;;
        *) BUNDLE_HOST=$ROOTFS$PREFIX/$link ;;
    esac
    host_predict() {
        (cd "$WORK" && "${NICE_CMD[@]}" "$HOST_PY" -m edge_runtime predict --json --backend "$BACKEND" \
            --bundle "$BUNDLE_HOST" images/images/*/*.jpg)
    }
    # exit status 1: an input refused (e.g. outside what the model reads), compared below like the rest
    timed predict_host host_predict > "$WORK/host.jsonl" 2> "$LOGS/predict_host.err" \
        || [ $? -eq 1 ] || { cat "$LOGS/predict_host.err" >&2; die "host predict failed"; }
    # cwd: the images folder, so python -m imports the installed package, not a source folder.
    timed predict_arm64 inside /bin/sh -c "cd '$IMG' && $PREFIX/venv/bin/python -m edge_runtime predict \
        --json --backend $BACKEND --bundle $PREFIX/bundle '$IMG'/images/*/*.jpg" > "$WORK/arm64.jsonl" 2> "$LOGS/predict_arm64.err" \
        || [ $? -eq 1 ] || { cat "$LOGS/predict_arm64.err" >&2; die "predict inside failed"; }
    # The bundle's self-test again (install ran it through `python -m device update`), and versions.
    timed selftest inside "$PREFIX/venv/bin/python" -c "
import json, platform, sys
from importlib import metadata
from edge_runtime.bundle import load_bundle
from edge_runtime import selftest
r = selftest.run(load_bundle('$PREFIX/bundle'), '$BACKEND')
r = {k: v for k, v in r.items() if k not in ('expected', 'got')}
v = {'machine': platform.machine(), 'python': platform.python_version()}
for d in ('numpy', 'Pillow', 'ai-edge-litert', 'pydicom', 'cryptography', 'fracture-edge'):
    try:
        v[d] = metadata.version(d)
    except metadata.PackageNotFoundError:
        v[d] = None
print(json.dumps({'self_test': r, 'versions': v}))
" > "$WORK/inside.json" 2> "$LOGS/selftest.err" || { cat "$LOGS/selftest.err" >&2; die "self-test inside failed to run"; }
    "$HOST_PY" - "$WORK" "$N_IMAGES" "$LOGS" "$CPU" <<'PY'
import json, platform, sys
from importlib import metadata
from pathlib import Path

work, n, logs, cpu = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
install_log = logs / "install.log"
xnn = lambda f: "XNNPACK" if (logs / f).exists() and "XNNPACK delegate" in (logs / f).read_text() else "no XNNPACK"
rel = lambda f: "/".join(f.split("/")[-2:])  # Fractured/IMG...jpg on both sides
host = {rel(r["file"]): r for r in map(json.loads, (work / "host.jsonl").read_text().splitlines())}
arm = {rel(r["file"]): r for r in map(json.loads, (work / "arm64.jsonl").read_text().splitlines())}
inside = json.loads((work / "inside.json").read_text())
assert sorted(host) == sorted(arm) and len(host) == n, (len(host), len(arm), n)
rows, worst, same = [], 0.0, 0
for k in sorted(host):
    h, a = host[k], arm[k]
    # an answer is its probability, or for an input the out-of-scope gate refused, its score
    ans = lambda r: r["probability"] if r.get("probability") is not None else r["scope"]["score"]  # noqa: E731
    d = abs(ans(h) - ans(a))
    worst = max(worst, d)
    same += h["decision"] == a["decision"]
    rows.append((k, ans(h), ans(a), d, h["decision"], a["decision"]))
st = inside["self_test"]
log = install_log.read_text() if install_log.exists() else ""
at_install = ("passed" if "self-test passed" in log else
              "not run (bundle already current)" if "already current" in log else "not reported")
timings = {}
for line in (work / "timings.tsv").read_text().splitlines():
    name, secs, rc, _ = line.split("\t")
    timings[name] = {"seconds": int(secs), "exit": int(rc)}  # the latest run of each stage
hv = {"machine": platform.machine(), "python": platform.python_version()}
for d in ("numpy", "Pillow", "ai-edge-litert"):
    try:
        hv[d] = metadata.version(d)
    except metadata.PackageNotFoundError:
        hv[d] = None
first = rows[0][0]
res = {"images": n, "max_abs_dp": worst, "same_decision": same, "backend_host": host[first]["backend"],
       "artifact_host": host[first]["artifact"], "backend_arm64": arm[first]["backend"],
       "artifact_arm64": arm[first]["artifact"], "xnnpack_host": xnn("predict_host.err"),
       "xnnpack_arm64": xnn("predict_arm64.err"), "qemu_cpu": cpu, "self_test_at_install": at_install,
       "self_test_inside": st, "versions_arm64": inside["versions"], "versions_host": hv, "timings": timings}
(work / "results.json").write_text(json.dumps(res, indent=2) + "\n")
stt = ("passed" if st.get("passed") else "FAILED" if st.get("passed") is False else "none recorded")
md = [f"# Install rehearsal on arm64 (emulated)\n",
      f"| | |\n|---|---|",
      f"| images | {n} (phantoms, seed 3, 180x150) |",
      f"| max abs dp, arm64 vs x86_64 | {worst:.2e} |",
      f"| same decision | {same}/{n} |",
      f"| backend / artifact (host, arm64) | {res['backend_host']}/{res['artifact_host']} ({res['xnnpack_host']}), "
      f"{res['backend_arm64']}/{res['artifact_arm64']} ({res['xnnpack_arm64']}, qemu -cpu {cpu}) |",
      f"| self-test at install (python -m device update) | {at_install} |",
      f"| self-test inside, again | {stt}, max abs dp {st.get('max_abs_diff', float('nan')):.1e} (tolerance {st.get('tolerance')}) |",
      "| versions inside | " + ", ".join(f"{k} {v}" for k, v in inside["versions"].items()) + " |",
      "| versions host | " + ", ".join(f"{k} {v}" for k, v in hv.items()) + " |",
      "\n| stage | seconds | exit |\n|---|---|---|"]
md += [f"| {k} | {v['seconds']} | {v['exit']} |" for k, v in timings.items()]
md += ["\n| image | p x86_64 | p arm64 | abs dp | decision x86_64 | decision arm64 |\n|---|---|---|---|---|---|"]
md += [f"| {k} | {h:.6f} | {a:.6f} | {d:.1e} | {dh} | {da} |" for k, h, a, d, dh, da in rows]
(work / "report.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
    echo
    echo "written: $WORK/report.md, $WORK/results.json (logs: $LOGS)"
fi
