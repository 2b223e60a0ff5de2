#!/usr/bin/env bash
# systemd-test.sh — the .deb under a real systemd: boot Debian 12 with systemd as PID 1 in a
# container, `dpkg -i` the package, run wsbeat.service against a WebSocket server inside the
# container, and check what the README promises. Run by .ci/run after scripts/build-deb.sh.
#
# Usage:  scripts/systemd-test.sh [DEB]        (as root, on a Debian 12 amd64 host)
#   DEB   the package to test; default: the host's, <target-dir>/<host triple>/debian/
#         wsbeat_<version>_amd64.deb as written by scripts/build-deb.sh
#
# How: `debootstrap --variant=minbase bookworm` with systemd, dbus, libssl3, procps and
# python3 into $CACHE (once; later runs reuse it), then `systemd-nspawn --boot --ephemeral
# --private-network` (a throw-away copy; the network is the container's own loopback only)
# and every step through `nsenter` into the container. The server is
# scripts/systemd-test-server.py (python3, standard library) as wsecho.service on
# 127.0.0.1:$PORT. Host packages it installs when missing: debootstrap, systemd-container.
#
# Checks, in order (each prints PASS or FAIL; any FAIL makes the exit status 1):
#   boot       systemd is PID 1 and the boot finished
#   install    dpkg -i: binary, unit, conffile 0600, empty /etc/wsbeat/headers 0600, man page
#   verify     systemd-analyze verify wsbeat.service on the installed unit
#   start      systemctl enable --now returns 0 and the unit is already active (READY=1 seen)
#   header     the server got the Authorization header from /etc/wsbeat/headers (credential)
#   status     systemctl status shows the STATUS= line "connected to ws://..."
#   status-file  /run/wsbeat/status says state=connected for that URL, world-readable
#   security   systemd-analyze security wsbeat (online) <= MAX_EXPOSURE
#   quiet      journalctl -u wsbeat -p warning is empty while all is well
#   socket     wsbeat.socket active, /run/wsbeat.sock root:wsbeat 0660, passed to the service
#   group      a user in the group wsbeat sends a line through /run/wsbeat.sock: the server
#              gets it, and the user receives what the server sends (its echo)
#   others     a user not in the group gets EACCES from connect()
#   sock-restart  systemctl restart wsbeat keeps the socket (same inode, still listening);
#              a client that reconnects carries on
#   activation with the service stopped, a client's connect() starts it and is served
#   reload     systemctl reload: same PID, files re-read (log), close 1000, new connect with header
#   rotation   new token in /etc/wsbeat/headers + systemctl restart: the server gets it
#   outage     server killed for OUTAGE_SECS (> WatchdogSec=30): still running, same PID,
#              NRestarts unchanged, watchdog still fed, status file not "connected"
#   warnings   journalctl -u wsbeat -p warning now holds the outage's lines
#   recover    server back: reconnected, status file connected again
#   watchdog   a SIGSTOPped client is killed ("Watchdog timeout") and restarted
#   stop       systemctl stop: the server sees Close 1001, the main process exits 0
#   state      --ping-interval auto keeps what it learned in /var/lib/private/wsbeat (the
#              dynamic user's StateDirectory=), and it survives systemctl restart
#   denials    the unit's journal has no SIGSYS / EPERM / EACCES / EAFNOSUPPORT
#   no-config  without /etc/default/wsbeat: exit 64, stays failed (no restart loop)
#   no-headers without /etc/wsbeat/headers: 243/CREDENTIALS, stays failed (no restart loop)
#   remove     dpkg -r of the running service: stopped, configuration kept; dpkg -i again:
#              still enabled (the unit was masked meanwhile), connects with the kept token
#   purge      dpkg --purge of the running service: stopped, and no file left that was not
#              there before dpkg -i (names under /etc /usr /var /run /opt /srv /root /home;
#              the state under /var/lib/private/wsbeat included)
#
# Environment: CACHE=/var/cache/wsbeat-systemd-test (the base image; delete to rebuild),
#   MIRROR (default: the host's Debian mirror from its apt sources), OUT (logs; default
#   <target-dir>/systemd-test), PORT=8765, OUTAGE_SECS=35, MAX_EXPOSURE=1.2,
#   KEEP=1 (leave the container running at the end, for a look inside).
set -uo pipefail

