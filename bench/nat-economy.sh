#!/usr/bin/env bash
# Bytes per idle day behind a real kernel NAT (issue 13): wsbeat with a fixed 20 s
# heartbeat, wsbeat `--ping-interval auto` behind NATs that forget idle flows after
# T = 120 s and T = 600 s, and the peers' defaults (Python websockets' 20 s ping, the
# Node ws README pattern at 30 s, websocat without a heartbeat).
#
#   bench/nat-economy.sh                # about 9 minutes
#   bench/nat-economy.sh --quick        # shorter warm-up and window (about 5 minutes)
#   WSBEAT=/path/to/wsbeat bench/nat-economy.sh   # no build
#
# Needs root (network namespaces), iproute2, nftables, and the peers of
# scripts/install-peers.sh (websocat is used if installed there).
#
# Each client gets a rig of its own, three namespaces: device — router — server. The
# router masquerades (nftables), its conntrack forgets an established flow after T
# without a segment (`nf_conntrack_tcp_timeout_established`, per namespace) and with
# `nf_conntrack_tcp_loose=0` drops the device's next segment as invalid: a carrier NAT.
# Its nftables counters count every TCP/IP packet the device sends into the router
# (prerouting, before any drop: a metered link bills those too) and every one the
# router delivers to the device (postrouting), headers included. The server sends
# nothing of its own (bench/nat_server.py); it answers Pings.
#
# Time is scaled down by SCALE (10): every duration of the real setting is divided by
# it — heartbeats (20 s → 2 s), NAT timeouts (120 s → 12 s), `auto`'s default bounds
# (15 s..5 m → 1.5 s..30 s), pong timeouts (10 s → 1 s), the peers' intervals — so a
# scaled second stands for SCALE real ones and the packet pattern (which bytes per
# heartbeat, how many heartbeats per idle gap) is the real one. The clients first run
# WARMUP scaled seconds (auto learns; 180 s = the SPEC's 30 minutes), then the router's
# counters and the server's connection count are read over WINDOW scaled seconds and
# scaled to a real day: per day = window value × 86400 / (WINDOW × SCALE). Not scaled:
# TCP's own timers (delayed ACK, retransmission), which change no byte count here, and
# auto's re-probe after 12 hours of real time (at most one lost connection per 6 hours),
# which the window cannot see: its cost is added as a bound from the measured cost of
# one lost connection. At the end the server sends `probe` on every connection it
# holds: a client that prints it still had a working path.
#
# Restarts (issue 20): two more rigs behind T = 120 s run `auto` and are restarted
# (SIGTERM, start again) an hour of real time (HOUR = 360 scaled s) before the end,
# one without `--state-dir`, one with it. Their table: bytes and lost connections in
# that first hour after the restart (without the restart's own close and connect,
# the same for both), against the settled rate of the auto-120 s rig's window.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

SCALE=10
WARMUP=${WARMUP:-180}
WINDOW=${WINDOW:-300}
for a in "$@"; do
  case "$a" in
    --quick) WARMUP=${WARMUP_QUICK:-120} WINDOW=${WINDOW_QUICK:-150} ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "nat-economy.sh: unknown argument $a" >&2; exit 64 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "nat-economy.sh: needs root (network namespaces)" >&2; exit 1; }
for p in ip nft timeout; do
  command -v $p >/dev/null || { echo "nat-economy.sh: $p is not installed" >&2; exit 1; }
done
scripts/install-peers.sh >/dev/null 2>&1 || scripts/install-peers.sh
peers="$repo/target/peers"
python="$peers/venv/bin/python"
websocat="$peers/websocat/bin/websocat"
if [ -z "${WSBEAT:-}" ]; then
  cargo build --release --quiet --bin wsbeat
  WSBEAT="${CARGO_TARGET_DIR:-$repo/target}/release/wsbeat"
fi

out="$repo/target/bench"
work="$out/nat-economy.$$"
mkdir -p "$work"
prefix="wsbeat-b$$"
ct=/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established
host_ct="$(cat $ct 2>/dev/null || echo none)"

