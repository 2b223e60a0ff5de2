#!/usr/bin/env bash
# build-deb.sh — package wsbeat as a Debian binary package with plain dpkg-deb
# (no cargo-deb, nothing to compile besides wsbeat itself).
#
# Usage:  scripts/build-deb.sh [--no-build] [TARGET]
#   TARGET      Rust target triple; default: the host's (rustc -vV)
#   DEB_MAINTAINER  the Maintainer field (default: a placeholder)
#   --no-build  package the binary already at <target-dir>/TARGET/release/wsbeat
#               (e.g. after `cross build --release --target TARGET` or scripts/cross-test.sh)
#
# Output: <target-dir>/TARGET/debian/wsbeat_<version>_<arch>.deb  (target-dir: $CARGO_TARGET_DIR
# or ./target), containing
#   /usr/bin/wsbeat                       the stripped release binary
#   /lib/systemd/system/wsbeat.service    from systemd/wsbeat.service
#   /lib/systemd/system/wsbeat.socket     from systemd/wsbeat.socket (/run/wsbeat.sock)
#   /etc/default/wsbeat                   from systemd/wsbeat.env (conffile, mode 0600)
#   /usr/share/man/man1/wsbeat.1.gz       from docs/wsbeat.1 (tests/manpage.rs keeps it in
#                                         step with --help; rendered here with man --warnings)
#   /usr/share/doc/wsbeat/copyright
# The maintainer scripts create an empty /etc/wsbeat/headers (the unit's LoadCredential=
# needs it) and the system group wsbeat (who may use /run/wsbeat.sock), enable both units
# on the first install and start the socket; the service starts at the next boot or at a
# local client's first connect: set WSBEAT_URL in /etc/default/wsbeat first, then
# `systemctl restart wsbeat`. Purge removes the group, the links and the headers file.
#
# Building for another target runs `$CARGO build --release --target TARGET`: set CARGO=cross
# (with CROSS_CONFIG=cross.toml) to build with cross, or build first and pass --no-build.
# Depends: computed by dpkg-shlibdeps when available (needs the target's libc6/libssl3
# installed, multiarch), else derived from the binary's GLIBC_* symbol versions.
set -euo pipefail

PROG=build-deb
die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

BUILD=1
if [ "${1:-}" = --no-build ]; then BUILD=0; shift; fi
[ $# -le 1 ] || die "usage: $0 [--no-build] [TARGET]"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
HOST=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p') || true
T=${1:-${HOST:-x86_64-unknown-linux-gnu}}

case $T in
  x86_64-unknown-linux-gnu) ARCH=amd64; STRIP="strip" ;;
  aarch64-unknown-linux-gnu) ARCH=arm64; STRIP=aarch64-linux-gnu-strip ;;
  armv7-unknown-linux-gnueabihf) ARCH=armhf; STRIP=arm-linux-gnueabihf-strip ;;
  # Raspbian / Raspberry Pi OS call their ARMv6 hard-float port armhf too.
  arm-unknown-linux-gnueabihf) ARCH=armhf; STRIP=arm-linux-gnueabihf-strip ;;
  *) die "unsupported target '$T' (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, arm-unknown-linux-gnueabihf)" ;;
esac
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
for f in systemd/wsbeat.service systemd/wsbeat.socket systemd/wsbeat.env docs/wsbeat.1; do
  [ -f "$f" ] || die "$f is missing"
done