PROG=systemd-test
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,libssl3,procps,python3
CACHE=${CACHE:-/var/cache/wsbeat-systemd-test}
ROOTFS=$CACHE/$SUITE
MACHINE=wsbeat-systemd-test
PORT=${PORT:-8765}
OUTAGE_SECS=${OUTAGE_SECS:-35}
MAX_EXPOSURE=${MAX_EXPOSURE:-1.2}
KEEP=${KEEP:-0}
TD=${CARGO_TARGET_DIR:-$ROOT/target}
case $TD in /*) ;; *) TD=$ROOT/$TD ;; esac
OUT=${OUT:-$TD/systemd-test}
URL=ws://127.0.0.1:$PORT/ws
T_START=$SECONDS

NPASS=0 NFAIL=0 NSPAWN_PID='' LEADER='' R='' SLEEP_PID=''

log()  { printf '%s: %s\n' "$PROG" "$*" >&2; }
die()  { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
pass() { NPASS=$((NPASS + 1)); printf 'PASS %-11s %s\n' "$1" "$2"; }
fail() { NFAIL=$((NFAIL + 1)); printf 'FAIL %-11s %s\n' "$1" "$2"; }
# fatal CHECK MESSAGE: a failure that makes the checks after it meaningless.
fatal() { fail "$1" "$2"; exit 1; }
oneline() { tr '\n' '|' | cut -c1-"${1:-400}"; }

# ---------------------------------------------------------------- arguments, host tools
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, systemd-nspawn, nsenter)"
[ $# -le 1 ] || die "usage: $0 [DEB]"
[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || die "needs an amd64 Debian host (the container runs the host's kernel)"
VERSION=$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' "$ROOT/Cargo.toml" | head -1)
DEB=${1:-$TD/x86_64-unknown-linux-gnu/debian/wsbeat_${VERSION}_amd64.deb}
[ -f "$DEB" ] || die "$DEB not found: build it first with scripts/build-deb.sh"
DEB=$(readlink -f "$DEB")
SERVER=$ROOT/scripts/systemd-test-server.py
[ -f "$SERVER" ] || die "$SERVER is missing"

mkdir -p "$OUT" "$CACHE"
rm -f "$OUT"/*.log "$OUT"/*.txt
exec 9>"$CACHE/.lock"
flock -n 9 || die "another systemd-test.sh is running (lock $CACHE/.lock)"

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nsenter >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A mirror mid-sync fails one index; the others still load.
  timeout 300 apt-get update -qq -o DPkg::Lock::Timeout=120 >"$OUT/apt-host.log" 2>&1 \
    || log "warning: apt-get update reported errors; continuing"
  timeout 600 apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 "${need[@]}" \
    >>"$OUT/apt-host.log" 2>&1 || { tail -5 "$OUT/apt-host.log" >&2; die "apt-get install ${need[*]} failed (log: $OUT/apt-host.log)"; }
fi

# ---------------------------------------------------------------- base image (cached)
STAMP="suite=$SUITE packages=$PACKAGES"
if [ "$(cat "$ROOTFS/.wsbeat-systemd-test" 2>/dev/null)" != "$STAMP" ]; then
  if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$2 ~ /debian\/?$/ {print $2; exit}')
    [ -n "$MIRROR" ] || MIRROR=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '$2 ~ /debian\/?$/ {print $2; exit}')
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
  fi
  log "debootstrap $SUITE ($PACKAGES) from $MIRROR into $ROOTFS (about a minute, once)"
  t=$SECONDS
  rm -rf --one-file-system "$ROOTFS" "$ROOTFS.partial"
  # Into .partial and renamed at the end: an interrupted run never leaves a half image.
  timeout 1200 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS.partial" "$MIRROR" \
    >"$OUT/debootstrap.log" 2>&1 \
    || { tail -5 "$OUT/debootstrap.log" >&2; die "debootstrap failed (log: $OUT/debootstrap.log)"; }
  echo "$MACHINE" >"$ROOTFS.partial/etc/hostname"
  rm -rf "$ROOTFS.partial"/var/cache/apt/archives/*.deb
  echo "$STAMP" >"$ROOTFS.partial/.wsbeat-systemd-test"
  mv "$ROOTFS.partial" "$ROOTFS"
  log "base image ready in $((SECONDS - t)) s ($(du -sh "$ROOTFS" | cut -f1))"
fi

# ---------------------------------------------------------------- container helpers
# C CMD...: run CMD in the container (all of its PID 1's namespaces), clean environment,
# bounded by CT seconds (default 60).
C() {
  nsenter -t "$LEADER" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat SYSTEMD_LESS= TERM=dumb timeout "${CT:-60}" "$@"
}
prop() { C systemctl show -p "$1" --value wsbeat.service; }
jwsb() { C journalctl --no-pager -q -o short-monotonic -u wsbeat.service "$@"; }
srvlog() { C journalctl --no-pager -q -o cat -u wsecho.service; }
# Lines logged after a mark: m=$(srvmark) ... srvnew "$m"
srvmark() { srvlog | wc -l; }
srvnew() { srvlog | tail -n +"$(($1 + 1))"; }
wsbmark() { jwsb | wc -l; }
wsbnew() { jwsb | tail -n +"$(($1 + 1))"; }
srv_has() { srvnew "$1" | grep -Eq -- "$2"; }
wsb_has() { wsbnew "$1" | grep -Eq -- "$2"; }
# pause SECONDS: sleep, but let a SIGTERM/SIGINT reach the trap at once.
pause() { sleep "$1" & SLEEP_PID=$!; wait "$SLEEP_PID"; SLEEP_PID=; }
# wait_until SECONDS CMD...: true as soon as CMD is, false after SECONDS.
wait_until() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ "$SECONDS" -ge "$end" ] && return 1; sleep 0.3; done
}
# The files the package could leave behind, for the purge check; without the ones that come
# and go with a running system (logs, dpkg's own books, the test server's unit state) and
# the folder systemd makes at the first DynamicUser= (its entries are still compared).
snapshot() {
  C find /etc /usr /var /run /opt /srv /root /home -xdev \
    \( -path /var/log -o -path /var/cache -o -path /var/tmp -o -path /var/lib/dpkg \
       -o -path /var/lib/systemd/timers -o -path /run/systemd/journal -o -path /run/log \
       -o -path /run/systemd/propagate -o -path /run/udev \) -prune -o -print |
    grep -Ev '^/run/agetty\.reload$|^/run/systemd/dynamic-uid$|wsecho' | sort
}

dump_logs() {
  C journalctl -b --no-pager -o short-monotonic >"$OUT/journal.log" 2>&1
  jwsb >"$OUT/wsbeat.log" 2>&1
  srvlog >"$OUT/server.log" 2>&1
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  [ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
  if [ -n "$LEADER" ] && [ -d "/proc/$LEADER" ]; then
    dump_logs
    if [ "$NFAIL" != 0 ] || [ "$rc" != 0 ]; then
      log "--- last lines of the wsbeat.service journal ($OUT/wsbeat.log)"
      tail -n 25 "$OUT/wsbeat.log" >&2
      log "--- last lines of the server's log ($OUT/server.log)"
      tail -n 10 "$OUT/server.log" >&2
    fi
  fi
  if [ "$KEEP" = 1 ] && [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    log "KEEP=1: container left running; enter: nsenter -t $LEADER -a /bin/bash; end: kill -TERM $NSPAWN_PID"
    exit "$rc"
  fi
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    # SIGTERM: nspawn halts the container in order, then deletes the ephemeral copy.
    kill -TERM "$NSPAWN_PID" 2>/dev/null
    for i in $(seq 150); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
      log "nspawn (PID $NSPAWN_PID) still there after 30 s: killing it and the container's PID 1 ($LEADER)"
      kill -KILL "$NSPAWN_PID" 2>/dev/null
      [ -n "$LEADER" ] && kill -KILL "$LEADER" 2>/dev/null
      sleep 1
    fi
  fi
  # Left by nspawn on a host whose /run is not a tmpfs, and by a hard kill.
  rm -rf "/run/systemd/nspawn/propagate/$MACHINE"
  for i in "$CACHE"/.#machine."$(basename "$ROOTFS")"* "$CACHE"/.#.#machine."$(basename "$ROOTFS")"*; do
    [ -e "$i" ] && rm -rf --one-file-system "$i"
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted (SIGINT)"; exit 130' INT
trap 'log "interrupted (SIGTERM)"; exit 143' TERM

# ---------------------------------------------------------------- boot
log "booting $ROOTFS (ephemeral copy) with systemd-nspawn"
t_boot=$SECONDS
rm -rf "/run/systemd/nspawn/propagate/$MACHINE"
# A pure cgroup2 tree in the container, as on a stock Debian 12 machine, whatever the host has.
# --register=no --keep-unit: no machined/D-Bus needed on the host ("Failed to open system bus").
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn --quiet --directory="$ROOTFS" --ephemeral \
  --boot --machine="$MACHINE" --register=no --keep-unit --private-network --console=read-only \
  >"$OUT/console.log" 2>&1 </dev/null &
NSPAWN_PID=$!
for _ in $(seq 300); do
  for c in $(ps -o pid= --ppid "$NSPAWN_PID" 2>/dev/null); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && LEADER=$c && break 2
  done
  kill -0 "$NSPAWN_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$LEADER" ] || fatal boot "no systemd in the container after 30 s: $(tail -n 5 "$OUT/console.log" | oneline)"
R=/proc/$LEADER/root
# PID 1 runs, but its private bus may not be there yet ("Failed to connect to bus"): retry.
state=
for _ in $(seq 100); do
  state=$(CT=90 C systemctl is-system-running --wait 2>&1)
  case $state in *"Failed to connect"*) sleep 0.3 ;; *) break ;; esac
done
case $state in
  running) pass boot "systemd $(C systemctl --version | awk 'NR==1 {print $2, $3}') is PID 1, running after $((SECONDS - t_boot)) s" ;;
  degraded) pass boot "systemd is PID 1 (degraded, not about wsbeat: $(C systemctl --failed --plain --no-legend | awk '{print $1}' | oneline))" ;;
  *) fatal boot "is-system-running: $state" ;;
esac

# The server, before the baseline for the purge check: it is not the package's.
install -d "$R/usr/local/lib/wsbeat-test"
install -m 0755 "$SERVER" "$R/usr/local/lib/wsbeat-test/server.py"
# A local program: sends LINE through /run/wsbeat.sock and waits for it to come back (the
# server echoes it to every client); prints ok, EOF, timeout or connect()'s errno name.
cat >"$R/usr/local/lib/wsbeat-test/client.py" <<'PY'
import errno, socket, sys
line = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("/run/wsbeat.sock")
except OSError as err:
    print(errno.errorcode.get(err.errno, str(err.errno)))
    sys.exit(3)
s.sendall((line + "\n").encode())
s.settimeout(20)
want = ("\n" + line + "\n").encode()
buf = b"\n"
try:
    while want not in buf:
        data = s.recv(65536)
        if not data:
            print("EOF")
            sys.exit(4)
        buf += data
except socket.timeout:
    print("timeout")
    sys.exit(5)
print("ok")
PY
# The test's users, before the baseline too (useradd writes /etc/passwd- and friends):
# wsbeat-member joins the package's group once it exists, wsbeat-other never does.
C useradd --system --no-create-home wsbeat-member
C useradd --system --no-create-home wsbeat-other
cat >"$R/etc/systemd/system/wsecho.service" <<EOF
[Unit]
Description=WebSocket echo server for the wsbeat test ($URL)
[Service]
ExecStart=/usr/bin/python3 -u /usr/local/lib/wsbeat-test/server.py $PORT
EOF
C systemctl daemon-reload
install -m 0644 "$DEB" "$R/var/tmp/wsbeat.deb"
snapshot >"$OUT/files-before.txt"

# ---------------------------------------------------------------- install
out=$(C dpkg -i /var/tmp/wsbeat.deb 2>&1); rc=$?
printf '%s\n' "$out" >"$OUT/dpkg-install.log"
modes=$(C stat -c '%n %a %s' /usr/bin/wsbeat /lib/systemd/system/wsbeat.service /lib/systemd/system/wsbeat.socket \
  /etc/default/wsbeat /etc/wsbeat /etc/wsbeat/headers /usr/share/man/man1/wsbeat.1.gz 2>&1)
modes="$modes
group $(C getent group wsbeat | cut -d: -f1)"
flat=$(printf '%s\n' "$modes" | tr '\n' ' ')
want="/usr/bin/wsbeat 755 * /lib/systemd/system/wsbeat.service 644 * /lib/systemd/system/wsbeat.socket 644 * /etc/default/wsbeat 600 * /etc/wsbeat 700 * /etc/wsbeat/headers 600 0 /usr/share/man/man1/wsbeat.1.gz 644 * group wsbeat "
# shellcheck disable=SC2053 # glob match on purpose (sizes vary)
if [ "$rc" = 0 ] && [[ $flat == $want ]] && C dpkg -s wsbeat 2>/dev/null | grep -qx 'Status: install ok installed'; then
  pass install "dpkg -i $(basename "$DEB"): $(echo "$modes" | awk '{printf "%s %s, ", $1, $2}')postinst: $(printf '%s' "$out" | grep -m1 '^wsbeat:')"
else
  fatal install "dpkg -i rc=$rc: $(printf '%s' "$out" | tail -n 3 | oneline) files: $(echo "$modes" | oneline)"
fi

# --man=no: the minimal image has no man-db to look up Documentation=man:wsbeat(1) (the
# install check above saw the page; scripts/check-unit.sh resolves the reference).
if out=$(C systemd-analyze verify --man=no wsbeat.service wsbeat.socket 2>&1) && [ -z "$out" ]; then
  pass verify "systemd-analyze verify wsbeat.service wsbeat.socket: no complaints"
else
  fail verify "systemd-analyze verify: $(printf '%s' "$out" | oneline)"
fi

# Configure it as the README says: the URL in /etc/default/wsbeat, the token in the header file.
TOKEN=test-$RANDOM$RANDOM
C sed -i "s|^WSBEAT_URL=.*|WSBEAT_URL=$URL|" /etc/default/wsbeat
# Short heartbeat and backoff so that the test sees rtt and reconnects within seconds.
printf 'WSBEAT_PING_INTERVAL=2s\nWSBEAT_BACKOFF_MAX=2s\n' >>"$R/etc/default/wsbeat"
printf 'Authorization: Bearer %s\n' "$TOKEN" >"$R/etc/wsbeat/headers"
C systemctl start wsecho.service
wait_until 15 srv_has 0 '^LISTEN' || fatal server "the test server did not start: $(srvlog | tail -n 3 | oneline)"

# ---------------------------------------------------------------- start
m=$(srvmark)
t=$(date +%s%N)
out=$(C systemctl enable --now wsbeat.service 2>&1); rc=$?
ms=$((($(date +%s%N) - t) / 1000000))
# Type=notify: `start` returns once READY=1 arrived, so the unit is active right away.
as=$(prop ActiveState)/$(prop SubState)
if [ "$rc" = 0 ] && [ "$as" = active/running ]; then
  pass start "systemctl enable --now returned 0 after $ms ms, already $as (READY=1)"
else
  fatal start "rc=$rc state=$as: $(printf '%s' "$out" | oneline) $(jwsb | tail -n 5 | oneline)"
fi
MAINPID=$(prop MainPID)

if wait_until 10 srv_has "$m" "CONNECT .*authorization='Bearer $TOKEN'"; then
  pass header "the server got the header from the credential: $(srvnew "$m" | grep -m1 CONNECT)"
else
  fail header "no CONNECT with the token; server: $(srvnew "$m" | oneline)"
fi

status_line() { C systemctl status --no-pager wsbeat.service | grep -m1 'Status:' | sed 's/^ *//'; }
status_has_rtt() { status_line | grep -q "Status: \"connected to $URL, rtt "; }
if wait_until 10 status_has_rtt; then
  pass status "systemctl status: $(status_line)"
