#!/bin/sh
# Checks systemd/wsbeat.service and systemd/wsbeat.socket: `systemd-analyze
# verify` must pass for both, the socket must be the contract's
# (ListenStream=/run/wsbeat.sock, SocketMode=0660, SocketGroup=wsbeat) with the
# service keeping DynamicUser=yes, and `systemd-analyze security --offline=yes`
# must report an overall exposure of at most 1.2 (MAX_EXPOSURE, in tenths: 12)
# for the service. Prints the score.
#
# Needs systemd-analyze (Debian: apt-get install -y systemd); works without
# systemd running as PID 1. verify insists that ExecStart= exists, so a copy
# of the unit pointing at a built wsbeat is checked: $WSBEAT_BIN, else
# target/{release,debug}/wsbeat (honouring CARGO_TARGET_DIR), else it runs
# `cargo build --bin wsbeat` first.
set -eu

MAX_EXPOSURE=${MAX_EXPOSURE:-12}
root=$(cd "$(dirname "$0")/.." && pwd)
unit="$root/systemd/wsbeat.service"
socket_unit="$root/systemd/wsbeat.socket"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-unit: systemd-analyze not found (apt-get install -y systemd)" >&2
    exit 2
fi

find_bin() {
    if [ -n "${WSBEAT_BIN:-}" ]; then
        echo "$WSBEAT_BIN"
        return
    fi
    target=${CARGO_TARGET_DIR:-$root/target}
    for profile in release debug; do
        if [ -x "$target/$profile/wsbeat" ]; then
            echo "$target/$profile/wsbeat"
            return
        fi
    done
    (cd "$root" && cargo build --quiet --bin wsbeat) >&2
    echo "$target/debug/wsbeat"
}

bin=$(find_bin)
case $bin in
    /*) ;;
    *) bin="$(pwd)/$bin" ;;
esac
if [ ! -x "$bin" ]; then
    echo "check-unit: no executable wsbeat at $bin" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# Same file name, so systemd sees the same unit; only the binary path differs.
sed "s|^ExecStart=/usr/bin/wsbeat|ExecStart=$bin|" "$unit" >"$tmp/wsbeat.service"
if ! grep -q "^ExecStart=$bin" "$tmp/wsbeat.service"; then
    echo "check-unit: ExecStart=/usr/bin/wsbeat not found in $unit" >&2
    exit 1
fi
cp "$socket_unit" "$tmp/wsbeat.socket"
for want in ListenStream=/run/wsbeat.sock SocketMode=0660 SocketGroup=wsbeat Accept=no; do
    if ! grep -qx "$want" "$socket_unit"; then
        echo "check-unit: FAIL: $socket_unit lacks $want" >&2
        exit 1
    fi
done
if ! grep -qx DynamicUser=yes "$unit"; then
    echo "check-unit: FAIL: $unit lacks DynamicUser=yes" >&2
    exit 1
fi
# /bin/kill (ExecReload=) comes from procps, which minimal images lack;
# every full Debian install has it (priority: important).
if [ ! -x /bin/kill ]; then
    echo "check-unit: note: /bin/kill missing (install procps); verifying ExecReload= with /bin/true"
    sed -i "s|^ExecReload=/bin/kill |ExecReload=/bin/true |" "$tmp/wsbeat.service"
fi

# Documentation=man:wsbeat(1): verify asks man(1) for it, so offer the repository's page.
man_opt=--man=yes
if command -v man >/dev/null 2>&1; then
    mkdir -p "$tmp/man/man1"
    cp "$root/docs/wsbeat.1" "$tmp/man/man1/wsbeat.1"
    MANPATH=$tmp/man
    export MANPATH
else
    echo "check-unit: note: man not found (apt-get install man-db); Documentation= not checked"
    man_opt=--man=no
fi

echo "check-unit: systemd-analyze verify wsbeat.service wsbeat.socket (ExecStart=$bin)"
# verify reports problems on stderr but may still exit 0 for some of them.
if ! systemd-analyze verify "$man_opt" "$tmp/wsbeat.service" "$tmp/wsbeat.socket" >"$tmp/verify.log" 2>&1; then
    cat "$tmp/verify.log" >&2
    echo "check-unit: FAIL: systemd-analyze verify" >&2
    exit 1
fi
if grep -q "wsbeat\.s" "$tmp/verify.log"; then
    cat "$tmp/verify.log" >&2
    echo "check-unit: FAIL: systemd-analyze verify complained about wsbeat.service or wsbeat.socket" >&2
    exit 1
fi
cat "$tmp/verify.log"

systemd-analyze security --offline=yes "$tmp/wsbeat.service" >"$tmp/security.log" 2>&1 || true
score_line=$(grep "Overall exposure level" "$tmp/security.log" || true)
if [ -z "$score_line" ]; then
    cat "$tmp/security.log" >&2
    echo "check-unit: FAIL: no exposure score from systemd-analyze security" >&2
    exit 1
fi
grep "✗" "$tmp/security.log" || true
echo "check-unit: $score_line"
if ! systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE" \
    "$tmp/wsbeat.service" >/dev/null 2>&1; then
    echo "check-unit: FAIL: exposure above $MAX_EXPOSURE/10" >&2
    exit 1
fi
echo "check-unit: OK (exposure at most $MAX_EXPOSURE/10)"
