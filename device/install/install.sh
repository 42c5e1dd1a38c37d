#!/usr/bin/env bash
# Install the fracture screening aid on a clinic device: Raspberry Pi OS (Bookworm, Python 3.11,
# with the Pi camera through picamera2) or a generic aarch64 Linux board (files only).
#
#   sudo device/install/install.sh [--target pi|generic] [--wheels DIR] [--watch DIR]... [--dry-run]
#
# Idempotent: every step checks first and only changes what differs, so running it again after
# an update is safe. --dry-run prints every step and changes nothing. Offline: carry the wheels on
# a USB stick (see docs/device.md, "Install on a clinic device") and pass --wheels DIR.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=auto
PREFIX=/opt/fracture-edge
DATA=/var/lib/fracture-edge
ETC=/etc/default
UNIT_DIR=/etc/systemd/system
SERVICE_USER=fracture
BUNDLE="$SRC/models/reference-bundle"
WHEELS=""
HOST=127.0.0.1
PORT=8080
WATCH=()
TRUSTED_KEY=""
KEY_DIR=/etc/fracture-edge  # where the runtime looks for trusted_key.pub even without the env file
DRY_RUN=0
SKIP_APT=0
NO_SYSTEMD=0

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --target pi|generic   pi: apt's python3-picamera2, venv with --system-site-packages (default: detected)
  --prefix DIR          program folder (default: $PREFIX)
  --data DIR            queue, results log and stored images (default: $DATA)
  --bundle DIR          model bundle to install (default: $BUNDLE)
  --wheels DIR          install offline from these wheels (pip --no-index)
  --trusted-key FILE    Ed25519 public key (python -m export.signing keygen): only bundles signed with it load
                        (installed as $KEY_DIR/trusted_key.pub, which every command on the device honours)
  --watch DIR           a folder a CR reader exports into (repeatable)
  --host ADDR           results page address (default: $HOST, this device only; the LAN address opens it to phones)
  --port N              results page port (default: $PORT)
  --user NAME           service user (default: $SERVICE_USER)
  --skip-apt            do not touch system packages
  --no-systemd          do not install or start the service unit
  --dry-run             print every step, change nothing
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --target) TARGET=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --bundle) BUNDLE=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        --trusted-key) TRUSTED_KEY=$2; shift 2 ;;
        --key-dir) KEY_DIR=$2; shift 2 ;;
        --watch) WATCH+=("$2"); shift 2 ;;
        --host) HOST=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --user) SERVICE_USER=$2; shift 2 ;;
        --etc) ETC=$2; shift 2 ;;
        --unit-dir) UNIT_DIR=$2; shift 2 ;;
        --skip-apt) SKIP_APT=1; shift ;;
        --no-systemd) NO_SYSTEMD=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

step() { echo "== $*"; }
run() {
    echo "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}
already() { echo "  (already done: $*)"; }

if [ "$TARGET" = auto ]; then
    if grep -qs "Raspberry Pi" /proc/device-tree/model; then TARGET=pi; else TARGET=generic; fi
fi
case "$TARGET" in pi|generic) ;; *) echo "--target must be pi or generic" >&2; exit 2 ;; esac
# The interpreters ship wheels for 64-bit ARM and x86 only: 32-bit Raspberry Pi OS cannot run them.
MACHINE=${FRACTURE_EDGE_MACHINE:-$(uname -m)}
case "$MACHINE" in
    aarch64|arm64|x86_64) ;;
    armv7l|armv6l|armhf)
        echo "this is a 32-bit ARM system ($MACHINE): the model interpreters (LiteRT, onnxruntime) publish no" >&2
        echo "wheels for it. Install the 64-bit Raspberry Pi OS (Bookworm, arm64) on a Pi 3, 4 or 5, or use" >&2
        echo "any aarch64 or x86_64 Linux board, then run this script again." >&2
        exit 2 ;;
    *) echo "warning: untested machine type '$MACHINE' (tested: aarch64, x86_64)" >&2 ;;