pids=()
rigs=()
cleanup() {
  local pid ns
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ ${#pids[@]} -gt 0 ] && sleep 1
  for ns in "${rigs[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  exec 9>&- 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every client's and server's stdin: a FIFO this script holds open, so no peer sees EOF
# (websocat would close) until the script ends.
mkfifo "$work/stdin"
exec 9<>"$work/stdin"

DEV=10.231.1.1 GW=10.231.1.254 OUT=10.231.2.254 SRV=10.231.2.2 PORT=8080

# rig NAME T_SECONDS: the three namespaces and the router's rules.
rig() {
  local n="$prefix-$1" t="$2"
  local dev="$n-dev" rtr="$n-rtr" srv="$n-srv"
  for ns in "$dev" "$rtr" "$srv"; do
    ip netns add "$ns"; rigs+=("$ns")
    ip -n "$ns" link set lo up
  done
  ip -n "$dev" link add veth0 type veth peer name veth1 netns "$rtr"
  ip -n "$rtr" link add veth2 type veth peer name veth3 netns "$srv"
  ip -n "$dev" addr add $DEV/24 dev veth0
  ip -n "$rtr" addr add $GW/24 dev veth1
  ip -n "$rtr" addr add $OUT/24 dev veth2
  ip -n "$srv" addr add $SRV/24 dev veth3
  ip -n "$dev" link set veth0 up; ip -n "$rtr" link set veth1 up
  ip -n "$rtr" link set veth2 up; ip -n "$srv" link set veth3 up
  ip -n "$dev" route add default via $GW
  ip netns exec "$rtr" nft -f - <<EOF
table ip wsbeat_nat {
	counter up { }
	counter down { }
	chain count_in {
		type filter hook prerouting priority raw; policy accept;
		iifname "veth1" ip protocol tcp counter name "up"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state invalid counter drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "veth2" masquerade
	}
	chain count_out {
		type filter hook postrouting priority 300; policy accept;
		oifname "veth1" ip protocol tcp counter name "down"
	}
}
EOF
  ip netns exec "$rtr" sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward; \
    echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose; echo $t > $ct"
  [ "$(ip netns exec "$rtr" cat $ct)" = "$t" ] || { echo "could not set T in $rtr" >&2; exit 1; }
  if [ "$(cat $ct 2>/dev/null || echo none)" != "$host_ct" ]; then
    echo "$host_ct" > $ct
    echo "nf_conntrack_tcp_timeout_established is not per namespace here (restored the host's)" >&2
    exit 1
  fi
  timeout $((WARMUP + WINDOW + 120)) ip netns exec "$srv" "$python" bench/nat_server.py $SRV $PORT \
    <&9 >"$work/$1.server" 2>&1 &
  pids+=($!); disown
}

# counter RIG NAME → "packets bytes"
counter() {
  ip netns exec "$prefix-$1-rtr" nft list counter ip wsbeat_nat "$2" \
    | awk '/packets/ { for (i = 1; i <= NF; i++) { if ($i == "packets") p = $(i+1); if ($i == "bytes") b = $(i+1) } } END { print p + 0, b + 0 }'
}
upgrades() { grep -c ' upgrade ' "$work/$1.server" 2>/dev/null || true; }

# client RIG COMMAND...: runs in the rig's device namespace.
client() {
  local n="$1"; shift
  timeout $((WARMUP + WINDOW + 60)) ip netns exec "$prefix-$n-dev" "$@" <&9 >"$work/$n.out" 2>"$work/$n.err" &
  pids+=($!); disown
}

names=() labels=() ts=()
add() { names+=("$1"); labels+=("$2"); ts+=("$3"); }
add fixed20   "wsbeat --ping-interval 20s"            120
add auto120   "wsbeat --ping-interval auto"           120
add auto600   "wsbeat --ping-interval auto"           600
add restart   "wsbeat --ping-interval auto, restarted"                  120
add restartsd "wsbeat --ping-interval auto --state-dir, restarted"      120
add python20  "Python websockets (default 20 s ping)" 120
add node30    "Node ws, README pattern at 30 s"       120
if [ -x "$websocat" ]; then add websocat "websocat (default: no ping)" 120; fi

echo "building ${#names[@]} rigs (device — NAT router — server), time scaled 1/$SCALE" >&2
for i in "${!names[@]}"; do rig "${names[$i]}" $((ts[$i] / SCALE)); done
# The servers listen once the whole path answers.
for n in "${names[@]}"; do
  for _ in $(seq 100); do
    grep -q listening "$work/$n.server" 2>/dev/null && break
    sleep 0.1
  done
  grep -q listening "$work/$n.server" || { echo "server of $n did not start" >&2; cat "$work/$n.server" >&2; exit 1; }
done

url="ws://$SRV:$PORT/"
wsb=(--pong-timeout 1s --backoff-initial 100ms --backoff-max 6s)
declare -A client_pid
for n in "${names[@]}"; do
  case $n in
    restart) client $n env RUST_LOG=info "$WSBEAT" --ping-interval auto:1.5s..30s "${wsb[@]}" --status-file "$work/$n.status" "$url" ;;
    restartsd) client $n env RUST_LOG=info "$WSBEAT" --ping-interval auto:1.5s..30s "${wsb[@]}" --status-file "$work/$n.status" --state-dir "$work/$n.state" "$url" ;;
    fixed20) client $n env RUST_LOG=info "$WSBEAT" --ping-interval 2s "${wsb[@]}" --status-file "$work/$n.status" "$url" ;;
    auto*) client $n env RUST_LOG=info "$WSBEAT" --ping-interval auto:1.5s..30s "${wsb[@]}" --status-file "$work/$n.status" "$url" ;;
    python20) client $n "$python" bench/peers/py_client.py "$url" --ping-interval 2 --ping-timeout 2 ;;
    node30) client $n env NODE_PATH="$peers/node/node_modules" node bench/peers/node_client.js "$url" \
      --ping-interval 3000 --pong-timeout 3000 --reconnect-delay 100 ;;
    websocat) client $n "$websocat" "$url" ;;
  esac
  client_pid[$n]=${pids[-1]}