else
  fail status "no 'Status: \"connected to $URL, rtt ...' line: $(C systemctl status --no-pager wsbeat.service | head -n 12 | oneline)"
fi

sf=$(C cat /run/wsbeat/status 2>&1); sfm=$(C stat -c %A /run/wsbeat/status 2>&1)
if printf '%s\n' "$sf" | grep -qx 'state=connected' && printf '%s\n' "$sf" | grep -qxF "url=$URL" && [ "$sfm" = -rw-r--r-- ]; then
  pass status-file "/run/wsbeat/status ($sfm): $(printf '%s' "$sf" | tr '\n' ' ')"
else
  fail status-file "/run/wsbeat/status ($sfm): $(printf '%s' "$sf" | oneline)"
fi

C systemd-analyze security --no-pager wsbeat.service >"$OUT/security.txt" 2>&1
score=$(sed -n 's/.*Overall exposure level for wsbeat.service: \([0-9.]*\).*/\1/p' "$OUT/security.txt")
if [ -n "$score" ] && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
  pass security "systemd-analyze security wsbeat (online): $score <= $MAX_EXPOSURE"
else
  fail security "exposure '${score:-?}' > $MAX_EXPOSURE; not satisfied: $(grep '✗' "$OUT/security.txt" | awk '{print $2}' | oneline)"
