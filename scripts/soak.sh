#!/usr/bin/env bash
# Soak: 1000 forced reconnect cycles (server close, RST, blackhole, handshake failure)
# against the real wsbeat binary; checks zero fd and thread growth and RSS growth
# < 256 KiB between the baseline (after 40 warm-up cycles) and the end.
# Needs only python3 (standard library); about 2 minutes on 2 cores.
#
#   scripts/soak.sh                     # builds the release binary first
#   WSBEAT=target/debug/wsbeat scripts/soak.sh --cycles 200
#
# Arguments go to bench/soak.py (--cycles N, --warmup N, --ping-interval-ms, ...).
# Results: target/soak/results.json, wsbeat's log: target/soak/wsbeat.log.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [ -z "${WSBEAT:-}" ]; then
  cargo build --release --quiet --bin wsbeat
  WSBEAT="${CARGO_TARGET_DIR:-$repo/target}/release/wsbeat"
fi
mkdir -p target/soak
exec timeout 900 python3 bench/soak.py --wsbeat "$WSBEAT" --out "$repo/target/soak/results.json" "$@"