done
t0=$(date +%s.%N)
# sleep_until SECONDS: until SECONDS (scaled) after the clients started.
sleep_until() { sleep "$(awk -v t0="$t0" -v t="$1" -v now="$(date +%s.%N)" 'BEGIN { d = t0 + t - now; print (d > 0 ? d : 0) }')"; }
HOUR=$((3600 / SCALE))
RESTART_AT=$((WARMUP + WINDOW - HOUR))
[ "$RESTART_AT" -ge 60 ] || RESTART_AT=60
AFTER=$((WARMUP + WINDOW - RESTART_AT))
# restart_rigs: SIGTERM the restart rigs' clients (timeout passes it on), start them again
# with the same arguments, and read their counters once the new connection is up (before
# its first heartbeat: 1.5 s at the earliest).
declare -A ra0 rb0 rc0 rconnect
restart_rigs() {
  local n u
  declare -A before
  for n in restart restartsd; do
    before[$n]=$(upgrades $n)
    read -r _ a <<<"$(counter $n up)"; read -r _ b <<<"$(counter $n down)"; rconnect[$n]=$((a + b))
    kill -TERM "${client_pid[$n]}" 2>/dev/null || true
  done
  for n in restart restartsd; do
    for _ in $(seq 50); do kill -0 "${client_pid[$n]}" 2>/dev/null || break; sleep 0.02; done
    mv "$work/$n.err" "$work/$n.before-restart.err"
    case $n in
      restart) client $n env RUST_LOG=info "$WSBEAT" --ping-interval auto:1.5s..30s "${wsb[@]}" --status-file "$work/$n.status" "$url" ;;
      restartsd) client $n env RUST_LOG=info "$WSBEAT" --ping-interval auto:1.5s..30s "${wsb[@]}" --status-file "$work/$n.status" --state-dir "$work/$n.state" "$url" ;;
    esac
    client_pid[$n]=${pids[-1]}
  done
  for n in restart restartsd; do
    for _ in $(seq 100); do [ "$(upgrades $n)" -gt "${before[$n]}" ] && break; sleep 0.01; done
    ra0[$n]="$(counter $n up)"; rb0[$n]="$(counter $n down)"; rc0[$n]="$(upgrades $n)"
    read -r _ a <<<"${ra0[$n]}"; read -r _ b <<<"${rb0[$n]}"
    rconnect[$n]=$((a + b - ${rconnect[$n]}))
  done
}