fi

warn=$(jwsb -p warning)
if [ -z "$warn" ]; then pass quiet "journalctl -u wsbeat -p warning: nothing while connected"
else fail quiet "warnings while connected: $(printf '%s' "$warn" | oneline)"; fi

# ---------------------------------------------------------------- local socket
C usermod -a -G wsbeat wsbeat-member
sockinfo() { C stat -c '%U:%G %a %F %i' /run/wsbeat.sock 2>&1; }
si=$(sockinfo)
sa=$(C systemctl is-active wsbeat.socket 2>&1)
if [ "$sa" = active ] && [[ $si == "root:wsbeat 660 socket "* ]] && wait_until 5 wsb_has 0 'passed by systemd'; then
  pass socket "wsbeat.socket $sa, /run/wsbeat.sock ${si% *}; wsbeat: \"$(jwsb | grep -m1 -o 'local socket: passed by systemd')\""
else
  fail socket "wsbeat.socket: $sa; /run/wsbeat.sock: $si; journal: $(jwsb | grep -i 'socket' | oneline)"
fi
# client USER LINE: a local program run as USER; prints what client.py prints.
client() { C runuser -u "$1" -- python3 /usr/local/lib/wsbeat-test/client.py "$2" 2>&1; }
LINE=from-a-member-$RANDOM
m=$(srvmark)
out=$(CT=30 client wsbeat-member "$LINE")
if [ "$out" = ok ] && srv_has "$m" "TEXT .*text='$LINE'"; then
  pass group "a member of wsbeat sent \"$LINE\" through /run/wsbeat.sock, the server got it ($(srvnew "$m" | grep -m1 -o 'TEXT.*' | sed 's/peer=[^ ]* //')), and its echo came back"
