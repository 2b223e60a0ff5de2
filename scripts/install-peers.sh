#!/usr/bin/env bash
# Installs the third-party WebSocket peers that the interop tests (tests/interop.rs),
# the benchmark (bench/run.sh) and the soak (scripts/soak.sh) run beside wsbeat.
# Everything goes into the repo-local, git-ignored target/peers/ except nginx (apt).
# Idempotent: a peer already installed is left alone. Works as root on Debian 12.
#
#   scripts/install-peers.sh               # Python websockets, Node ws, nginx, openssl
#   scripts/install-peers.sh --websocat    # ... and websocat (cargo install, several minutes)
#   scripts/install-peers.sh --only-websocat
#
# Layout:
#   target/peers/venv/bin/python        Python with `websockets` and `prometheus_client`
#                                       (its text parser checks --metrics-file in the tests)
#   target/peers/node/node_modules/ws   Node `ws`
#   target/peers/websocat/bin/websocat  (optional)
#   nginx, openssl, node on PATH (Debian packages)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers="$repo/target/peers"
mkdir -p "$peers"

# Versions: majors pinned, so a new major never changes a benchmark silently.
PY_WEBSOCKETS_SPEC='websockets>=14,<18'
PY_PROMETHEUS_SPEC='prometheus_client>=0.17,<1'
NODE_WS_SPEC='ws@8'
WEBSOCAT_VERSION='1'

want_base=1 want_websocat=0
for arg in "$@"; do
  case "$arg" in
    --websocat) want_websocat=1 ;;
    --only-websocat) want_base=0 want_websocat=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install-peers.sh: unknown argument $arg" >&2; exit 64 ;;
  esac
done

log() { echo "install-peers: $*" >&2; }

# A caller that has just run apt-get update (.ci/run) says so, and it is not repeated.
apt_updated=${APT_UPDATED:-0}
apt_install() {
  # Installs Debian packages without starting their services (nginx would otherwise
  # grab port 80 through its init script); the benchmark starts its own nginx.
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "need root to apt-get install ${missing[*]}"; return 1
  fi
  if [ $apt_updated = 0 ]; then
    # A mirror mid-sync fails one index; the packages needed here are in the others.
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq \
      || log "warning: apt-get update reported errors; continuing with the indexes that loaded"
    apt_updated=1
  fi
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && made_policy=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { [ $made_policy = 1 ] && rm -f $policy; return 1; }
  [ $made_policy = 1 ] && rm -f $policy
  return 0
}

install_base() {
  # nginx (TLS-terminating reverse proxy), openssl CLI (test CA), ca-certificates.
  command -v nginx >/dev/null 2>&1 || apt_install nginx
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  command -v nginx >/dev/null || { log "nginx is still missing"; exit 1; }

  # Python websockets in a venv.
  if ! "$peers/venv/bin/python" -c 'import websockets.asyncio.server' >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt_install python3-venv
    fi
    rm -rf "$peers/venv"
    log "python venv + $PY_WEBSOCKETS_SPEC"
    python3 -m venv "$peers/venv"
    timeout 600 "$peers/venv/bin/python" -m pip install -q --disable-pip-version-check "$PY_WEBSOCKETS_SPEC"
  fi
  # Added later than the venv: a venv made before has websockets only.
  if ! "$peers/venv/bin/python" -c 'import prometheus_client.parser' >/dev/null 2>&1; then
    log "pip install $PY_PROMETHEUS_SPEC"
    timeout 600 "$peers/venv/bin/python" -m pip install -q --disable-pip-version-check "$PY_PROMETHEUS_SPEC"
  fi

  # Node ws.
  if [ ! -f "$peers/node/node_modules/ws/package.json" ]; then
    command -v node >/dev/null 2>&1 || apt_install nodejs
    command -v npm >/dev/null 2>&1 || apt_install npm
    mkdir -p "$peers/node"
    [ -f "$peers/node/package.json" ] || echo '{"name":"wsbeat-peers","private":true}' > "$peers/node/package.json"
    log "npm install $NODE_WS_SPEC"
    (cd "$peers/node" && timeout 600 npm install --silent --no-audit --no-fund "$NODE_WS_SPEC")
  fi
}

install_websocat() {
  if [ -x "$peers/websocat/bin/websocat" ]; then return 0; fi
  command -v cargo >/dev/null || { log "cargo is missing"; exit 1; }
  apt_install pkg-config libssl-dev || true
  log "cargo install websocat@$WEBSOCAT_VERSION (compiles for several minutes)"
  # Its own target dir, so it never locks or dirties the project's.
  CARGO_TARGET_DIR="$peers/websocat-build" timeout 3000 \
    cargo install --locked --quiet websocat --version "^$WEBSOCAT_VERSION" --root "$peers/websocat"
  rm -rf "$peers/websocat-build"
}

[ $want_base = 1 ] && install_base
[ $want_websocat = 1 ] && install_websocat

# Report what is there.
{
  echo "python: $("$peers/venv/bin/python" -c 'import websockets,sys; print(sys.version.split()[0], "websockets", websockets.__version__)' 2>/dev/null || echo missing)"
  echo "prometheus_client: $("$peers/venv/bin/python" -c 'from importlib.metadata import version; print(version("prometheus_client"))' 2>/dev/null || echo missing)"
  echo "node: $(node --version 2>/dev/null || echo missing) ws $(node -p "require('$peers/node/node_modules/ws/package.json').version" 2>/dev/null || echo missing)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///' || echo missing)"
  echo "openssl: $(openssl version 2>/dev/null || echo missing)"
  echo "websocat: $("$peers/websocat/bin/websocat" --version 2>/dev/null || echo 'not installed (optional: --websocat)')"
} | tee "$peers/versions.txt" >&2