# Before any heartbeat (the earliest is auto's first, 1.5 s after connecting): what one
# connect costs on the wire.
sleep 1.2
declare -A connect_bytes
for n in "${names[@]}"; do
  read -r _ a <<<"$(counter $n up)"; read -r _ b <<<"$(counter $n down)"
  connect_bytes[$n]=$((a + b))
done
echo "warm-up ${WARMUP} s (= $((WARMUP * SCALE / 60)) min), then a window of ${WINDOW} s (= $((WINDOW * SCALE / 60)) min)" >&2
echo "the restart rigs are restarted at ${RESTART_AT} s (= $((RESTART_AT * SCALE / 60)) min) and measured for ${AFTER} s (= $((AFTER * SCALE / 60)) min)" >&2
if [ "$RESTART_AT" -lt "$WARMUP" ]; then sleep_until "$RESTART_AT"; restart_rigs; fi
sleep_until "$WARMUP"
declare -A up0 down0 conn0
for n in "${names[@]}"; do
  up0[$n]="$(counter $n up)"; down0[$n]="$(counter $n down)"; conn0[$n]="$(upgrades $n)"
done
if [ "$RESTART_AT" -ge "$WARMUP" ]; then sleep_until "$RESTART_AT"; restart_rigs; fi
sleep_until $((WARMUP + WINDOW))
declare -A up1 down1 conn1
for n in "${names[@]}"; do
  up1[$n]="$(counter $n up)"; down1[$n]="$(counter $n down)"; conn1[$n]="$(upgrades $n)"
done
# Liveness: the server speaks on every connection it holds.
for n in "${names[@]}"; do
  ip netns pids "$prefix-$n-srv" | while read -r pid; do kill -USR1 "$pid" 2>/dev/null || true; done
done
sleep 3

fixed_day=""
declare -A per_day_of
table="$work/table.md"
{
  echo "| client | NAT T | heartbeat (end of run) | bytes/day | packets/day | vs fixed 20 s | lost connections/day | connections lost in warm-up | one connect | alive at the end |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$table"
perday() { awk -v v="$1" -v w=$WINDOW -v s=$SCALE -v f="$2" 'BEGIN { printf f, v * 86400 / (w * s) }'; }
for i in "${!names[@]}"; do
  n="${names[$i]}"
  case $n in restart*) continue ;; esac
  read -r p0 b0 <<<"${up0[$n]}"; read -r p1 b1 <<<"${up1[$n]}"
  read -r q0 d0 <<<"${down0[$n]}"; read -r q1 d1 <<<"${down1[$n]}"
  bytes=$(( (b1 - b0) + (d1 - d0) ))
  packets=$(( (p1 - p0) + (q1 - q0) ))
  per_day=$(perday $bytes "%.0f"); per_day_of[$n]=$per_day
  packets_day=$(perday $packets "%.0f")
  lost=$(( ${conn1[$n]} - ${conn0[$n]} ))
  lost_day=$(perday $lost "%.1f")
  warm_lost=$(( ${conn0[$n]} > 0 ? ${conn0[$n]} - 1 : 0 ))
  alive=no; grep -qx probe "$work/$n.out" 2>/dev/null && alive=yes
  case $n in
    fixed20) beat="20 s"; fixed_day=$per_day ;;
    auto*) ms=$(sed -n 's/^ping_interval_ms=//p' "$work/$n.status" 2>/dev/null)
      beat="$(awk -v m="${ms:-0}" -v s=$SCALE 'BEGIN { printf "%.0f s (learned)", m * s / 1000 }')" ;;
    python20) beat="20 s" ;;
    node30) beat="30 s" ;;
    websocat) beat="none" ;;
  esac
  ratio="—"
  [ -n "$fixed_day" ] && [ "$fixed_day" -gt 0 ] && ratio=$(awk -v a=$per_day -v b=$fixed_day 'BEGIN { printf "%.2f", a / b }')
  kb=$(awk -v v=$per_day 'BEGIN { printf "%.0f kB", v / 1000 }')
  echo "| ${labels[$i]} | ${ts[$i]} s | $beat | $kb | $packets_day | $ratio | $lost_day | $warm_lost | ${connect_bytes[$n]} B | $alive |" >> "$table"
  printf '%s window_bytes=%s window_packets=%s window_lost=%s warmup_connections=%s connect_bytes=%s alive=%s\n' \
    "$n" "$bytes" "$packets" "$lost" "${conn0[$n]}" "${connect_bytes[$n]}" "$alive" >> "$work/raw.txt"