else
  fail group "client: $out; server: $(srvnew "$m" | oneline); journal: $(jwsb | tail -n 4 | oneline)"
fi
out=$(client wsbeat-other "from-another-user")
if [ "$out" = EACCES ]; then
  pass others "a user outside the group wsbeat: connect() fails with $out"
else
  fail others "a user outside the group wsbeat got: $out"
fi
inode=$(sockinfo | awk '{print $NF}')
out=$(C systemctl restart wsbeat.service 2>&1); rc=$?
LINE=after-restart-$RANDOM
m=$(srvmark)
out2=$(CT=30 client wsbeat-member "$LINE")
si=$(sockinfo)
if [ "$rc" = 0 ] && [ "$(C systemctl is-active wsbeat.socket)" = active ] && [ "${si##* }" = "$inode" ] &&
  [ "$out2" = ok ] && srv_has "$m" "TEXT .*text='$LINE'"; then
  pass sock-restart "systemctl restart wsbeat: the socket stayed (inode $inode), a client that reconnected carries on"
else
  fail sock-restart "restart rc=$rc $out; socket $si (inode was $inode); client: $out2; server: $(srvnew "$m" | oneline)"
fi
C systemctl stop wsbeat.service
as=$(prop ActiveState)
LINE=wakes-the-service-$RANDOM
m=$(srvmark)
out=$(CT=40 client wsbeat-member "$LINE")
if [ "$as" = inactive ] && [ "$out" = ok ] && [ "$(prop ActiveState)" = active ] && srv_has "$m" "TEXT .*text='$LINE'"; then
  pass activation "service stopped ($as): a client's connect() started it ($(prop ActiveState)/$(prop SubState)) and its line reached the server"
