#!/usr/bin/env bash
# Data-path throughput, one command: builds wsbeat (release) and the benchmark's server
# (examples/wsflood.rs), runs bench/throughput.py and prints the table; JSON goes to
# target/bench/throughput.json. See docs/benchmarks.md, "Throughput".
#
#   bench/throughput.sh               # 100k messages per trial, 3 repetitions (a few minutes)
#   bench/throughput.sh --quick       # 20k messages, 1 repetition, for development
#   WSBEAT=/path/to/wsbeat bench/throughput.sh   # benchmark a given binary, no wsbeat build
#   WSBEAT=none bench/throughput.sh   # peers only
#   WSFLOOD=/path/to/wsflood ...      # a given server binary, no example build
#
# The peers are those of bench/run.sh, when installed (scripts/install-peers.sh, and
# --websocat for websocat); a missing one is skipped with a note. Any argument is passed
# to bench/throughput.py (e.g. --skip python,node --count 50000 --reps 5 --sizes 64).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

target="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${WSBEAT:-}" ]; then
  cargo build --release --quiet --bin wsbeat
  WSBEAT="$target/release/wsbeat"
fi
if [ -z "${WSFLOOD:-}" ]; then
  cargo build --release --quiet --example wsflood
  WSFLOOD="$target/release/examples/wsflood"
fi
for b in "$WSBEAT" "$WSFLOOD"; do
  [ "$b" = none ] || [ -x "$b" ] || { echo "throughput.sh: $b is not an executable" >&2; exit 64; }
done
mkdir -p target/bench
# Same treatment as bench/run.sh: every process at the same raised priority (as root).
prio=()
[ "$(id -u)" = 0 ] && prio=(nice -n -10)
exec timeout 1800 "${prio[@]}" python3 bench/throughput.py --wsbeat "$WSBEAT" --wsflood "$WSFLOOD" \
  --out "$repo/target/bench/throughput.json" "$@"