done

# The first hour after a restart, against auto120's settled rate (its window, per hour).
rtable="$work/restart.md"
{
  echo "| after a restart behind a $((120)) s NAT, first $((AFTER * SCALE / 60)) min | heartbeat after the restart | bytes | vs settled rate | lost connections | the restart's close + connect |"
  echo "|---|---|---|---|---|---|"
} > "$rtable"
settled_window=""
if [ -n "${per_day_of[auto120]:-}" ]; then
  settled_window=$(awk -v d="${per_day_of[auto120]}" -v a=$AFTER -v s=$SCALE 'BEGIN { printf "%.0f", d * a * s / 86400 }')
fi
declare -A rratio rlost
for n in restart restartsd; do
  read -r p0 b0 <<<"${ra0[$n]}"; read -r p1 b1 <<<"${up1[$n]}"
  read -r q0 d0 <<<"${rb0[$n]}"; read -r q1 d1 <<<"${down1[$n]}"
  bytes=$(( (b1 - b0) + (d1 - d0) ))
  rlost[$n]=$(( ${conn1[$n]} - ${rc0[$n]} ))
  first=$(grep -m1 -o 'network path [^ ]*: [a-z].*' "$work/$n.err" 2>/dev/null || true)
  gap=$(awk -v f="${first:-}" -v s=$SCALE 'BEGIN { if (match(f, /at [0-9.]+(ms|s)/)) { v = substr(f, RSTART + 3, RLENGTH - 3); m = (v ~ /ms$/) ? v / 1000 : v + 0; printf "%.0f s (resumed)", m * s } else printf "15 s (MIN: learns again)" }')
  ratio="—"
  [ -n "$settled_window" ] && [ "$settled_window" -gt 0 ] && ratio=$(awk -v a=$bytes -v b="$settled_window" 'BEGIN { printf "%.2f", a / b }')
  rratio[$n]=$ratio
  case $n in restart) label="without \`--state-dir\`" ;; restartsd) label="with \`--state-dir\`" ;; esac
  kb=$(awk -v v=$bytes 'BEGIN { printf "%.1f kB", v / 1000 }')
  echo "| $label | $gap | $kb | $ratio | ${rlost[$n]} | ${rconnect[$n]} B |" >> "$rtable"
  printf '%s after_restart_bytes=%s lost=%s settled_bytes_same_time=%s restart_bytes=%s\n' \
    "$n" "$bytes" "${rlost[$n]}" "${settled_window:-}" "${rconnect[$n]}" >> "$work/raw.txt"
done

echo
cat "$table"
echo
cat "$rtable"
echo
awk -v r="${rratio[restartsd]}" -v l="${rlost[restartsd]}" 'BEGIN {
  printf "goal: after a restart with --state-dir, 0 lost and no more bytes than the settled rate: %s lost, %s x, %s\n", l, r, (l == 0 && r != "—" && r <= 1.0 ? "met" : "NOT met")
}'
if [ -n "${per_day_of[auto120]:-}" ] && [ -n "$fixed_day" ]; then
  awk -v a="${per_day_of[auto120]}" -v f="$fixed_day" 'BEGIN {
    r = a / f
    printf "goal: auto behind a 120 s NAT uses at most 1/4 of the fixed-20 s bytes: %.2f, %s\n", r, (r <= 0.25 ? "met" : "NOT met")
  }'
fi
echo "time scaled 1/$SCALE: warm-up ${WARMUP} s (= $((WARMUP * SCALE / 60)) real min), window ${WINDOW} s (= $((WINDOW * SCALE / 60)) real min; x $(awk -v w=$WINDOW -v s=$SCALE 'BEGIN { printf "%.1f", 86400 / (w * s) }') for a day)"
cat "$table" - "$rtable" <<<"" > "$out/nat-economy.md"
cp "$work/raw.txt" "$out/nat-economy.raw.txt"
echo "table: $out/nat-economy.md; logs: $work" >&2