else
  fail activation "before: $as, after: $(prop ActiveState); client: $out; server: $(srvnew "$m" | oneline)"
fi
MAINPID=$(prop MainPID)

# ---------------------------------------------------------------- reload, token rotation
m=$(srvmark); w=$(wsbmark)
out=$(C systemctl reload wsbeat.service 2>&1); rc=$?
if [ "$rc" = 0 ] && wait_until 10 srv_has "$m" "CONNECT .*authorization='Bearer $TOKEN'" &&
  srv_has "$m" "CLOSE .*code=1000" && wsb_has "$w" 'SIGHUP: re-reading files' && [ "$(prop MainPID)" = "$MAINPID" ]; then
  pass reload "systemctl reload: same PID $MAINPID, \"$(wsbnew "$w" | grep -m1 -o 'SIGHUP.*')\", server: $(srvnew "$m" | grep -o '^[A-Z]* .*' | sed 's/peer=[^ ]* //' | oneline)"
else
  fail reload "rc=$rc $out; pid $(prop MainPID) (was $MAINPID); server: $(srvnew "$m" | oneline); client: $(wsbnew "$w" | oneline)"
fi

TOKEN2=rotated-$RANDOM$RANDOM
printf 'Authorization: Bearer %s\n' "$TOKEN2" >"$R/etc/wsbeat/headers"
m=$(srvmark)
out=$(C systemctl restart wsbeat.service 2>&1); rc=$?
if [ "$rc" = 0 ] && wait_until 10 srv_has "$m" "CONNECT .*authorization='Bearer $TOKEN2'"; then
  pass rotation "new token + systemctl restart: the server got it (old connection: $(srvnew "$m" | grep -m1 -o 'code=[0-9a-z]*'))"
else
  fail rotation "rc=$rc $out; server: $(srvnew "$m" | oneline)"
fi
TOKEN=$TOKEN2
MAINPID=$(prop MainPID)

# ---------------------------------------------------------------- outage
m=$(srvmark); w=$(wsbmark); nr=$(prop NRestarts); wd0=$(prop WatchdogTimestampMonotonic)
wdusec=$(prop WatchdogUSec)
C systemctl kill -s KILL wsecho.service
log "server killed; waiting ${OUTAGE_SECS} s (WatchdogSec: $wdusec) ..."
pause "$OUTAGE_SECS"
as=$(prop ActiveState)/$(prop SubState); pid=$(prop MainPID); nr1=$(prop NRestarts)
wd1=$(prop WatchdogTimestampMonotonic)
refused=$(wsbnew "$w" | grep -c 'Connection refused')
wdt=$(wsbnew "$w" | grep -c 'Watchdog timeout')
sf=$(C cat /run/wsbeat/status 2>&1)
if [ "$as" = active/running ] && [ "$pid" = "$MAINPID" ] && [ "$nr1" = "$nr" ] && [ "$wdt" = 0 ] &&
  [ "$wd1" -gt "$wd0" ] && [ "$refused" -ge 3 ] && ! printf '%s\n' "$sf" | grep -qx 'state=connected'; then
  pass outage "server down ${OUTAGE_SECS} s: $as, same PID, NRestarts=$nr1, watchdog fed (last $(((wd1 - wd0) / 1000000)) s after the kill), $refused refused attempts; status file: $(printf '%s\n' "$sf" | grep -E '^(state|last_error)=' | tr '\n' ' ')"
else
  fail outage "state=$as pid=$pid (was $MAINPID) NRestarts=$nr1 (was $nr) watchdog timeouts=$wdt watchdog timestamp $wd0 -> $wd1, refused=$refused, status file: $(printf '%s' "$sf" | oneline)"
fi

warn=$(jwsb -p warning)
if printf '%s\n' "$warn" | grep -q 'connection lost' && printf '%s\n' "$warn" | grep -q 'Connection refused'; then
  pass warnings "journalctl -u wsbeat -p warning: $(printf '%s\n' "$warn" | wc -l) lines, e.g. \"$(printf '%s\n' "$warn" | grep -m1 -o 'connection lost.*')\", \"$(printf '%s\n' "$warn" | grep -m1 -o 'ws://[^ ]*: connect.*')\""
else
  fail warnings "journalctl -u wsbeat -p warning lacks the outage: $(printf '%s' "$warn" | oneline)"