NAME=wsbeat
VERSION=$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' Cargo.toml | head -1)
SYNOPSIS="WebSocket heartbeat client with jittered reconnects"   # <= 80 columns
MAINTAINER=${DEB_MAINTAINER:-"wsbeat maintainers <wsbeat@example.org>"}
LICENSE=$(sed -n '/^\[package\]/,/^\[/{s/^license *= *"\([^"]*\)".*/\1/p}' Cargo.toml | head -1)
[ -n "$VERSION" ] || die "no version in Cargo.toml [package]"
TD=${CARGO_TARGET_DIR:-$ROOT/target}
case $TD in /*) ;; *) TD=$ROOT/$TD ;; esac
BIN=$TD/$T/release/wsbeat

if [ $BUILD = 1 ]; then
  log "$CARGO build --release --target $T"
  "$CARGO" build --release --target "$T" --bin wsbeat \
    || die "build failed (for an ARM target: CARGO=cross CROSS_CONFIG=cross.toml $0 $T, or build first and use --no-build)"
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"
case $(od -An -tx1 -j18 -N2 "$BIN" | tr -d ' ') in   # ELF e_machine
  3e00) m=amd64 ;; b700) m=arm64 ;; 2800) m=armhf ;; *) m=unknown ;;
esac
[ "$m" = "$ARCH" ] || die "$BIN is not a $ARCH binary (ELF machine: $m)"

OUT=$TD/$T/debian
STAGE=$OUT/$NAME-$VERSION-$ARCH
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/etc/default" \
  "$STAGE/usr/share/doc/$NAME" "$STAGE/usr/share/man/man1"

install -m 0755 "$BIN" "$STAGE/usr/bin/wsbeat"
if command -v "$STRIP" >/dev/null; then
  "$STRIP" --strip-unneeded --remove-section=.comment --remove-section=.note "$STAGE/usr/bin/wsbeat"
else
  log "warning: $STRIP not found; packaging the binary as built ([profile.release] strips it)"
fi
install -m 0644 systemd/wsbeat.service "$STAGE/lib/systemd/system/wsbeat.service"
install -m 0644 systemd/wsbeat.socket "$STAGE/lib/systemd/system/wsbeat.socket"
# wsbeat(1). Rendered the way lintian does (groff warnings are its groff-message), when
# man-db is there.
if command -v man >/dev/null; then
  warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z docs/wsbeat.1 2>&1 >/dev/null) \
    || die "man -l docs/wsbeat.1 failed: $warnings"
  [ -z "$warnings" ] || die "docs/wsbeat.1: $warnings"
fi
gzip -9n <docs/wsbeat.1 >"$STAGE/usr/share/man/man1/wsbeat.1.gz"
# The environment file may hold the server URL and other settings: root only.
install -m 0600 systemd/wsbeat.env "$STAGE/etc/default/wsbeat"
echo /etc/default/wsbeat >"$STAGE/DEBIAN/conffiles"
cat >"$STAGE/usr/share/doc/$NAME/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $NAME

Files: *
Copyright: $(date +%Y) the $NAME contributors
License: ${LICENSE:-see upstream}
EOF
# Native package: the Debian changelog is the only one (lintian: no-changelog).
DATE=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
printf '%s (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
  "$NAME" "$VERSION" "$VERSION" "$MAINTAINER" "$DATE" | gzip -9n >"$STAGE/usr/share/doc/$NAME/changelog.gz"
# /etc/default/wsbeat is root-only on purpose (same mode as the unit's install notes).
mkdir -p "$STAGE/usr/share/lintian/overrides"
echo "$NAME: non-standard-file-perm 0600 != 0644 [etc/default/wsbeat]" >"$STAGE/usr/share/lintian/overrides/$NAME"
chmod 0644 "$STAGE/usr/share/doc/$NAME/copyright" "$STAGE/usr/share/doc/$NAME/changelog.gz" \
  "$STAGE/usr/share/lintian/overrides/$NAME" "$STAGE/usr/share/man/man1/wsbeat.1.gz"

# ---------------------------------------------------------------- Depends
depends=""
if command -v dpkg-shlibdeps >/dev/null; then
  tmp=$(mktemp -d)
  mkdir -p "$tmp/debian"
  printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$NAME" "$NAME" >"$tmp/debian/control"
  if out=$(cd "$tmp" && dpkg-shlibdeps -O --warnings=0 "$STAGE/usr/bin/wsbeat" 2>"$tmp/err"); then
    depends=$(echo "$out" | sed -n 's/^shlibs:Depends=//p')
  else
    log "dpkg-shlibdeps failed ($(head -1 "$tmp/err")); deriving Depends from symbol versions"
  fi
  rm -rf "$tmp"
fi
if [ -z "$depends" ]; then
  glibc=$(LC_ALL=C readelf -V "$STAGE/usr/bin/wsbeat" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  depends="libc6 (>= ${glibc:-2.34}), libgcc-s1 (>= 3.0)"
  # none with --features vendored-openssl (OpenSSL linked in statically)
  if LC_ALL=C readelf -d "$STAGE/usr/bin/wsbeat" | grep -q 'NEEDED.*libssl\.so\.3'; then
    depends="$depends, libssl3 (>= 3.0.0)"
  fi
fi
log "Depends: $depends"

SIZE_KB=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $SIZE_KB
Depends: $depends
Section: net
Priority: optional
Description: ${SYNOPSIS}
 wsbeat keeps one WebSocket connection (ws:// or wss://) alive with a ping/pong
 heartbeat and reconnects with jittered exponential backoff. It runs as a
 hardened systemd service (wsbeat.service) configured in /etc/default/wsbeat;
 the device's programs share the connection through /run/wsbeat.sock
 (wsbeat.socket, for root and the group wsbeat).
EOF

cat >"$STAGE/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # wsbeat.service hands /etc/wsbeat/headers over with LoadCredential=, which
    # fails when the file is missing: create an empty, root-only one.
    install -d -m 0700 /etc/wsbeat
    [ -e /etc/wsbeat/headers ] || install -m 0600 /dev/null /etc/wsbeat/headers
    # Who may use the local socket /run/wsbeat.sock (wsbeat.socket: SocketGroup=wsbeat).
    getent group wsbeat >/dev/null || groupadd --system wsbeat
    # As dh_installsystemd does: enable both units on the first install (and record the
    # links, so that purge removes them), and undo the mask a `remove` left.
    if command -v deb-systemd-helper >/dev/null; then
        for unit in wsbeat.socket wsbeat.service; do
            deb-systemd-helper unmask "$unit" >/dev/null || true
            if deb-systemd-helper --quiet was-enabled "$unit"; then
                deb-systemd-helper enable "$unit" >/dev/null || true
            else
                deb-systemd-helper update-state "$unit" >/dev/null || true
            fi
        done
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # The socket listens at once; the service starts at a client's first connect, at
        # the next boot or by hand. Upgrade: a running service restarts on the new binary.
        deb-systemd-invoke start wsbeat.socket >/dev/null || true
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart wsbeat.service >/dev/null || true
        fi
    fi
    if [ -z "$2" ]; then
        echo "wsbeat: set WSBEAT_URL in /etc/default/wsbeat, then: systemctl restart wsbeat"
    fi
fi
exit 0
EOF
cat >"$STAGE/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop wsbeat.socket wsbeat.service >/dev/null || true
fi
exit 0
EOF
cat >"$STAGE/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
# remove: the admin's enable links stay (the unit is masked meanwhile); purge: they go.
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask wsbeat.socket wsbeat.service >/dev/null || true
fi
if [ "$1" = purge ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge wsbeat.socket wsbeat.service >/dev/null || true
    deb-systemd-helper unmask wsbeat.socket wsbeat.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    rm -f /etc/wsbeat/headers
    rmdir /etc/wsbeat 2>/dev/null || true
    if getent group wsbeat >/dev/null; then
        groupdel wsbeat >/dev/null 2>&1 || echo "wsbeat: the group wsbeat was kept (still in use?)" >&2
    fi
fi
# purge: what --ping-interval auto learned (StateDirectory=wsbeat; with DynamicUser=
# systemd keeps it under /var/lib/private, which systemd's tmpfiles own, and links
# /var/lib/wsbeat to it; without DynamicUser= /var/lib/wsbeat is the folder itself).
if [ "$1" = purge ]; then
    rm -rf /var/lib/private/wsbeat /var/lib/wsbeat
fi
exit 0
EOF
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"

DEB=$OUT/${NAME}_${VERSION}_${ARCH}.deb
# --root-owner-group: files owned by root in the package without needing fakeroot.
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
rm -rf "$STAGE"
log "wrote $DEB ($(stat -c %s "$DEB") bytes; /usr/bin/wsbeat $(dpkg-deb --fsys-tarfile "$DEB" | tar -tvf - ./usr/bin/wsbeat | awk '{print $3}') bytes)"
echo "$DEB"
