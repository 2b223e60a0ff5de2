#!/usr/bin/env bash
# One command: builds wsbeat (release, stripped), makes sure the peers are installed,
# runs the benchmark and prints the table; JSON goes to target/bench/results.json.
#
#   bench/run.sh              # full run, about 2.5 minutes
#   bench/run.sh --quick      # short windows, for development (about 65 s)
#   bench/run.sh --websocat   # also install websocat first (cargo install, minutes)
#   WSBEAT=/path/to/wsbeat bench/run.sh   # benchmark a given binary, no build
#   (WSBEAT_NOTLS=/path/to/ws-only-wsbeat adds the no-TLS column then; without
#   WSBEAT it is built here with --no-default-features into target/bench-notls;
#   likewise WSBEAT_STATIC, built here against the system's libssl.a/libcrypto.a
#   into target/bench-static when libssl-dev ships them)
#
# Any other argument is passed to bench/bench.py (e.g. --skip websocat).
# The data-path throughput benchmark is separate: bench/throughput.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

pass=()
install_args=()
for a in "$@"; do
  case "$a" in
    --websocat) install_args+=(--websocat) ;;
    *) pass+=("$a") ;;
  esac
done

# Peers (idempotent, quick when already there).
scripts/install-peers.sh "${install_args[@]}" 2>/dev/null >/dev/null || scripts/install-peers.sh "${install_args[@]}"

if [ -z "${WSBEAT:-}" ]; then
  cargo build --release --quiet --bin wsbeat
  WSBEAT="${CARGO_TARGET_DIR:-$repo/target}/release/wsbeat"
  # The ws://-only build (no OpenSSL linked), in its own target dir so the two builds
  # do not invalidate each other; it joins the ws:// idle measurements only.
  if [ -z "${WSBEAT_NOTLS:-}" ]; then
    CARGO_TARGET_DIR="$repo/target/bench-notls" cargo build --release --quiet --no-default-features --bin wsbeat
    WSBEAT_NOTLS="$repo/target/bench-notls/release/wsbeat"
  fi
  # The same code linked with static OpenSSL: shows what loading the shared libssl and
  # libcrypto costs in RSS (the default build's ws:// figure) against binary size.
  libdir="$(pkg-config --variable=libdir openssl 2>/dev/null || true)"
  if [ -z "${WSBEAT_STATIC:-}" ] && [ -n "$libdir" ] && [ -f "$libdir/libcrypto.a" ]; then
    OPENSSL_STATIC=1 OPENSSL_LIB_DIR="$libdir" \
      OPENSSL_INCLUDE_DIR="$(pkg-config --variable=includedir openssl)" \
      CARGO_TARGET_DIR="$repo/target/bench-static" cargo build --release --quiet --bin wsbeat
    WSBEAT_STATIC="$repo/target/bench-static/release/wsbeat"
  fi
fi
mkdir -p target/bench
# Every client and the harness run at the same raised priority (as root), so noise from
# other work on the machine weighs less on the latency tails; the treatment is equal.
prio=()
[ "$(id -u)" = 0 ] && prio=(nice -n -10)
exec timeout 600 "${prio[@]}" python3 bench/bench.py --wsbeat "$WSBEAT" --wsbeat-notls "${WSBEAT_NOTLS:-none}" --wsbeat-static "${WSBEAT_STATIC:-none}" --out "$repo/target/bench/results.json" "${pass[@]}"