fi

m=$(srvmark)
C systemctl start wsecho.service
connected() { C grep -qx 'state=connected' /run/wsbeat/status; }
if wait_until 15 srv_has "$m" "CONNECT .*Bearer $TOKEN" && wait_until 5 connected; then
  pass recover "server back: reconnected, $(prop StatusText)"
else
  fail recover "server: $(srvnew "$m" | oneline); status: $(C cat /run/wsbeat/status | oneline)"
fi

# ---------------------------------------------------------------- watchdog enforced
m=$(srvmark); w=$(wsbmark); nr=$(prop NRestarts)
C systemctl kill -s STOP --kill-who=main wsbeat.service
log "client SIGSTOPped; waiting for the watchdog ($wdusec) and the restart ..."
restarted() { [ "$(prop NRestarts)" -gt "$nr" ] && [ "$(prop SubState)" = running ] && [ "$(prop MainPID)" != "$MAINPID" ]; }
if wait_until 50 wsb_has "$w" 'Watchdog timeout' && wait_until 20 restarted && wait_until 10 srv_has "$m" 'CONNECT'; then
  pass watchdog "frozen client: $(wsbnew "$w" | grep -oE 'Watchdog timeout.*|Main process exited.*|Scheduled restart job.*' | oneline) new PID $(prop MainPID)"
else
  fail watchdog "NRestarts=$(prop NRestarts) (was $nr); journal: $(wsbnew "$w" | tail -n 6 | oneline)"
  C systemctl kill -s CONT --kill-who=main wsbeat.service
fi

# ---------------------------------------------------------------- stop
m=$(srvmark)
out=$(C systemctl stop wsbeat.service 2>&1); rc=$?
wait_until 10 srv_has "$m" 'CLOSE'
close=$(srvnew "$m" | grep -m1 CLOSE)
res="ExecMainCode=$(prop ExecMainCode) ExecMainStatus=$(prop ExecMainStatus) Result=$(prop Result)"
# ExecMainCode 1 = CLD_EXITED; the unit is enabled, so systemd keeps these after the stop.
if [ "$rc" = 0 ] && printf '%s' "$close" | grep -q 'code=1001' && [ "$res" = "ExecMainCode=1 ExecMainStatus=0 Result=success" ]; then
  pass stop "systemctl stop: server saw $(printf '%s' "$close" | sed 's/peer=[^ ]* //'); $res"
else
  fail stop "rc=$rc $out; server: ${close:-no CLOSE}; $res"
fi

# ---------------------------------------------------------------- state dir (issue 20)
# --ping-interval auto with the unit's StateDirectory=: the dynamic user keeps what it
# learned in /var/lib/private/wsbeat/heartbeat (/var/lib/wsbeat links there), and the
# process after a `systemctl restart` resumes from it instead of learning again.
C sed -i 's/^WSBEAT_PING_INTERVAL=2s$/WSBEAT_PING_INTERVAL=auto:1s..4s/' /etc/default/wsbeat
C systemctl start wsbeat.service
# 1 s, 2 s and 4 s answered: 4 s = MAX, the search is over (about 8 s).
state_max() { C grep -qs '^lo good_ms=[4-9][0-9][0-9][0-9] ' /var/lib/private/wsbeat/heartbeat; }
if wait_until 25 state_max; then
  pid=$(prop MainPID); w=$(wsbmark)
  kept=$(C grep '^lo ' /var/lib/private/wsbeat/heartbeat)
  # The dynamic user has no name once the unit stops; its UID is never root's.
  owner=$(C stat -c 'uid %u, mode %a' /var/lib/private/wsbeat/heartbeat 2>&1)
  link=$(C readlink /var/lib/wsbeat)
  out=$(C systemctl restart wsbeat.service 2>&1); rc=$?
  resumed() { wsb_has "$w" 'network path lo: resuming the learned heartbeat at 4'; }
  if [ "$rc" = 0 ] && [ "$(prop MainPID)" != "$pid" ] && wait_until 10 resumed &&
    [ "$link" = private/wsbeat ] && [[ $owner == "uid "[1-9]* ]] &&
    C grep -q '^lo good_ms=[4-9][0-9][0-9][0-9] ' /var/lib/private/wsbeat/heartbeat; then
    pass state "kept as $owner by the dynamic user in /var/lib/private/wsbeat/heartbeat (\"$kept\"), /var/lib/wsbeat -> $link; after systemctl restart: \"$(wsbnew "$w" | grep -m1 -o 'network path.*')\""
  else
    fail state "restart rc=$rc $out; PID $(prop MainPID) (was $pid); owner: $owner; /var/lib/wsbeat -> $link; journal: $(wsbnew "$w" | oneline)"
  fi
else
  fail state "no 4 s gap kept in /var/lib/private/wsbeat/heartbeat: $(C ls -la /var/lib/private/wsbeat 2>&1 | oneline); $(C cat /var/lib/private/wsbeat/heartbeat 2>&1 | oneline); journal: $(jwsb | tail -n 5 | oneline)"