esac
if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ] && [ "$NO_SYSTEMD" -eq 0 ]; then
    echo "run as root (sudo), or use --dry-run / --no-systemd --skip-apt for a user install" >&2
    exit 1
fi
echo "installing for target '$TARGET' from $SRC into $PREFIX (data: $DATA)$([ "$DRY_RUN" -eq 1 ] && echo ', DRY RUN')"

step "1. system packages"
APT_PKGS=(python3-venv python3-pip)
if [ "$TARGET" = pi ]; then APT_PKGS+=(python3-picamera2); fi
if [ "$SKIP_APT" -eq 1 ]; then
    already "skipped by --skip-apt"
else
    missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        already "${APT_PKGS[*]}"
    elif [ -n "$WHEELS" ]; then
        echo "offline install, but these apt packages are missing: ${missing[*]}" >&2
        echo "install them from the Raspberry Pi OS image or carry their .deb files (see docs/device.md)" >&2
        [ "$DRY_RUN" -eq 1 ] || exit 1
    else
        run apt-get update
        run apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

step "2. service user"
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    already "user $SERVICE_USER exists"
else
    run useradd --system --home-dir "$DATA" --shell /usr/sbin/nologin "$SERVICE_USER"
fi
if [ "$TARGET" = pi ]; then
    if id -nG "$SERVICE_USER" 2>/dev/null | grep -qw video; then already "$SERVICE_USER in group video"
    else run usermod -a -G video "$SERVICE_USER"; fi
fi

step "3. virtual environment"
VENV_ARGS=()
if [ "$TARGET" = pi ]; then VENV_ARGS+=(--system-site-packages); fi  # picamera2 comes from apt
if [ -x "$PREFIX/venv/bin/python" ]; then
    already "$PREFIX/venv"
else
    run mkdir -p "$PREFIX"
    run python3 -m venv "${VENV_ARGS[@]}" "$PREFIX/venv"
fi

step "4. the software (edge runtime, device, DICOM support)"
PIP=("$PREFIX/venv/bin/python" -m pip install --quiet --upgrade)
if [ -n "$WHEELS" ]; then
    # Offline: our own wheel and every dependency's come from the USB stick.
    run "${PIP[@]}" --no-index --find-links "$WHEELS" "fracture-edge[edge,device,dicom]"
else
    run "${PIP[@]}" "${SRC}[edge,device,dicom]"
fi

step "5. the phone app's runtime (onnxruntime-web, checked against the sha512 its lock file pins)"
# Already there when the wheel was built after `npm run vendor`; else fetched from the npm registry
# (no Node needed), or read from onnxruntime-web-<version>.tgz carried beside the wheels offline.
RUNTIME=("$PREFIX/venv/bin/python" -m device webapp --fetch-runtime)
if [ -n "$WHEELS" ]; then
    # The folder: the command reads the tarball of the version the lock pins from it, by name.
    if compgen -G "$WHEELS/onnxruntime-web-*.tgz" >/dev/null; then RUNTIME+=(--from "$WHEELS"); fi
fi
if ! run "${RUNTIME[@]}"; then
    echo "warning: the phone app (/app/) will not be served until its runtime is in place; once the device is" >&2
    echo "online, or with onnxruntime-web-<version>.tgz from the npm registry in DIR, run (as root):" >&2
    echo "  $(printf '%q ' "$PREFIX/venv/bin/python") -m device webapp --fetch-runtime [--from DIR]" >&2
fi

step "6. the model bundle"
TRUST_ENV=()
if [ -n "$TRUSTED_KEY" ]; then
    run mkdir -p "$KEY_DIR"
    run install -m 0644 "$TRUSTED_KEY" "$KEY_DIR/trusted_key.pub"
    TRUST_ENV=(env "FRACTURE_EDGE_TRUSTED_KEY=$KEY_DIR/trusted_key.pub")
