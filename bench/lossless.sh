#!/usr/bin/env bash
# Lines lost per silent drop (issue 19): wsbeat and the peers, each in a network
# namespace pair where nftables silently drops the client's TCP flow 20 times (no FIN,
# no RST), at 100 numbered lines/s on stdin; the server counts what arrived. See
# bench/lossless.py for the method and docs/benchmarks.md for the table.
#
#   bench/lossless.sh                                # builds wsbeat --release; about 2 minutes
#   bench/lossless.sh before=/tmp/wsbeat.old after=target/release/wsbeat
#   bench/lossless.sh /path/to/wsbeat --drops 5      # extra arguments go to bench/lossless.py
#
# Every argument of the form [LABEL=]PATH naming an executable is a wsbeat binary to
# measure (several: before and after a change); the others are passed on. Needs root,
# iproute2, nftables and the peers of scripts/install-peers.sh (websocat if installed).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

[ "$(id -u)" = 0 ] || { echo "lossless.sh: needs root (network namespaces)" >&2; exit 1; }
for p in ip nft; do
  command -v $p >/dev/null || { echo "lossless.sh: $p is not installed" >&2; exit 1; }
done
binaries=() rest=()
for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) rest+=("$a") ;;
    *) if [ -x "${a#*=}" ] && [ -f "${a#*=}" ]; then binaries+=(--wsbeat "$a"); else rest+=("$a"); fi ;;
  esac
done
if [ ${#binaries[@]} -eq 0 ]; then
  cargo build --release --quiet --bin wsbeat
  binaries=(--wsbeat "wsbeat $(git rev-parse --short HEAD)=${CARGO_TARGET_DIR:-$repo/target}/release/wsbeat")
fi
scripts/install-peers.sh >/dev/null 2>&1 || scripts/install-peers.sh
exec python3 bench/lossless.py "${binaries[@]}" "${rest[@]}"