fi
C systemctl stop wsbeat.service
C sed -i 's/^WSBEAT_PING_INTERVAL=auto:1s..4s$/WSBEAT_PING_INTERVAL=2s/' /etc/default/wsbeat

bad=$(jwsb | grep -Ei 'SIGSYS|Bad system call|status=31|Operation not permitted|Permission denied|Address family not supported')
if [ -z "$bad" ]; then pass denials "no SIGSYS/EPERM/EACCES/EAFNOSUPPORT in the unit's journal"
else fail denials "$(printf '%s' "$bad" | head -n 5 | oneline)"; fi

# ---------------------------------------------------------------- misconfiguration stays down
# stays_failed CHECK EXIT WHAT: start must fail with EXIT and not be restarted (> RestartSec=5).
stays_failed() {
  local out rc nr st as
  out=$(C systemctl start wsbeat.service 2>&1); rc=$?
  nr=$(prop NRestarts)   # a manual start resets it
  pause 6.5
  st=$(prop ExecMainStatus); as=$(prop ActiveState)
  if [ "$rc" != 0 ] && [ "$st" = "$2" ] && [ "$as" = failed ] && [ "$(prop NRestarts)" = "$nr" ]; then
    pass "$1" "$3: start fails with exit $st, still $as 6.5 s later, NRestarts=$nr"
  else
    fail "$1" "$3: rc=$rc ExecMainStatus=$st ActiveState=$as NRestarts $nr -> $(prop NRestarts) (restarts in a loop?)"
  fi
  C systemctl reset-failed wsbeat.service
}
C mv /etc/default/wsbeat /etc/default/wsbeat.moved
stays_failed no-config 64 "without /etc/default/wsbeat"
C mv /etc/default/wsbeat.moved /etc/default/wsbeat
C mv /etc/wsbeat/headers /etc/wsbeat/headers.moved
stays_failed no-headers 243 "without /etc/wsbeat/headers (243/CREDENTIALS)"
C mv /etc/wsbeat/headers.moved /etc/wsbeat/headers

# ---------------------------------------------------------------- remove, reinstall, purge
C systemctl start wsbeat.service
out=$(C dpkg -r wsbeat 2>&1); rc=$?
printf '%s\n' "$out" >"$OUT/dpkg-remove.log"
kept=$(C stat -c %n /etc/default/wsbeat /etc/wsbeat/headers 2>&1 | oneline)
procs=$(C pgrep -x wsbeat)
m=$(srvmark)
out2=$(C dpkg -i /var/tmp/wsbeat.deb 2>&1); rc2=$?
enabled=$(C systemctl is-enabled wsbeat.service 2>&1)
C systemctl start wsbeat.service
if [ "$rc" = 0 ] && [ -z "$procs" ] && [ "$kept" = "/etc/default/wsbeat|/etc/wsbeat/headers|" ] &&
  [ "$rc2" = 0 ] && [ "$enabled" = enabled ] && wait_until 10 srv_has "$m" "CONNECT .*Bearer $TOKEN"; then
  pass remove "dpkg -r stopped it and kept the configuration; dpkg -i again: still enabled, connects with the kept token"
else
  fail remove "dpkg -r rc=$rc, wsbeat processes: ${procs:-none}, kept: $kept; dpkg -i rc=$rc2 $(printf '%s' "$out2" | tail -n 2 | oneline); is-enabled: $enabled; server: $(srvnew "$m" | oneline)"
fi

m=$(srvmark)
out=$(C dpkg --purge wsbeat 2>&1); rc=$?
printf '%s\n' "$out" >"$OUT/dpkg-purge.log"
C systemctl daemon-reload
snapshot >"$OUT/files-after.txt"
left=$(comm -13 "$OUT/files-before.txt" "$OUT/files-after.txt")
gone=$(comm -23 "$OUT/files-before.txt" "$OUT/files-after.txt")
procs=$(C pgrep -x wsbeat)
load=$(prop LoadState)
if [ "$rc" = 0 ] && [ -z "$left" ] && [ -z "$gone" ] && [ -z "$procs" ] && [ "$load" = not-found ] &&
  ! C dpkg -s wsbeat >/dev/null 2>&1; then
  pass purge "dpkg --purge of the running service: stopped ($(srvnew "$m" | grep -m1 -o 'code=[0-9a-z]*')), unit $load, no file left behind"
else
  fail purge "rc=$rc $(printf '%s' "$out" | oneline 200); wsbeat processes: ${procs:-none}; LoadState=$load; left behind: $(printf '%s' "$left" | oneline); removed: $(printf '%s' "$gone" | oneline)"
fi

# ---------------------------------------------------------------- summary
log "took $((SECONDS - T_START)) s; logs in $OUT"
echo "$PROG: $NPASS passed, $NFAIL failed"
[ "$NFAIL" = 0 ]