fi
# Verified, self-tested on this device, and switched atomically; a rerun with the same bundle does
# nothing, a new one keeps the old as bundle.previous (python -m device update --rollback).
run "${TRUST_ENV[@]+"${TRUST_ENV[@]}"}" "$PREFIX/venv/bin/python" -m device update "$BUNDLE" --root "$PREFIX"

step "7. data folder"
run mkdir -p "$DATA/inbox/film" "$DATA/inbox/files" "$DATA/store"
if [ "$NO_SYSTEMD" -eq 0 ]; then run chown -R "$SERVICE_USER" "$DATA"; fi

step "8. configuration ($ETC/fracture-edge.env)"
# systemd EnvironmentFile values, double-quoted: a path with spaces ("/mnt/CR Export") stays one
# value. Watched folders are joined with ':' and split by the service itself ($FRACTURE_EDGE_WATCH).
quote() { local v=${1//\\/\\\\}; printf '"%s"' "${v//\"/\\\"}"; }
WATCH_JOINED=""
for w in "${WATCH[@]+"${WATCH[@]}"}"; do
    case "$w" in *:*) echo "--watch $w: a ':' cannot be used in a watched folder's path" >&2; exit 2 ;; esac
    WATCH_JOINED="${WATCH_JOINED:+$WATCH_JOINED:}$w"
done
ENV_TEXT="FRACTURE_EDGE_BUNDLE=$(quote "$PREFIX/bundle")
FRACTURE_EDGE_DATA=$(quote "$DATA")
FRACTURE_EDGE_HOST=$(quote "$HOST")
FRACTURE_EDGE_PORT=$(quote "$PORT")
FRACTURE_EDGE_WATCH=$(quote "$WATCH_JOINED")${TRUSTED_KEY:+
FRACTURE_EDGE_TRUSTED_KEY=$(quote "$KEY_DIR/trusted_key.pub")}"
if [ "$DRY_RUN" -eq 0 ] && [ -f "$ETC/fracture-edge.env" ] && [ "$(cat "$ETC/fracture-edge.env")" = "$ENV_TEXT" ]; then
    already "configuration unchanged"
else
    echo "+ write $ETC/fracture-edge.env:"
    while IFS= read -r line; do echo "    $line"; done <<< "$ENV_TEXT"
    if [ "$DRY_RUN" -eq 0 ]; then mkdir -p "$ETC" && printf '%s\n' "$ENV_TEXT" > "$ETC/fracture-edge.env"; fi
fi

step "9. systemd unit"
if [ "$NO_SYSTEMD" -eq 1 ]; then
    already "skipped by --no-systemd; start by hand: $PREFIX/venv/bin/python -m device serve --data $DATA"
else
    UNIT_TEXT=$(sed -e "s|@USER@|$SERVICE_USER|g" -e "s|@ETC@|$ETC|g" -e "s|@PREFIX@|$PREFIX|g" \
        "$SRC/device/install/fracture-edge.service")
    if [ "$DRY_RUN" -eq 0 ] && [ -f "$UNIT_DIR/fracture-edge.service" ] && [ "$(cat "$UNIT_DIR/fracture-edge.service")" = "$UNIT_TEXT" ]; then
        already "unit unchanged"
    else
        echo "+ write $UNIT_DIR/fracture-edge.service:"
        while IFS= read -r line; do echo "    $line"; done <<< "$UNIT_TEXT"
        if [ "$DRY_RUN" -eq 0 ]; then printf '%s\n' "$UNIT_TEXT" > "$UNIT_DIR/fracture-edge.service"; fi
        run systemctl daemon-reload
    fi
    run systemctl enable fracture-edge.service
    run systemctl restart fracture-edge.service
fi

echo "done. Results page: http://$HOST:$PORT/ ; take a photo: $PREFIX/venv/bin/python -m device capture --data $DATA"
case "$HOST" in
    127.*|localhost|::1) ;;
    *) echo "The page is on the network, so it asks for a token: open the link 'serve' prints (journalctl -u fracture-edge), or read the token with: sudo cat $DATA/page-token" ;;
esac
