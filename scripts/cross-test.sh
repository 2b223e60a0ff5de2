#!/usr/bin/env bash
# cross-test.sh — cross-compile wsbeat for ARM and run its test suite under qemu-user,
# on a Debian 12 (bookworm) x86_64 machine, as root, without Docker and without rustup
# target downloads. This is what CI runs; users build for their boards with `cross`
# (see README.md, "ARM boards").
#
# Usage:  scripts/cross-test.sh [TARGET...]
#   default targets: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
#
# How (all from Debian's own archive):
#   compiler  rustc-web (Rust 1.85, the crate's MSRV) driven by rustup's cargo if present,
#             else by Debian's cargo-web; RUSTC=/usr/bin/rustc for the whole build
#   std       libstd-rust-web-dev:<arch> of the SAME version, unpacked (not installed:
#             dpkg would drag ~1.2 GB of <arch> LLVM) into /opt/rust-web-cross/<version>
#             and used through --sysroot
#   linker    gcc-<triplet> + libc6-dev-<arch>-cross
#   OpenSSL   libssl-dev:<arch> (multiarch), pinned to the amd64 version
#   runner    qemu-aarch64 / qemu-arm with -L <cross libc> AND -E LD_LIBRARY_PATH=<cross libc>/lib
#             (with -L alone, the multiarch libc6:<arch> pulled in by libssl3:<arch> gets loaded
#             and every multi-threaded test binary spins forever in pthread_create)
#
# Phases: apt (skipped when everything is installed), sysroot, then per target:
# `cargo test --target T --lib --bins --tests` under qemu (doctests run on the host only:
# Debian's rustdoc 1.85 rejects the --test-runtool that newer cargo passes for cross
# doctests), then `cargo build --release --target T`, its stripped size, and the .deb
# (<target-dir>/T/debian/wsbeat_<version>_<arch>.deb, by scripts/build-deb.sh).
#
# Environment knobs:
#   CARGO_TARGET_DIR   as usual (default: ./target)
#   SKIP_APT=1         never call apt (fail if something is missing)
#   SKIP_RELEASE=1     skip the release build / size report (and the .deb)
#   SKIP_DEB=1         do not package the release build (scripts/build-deb.sh --no-build)
#   VENDORED=1         build with --features vendored-openssl (OpenSSL from source, ~2 min
#                      per target and profile) instead of libssl-dev:<arch>; also the
#                      automatic fallback when no libssl-dev:<arch> matching the host's
#                      libssl3 version can be installed
#   LOCKED=0           do not pass --locked to cargo (default: --locked, as CI does)
#   TEST_TIMEOUT       seconds for one target's test run (default 900); the outer net: a
#                      single stuck integration test ends its test binary long before, naming
#                      itself (tests/util/watchdog.rs, budget WSBEAT_TEST_BUDGET_SECS, default
#                      60 s x the emulation factor 5), and a spawn whose fork never reaches
#                      exec (a qemu-user hazard) fails its test at once
#   BUILD_TIMEOUT      seconds for one cargo build (default 1200)
#   TEST_ARGS          extra arguments for the test binaries (after --)
#   RUST_WEB_VERSION   pin Debian's rustc-web version (default: newest that exists for
#                      amd64 and every target arch)
#
# Exports for the tests: WSBEAT_TEST_RUNNER (the qemu command line the integration tests
# prefix to the wsbeat binary they spawn; CARGO_BIN_EXE_wsbeat already points at
# target/<triple>/debug/wsbeat, the ARM binary).
#
# Installed packages are recorded in /var/lib/wsbeat-cross/installed-*.txt;
# the sysroot is /opt/rust-web-cross/<version> (rm -rf to remove).
set -euo pipefail

PROG=cross-test
die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -f "$ROOT/Cargo.toml" ] || die "cannot find Cargo.toml above $0"

if [ $# -gt 0 ]; then TARGETS=("$@"); else
  TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf); fi

# triple -> Debian arch, GNU triplet, qemu binary
deb_arch() {
  case $1 in
    aarch64-unknown-linux-gnu) echo arm64 ;;
    armv7-unknown-linux-gnueabihf) echo armhf ;;
    arm-unknown-linux-gnueabihf)
      die "arm-unknown-linux-gnueabihf (ARMv6) has no std in Debian (its armhf is ARMv7); build it with cross (README.md, 'ARM boards')" ;;
    *) die "unsupported target '$1' (supported: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)" ;;
  esac
}
gnu_triplet() { case $1 in aarch64-*) echo aarch64-linux-gnu ;; armv7-*) echo arm-linux-gnueabihf ;; esac; }
qemu_bin() { case $1 in aarch64-*) echo qemu-aarch64 ;; armv7-*) echo qemu-arm ;; esac; }

ARCHES=()
for t in "${TARGETS[@]}"; do ARCHES+=("$(deb_arch "$t")"); done

[ "$(id -u)" = 0 ] || die "run as root (apt-get, dpkg --add-architecture, /opt)"
command -v dpkg >/dev/null || die "not a Debian system (no dpkg)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "the host must be Debian amd64 (is $(dpkg --print-architecture))"
grep -q 'VERSION_CODENAME=bookworm' /etc/os-release \
  || log "warning: not Debian 12 (bookworm): package names and versions may differ"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1200}
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
T_START=$SECONDS

# cross.toml is for users' `cross` builds (no Docker here): check at least that it parses and
# that every ARM target gets the target's OpenSSL.
if [ -f "$ROOT/cross.toml" ] && python3 -c 'import tomllib' 2>/dev/null; then
  python3 - "$ROOT/cross.toml" <<'PY' || die "cross.toml: see above"
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    cfg = tomllib.load(f)
bad = []
for t in ("aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf", "arm-unknown-linux-gnueabihf"):
    pre = cfg.get("target", {}).get(t, {}).get("pre-build", [])
    if not any("libssl-dev:$CROSS_DEB_ARCH" in c for c in pre):
        bad.append(t)
if bad:
    sys.exit("cross.toml: no pre-build installing libssl-dev:$CROSS_DEB_ARCH for " + ", ".join(bad))
PY
fi
declare -A T_TESTBUILD T_TESTRUN T_REL SIZE RESULT DEB
T_APT=0; T_SYSROOT=0

installed_ver() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1=="ii"{print $2}' || true; }
versions_of() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u; }
# Versions present for every given package spec (name or name:arch).
common_versions() {
  local set="" first=1 spec
  for spec in "$@"; do
    if [ $first = 1 ]; then set=$(versions_of "$spec"); first=0
    else set=$(comm -12 <(echo "$set") <(versions_of "$spec")); fi
  done
  echo "$set"
}
newest() {
  local best="" v
  for v in "$@"; do
    if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
  done
  echo "$best"
}
# shellcheck disable=SC2046
common_version() { newest $(common_versions "$@"); }
# True if a version exists for every spec.
version_everywhere() {
  local v=$1 spec; shift
  for spec in "$@"; do versions_of "$spec" | grep -qxF "$v" || return 1; done
}

# ------------------------------------------------------------------ what is needed
CARGO=${CARGO_BIN:-}
if [ -z "$CARGO" ] && command -v rustup >/dev/null 2>&1; then
  # the toolchain's real cargo (not the proxy), resolved outside the project so that
  # no rust-toolchain file can make rustup try to download anything
  CARGO=$(cd / && { rustup which cargo 2>/dev/null || true; })
fi
[ -n "$CARGO" ] || CARGO=/usr/bin/cargo     # Debian's cargo-web, installed below

TOOLS=(qemu-user pkgconf)
for a in "${ARCHES[@]}"; do
  case $a in
    arm64) TOOLS+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
    armhf) TOOLS+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
  esac
done
[ -n "${VENDORED:-}" ] && TOOLS+=(make perl)

# Is anything missing? (decides whether apt runs at all)
need_apt=0
missing=()
for p in "${TOOLS[@]}"; do [ -n "$(installed_ver "$p")" ] || missing+=("$p"); done
[ -n "$(installed_ver rustc-web)" ] || missing+=(rustc-web)
[ "$CARGO" = /usr/bin/cargo ] && { [ -x /usr/bin/cargo ] || missing+=(cargo-web); }
HOST_SSL=$(installed_ver libssl3:amd64)
if [ -z "${VENDORED:-}" ]; then
  for a in "${ARCHES[@]}"; do
    v=$(installed_ver "libssl-dev:$a")
    if [ -z "$v" ] || [ "$v" != "$HOST_SSL" ]; then missing+=("libssl-dev:$a"); fi
  done
fi
for a in "${ARCHES[@]}"; do
  dpkg --print-foreign-architectures | grep -qx "$a" || missing+=("dpkg-arch:$a")
done
V_HAVE=$(installed_ver rustc-web)
for t in "${TARGETS[@]}"; do
  [ -n "$V_HAVE" ] && [ -f "/opt/rust-web-cross/$V_HAVE/lib/rustlib/$t/.from-deb" ] || missing+=("std:$t")
done
[ ${#missing[@]} -gt 0 ] && need_apt=1

# ------------------------------------------------------------------ apt phase
if [ $need_apt = 1 ]; then
  [ -z "${SKIP_APT:-}" ] || die "SKIP_APT=1 but missing: ${missing[*]}"
  t0=$SECONDS
  log "missing: ${missing[*]}"
  for a in "${ARCHES[@]}"; do
    dpkg --print-foreign-architectures | grep -qx "$a" || { log "dpkg --add-architecture $a"; dpkg --add-architecture "$a"; }
  done
  # A half-synced mirror can fail one index ("Mirror sync in progress?"); apt then drops
  # the other new indexes of that repository. Versions below are therefore chosen from
  # what is present for every architecture.
  ok=0
  for i in 1 2 3; do
    if apt-get update -q -o DPkg::Lock::Timeout=300 >/tmp/wsbeat-cross-apt-update.log 2>&1; then ok=1; break; fi
    log "apt-get update failed (try $i/3): $(grep -m1 '^E:' /tmp/wsbeat-cross-apt-update.log || true)"
    sleep 10
  done
  [ $ok = 1 ] || log "warning: apt-get update failed; continuing with the indexes that loaded"

  specs=(rustc-web libstd-rust-web-dev)
  for a in "${ARCHES[@]}"; do specs+=("libstd-rust-web-dev:$a"); done
  # Prefer the crate's MSRV (rust-version in Cargo.toml), so CI proves it still builds;
  # else the newest version that exists for every architecture.
  MSRV=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -1)
  common=$(common_versions "${specs[@]}")
  if [ -n "${RUST_WEB_VERSION:-}" ]; then V=$RUST_WEB_VERSION
  else
    # shellcheck disable=SC2046
    V=$(newest $(echo "$common" | grep -E "^${MSRV//./\\.}(\.|\+)" || true))
    if [ -z "$V" ]; then
      # shellcheck disable=SC2086
      V=$(newest $common)
      [ -n "$V" ] && log "warning: no rustc-web $MSRV for ${ARCHES[*]}; using $V (the MSRV is not checked by this run)"
    fi
  fi
  [ -n "$V" ] || die "no rustc-web version exists for amd64 and all of ${ARCHES[*]} (check: apt-cache madison rustc-web libstd-rust-web-dev:arm64)"
  log "Debian rustc-web $V (crate MSRV ${MSRV:-?})"

  before=$(mktemp)
  dpkg-query -W -f='${Package}:${Architecture} ${Version}\n' | sort >"$before"
  pkgs=()
  # Name installed unpinned packages never: apt-get install would upgrade them.
  for p in "${TOOLS[@]}"; do [ -n "$(installed_ver "$p")" ] || pkgs+=("$p"); done
  # rustc-web depends on libstd-rust-web-dev (= same version): pin both
  [ "$(installed_ver rustc-web)" = "$V" ] || pkgs+=("rustc-web=$V" "libstd-rust-web-dev=$V")
  if [ "$CARGO" = /usr/bin/cargo ] && [ "$(installed_ver cargo-web)" != "$V" ]; then pkgs+=("cargo-web=$V"); fi

  if [ -z "${VENDORED:-}" ]; then
    # libssl3/libssl-dev are Multi-Arch: same: every architecture must carry the SAME
    # version. Keep the host's version if the archive has it for every arch, else move
    # everything (host included) to the newest common version.
    sspecs=(libssl3 libssl-dev)
    for a in "${ARCHES[@]}"; do sspecs+=("libssl3:$a" "libssl-dev:$a"); done
    if [ -n "$HOST_SSL" ] && version_everywhere "$HOST_SSL" "${sspecs[@]}"; then
      S=$HOST_SSL
    else
      S=$(common_version "${sspecs[@]}")
      if [ -z "$S" ]; then
        log "warning: no libssl3/libssl-dev version exists for amd64 and ${ARCHES[*]} alike (mirror sync?)"
      elif [ -n "$HOST_SSL" ] && dpkg --compare-versions "$HOST_SSL" gt "$S"; then
        # Typically a security update whose ARM indexes failed to load. Downgrading the
        # host's OpenSSL is not an option: build OpenSSL from source instead.
        log "warning: host libssl3 $HOST_SSL is newer than $S, the newest version present for ${ARCHES[*]}"
        S=""
      else
        log "moving libssl3 (amd64) $HOST_SSL -> $S to match the target architectures"
        pkgs+=("libssl3=$S")
        if [ -n "$(installed_ver libssl-dev:amd64)" ]; then pkgs+=("libssl-dev=$S"); fi
      fi
    fi
    if [ -n "$S" ]; then
      log "target OpenSSL: libssl-dev $S"
      for a in "${ARCHES[@]}"; do
        [ "$(installed_ver "libssl-dev:$a")" = "$S" ] || pkgs+=("libssl3:$a=$S" "libssl-dev:$a=$S")
      done
    else
      log "falling back to --features vendored-openssl (OpenSSL built from source, ~2 min per target and profile)"
      VENDORED=1
      for p in make perl; do [ -n "$(installed_ver "$p")" ] || pkgs+=("$p"); done
    fi
  fi

  if [ ${#pkgs[@]} -gt 0 ]; then
    log "apt-get install ${pkgs[*]}"
    timeout 900 apt-get install "${APT_OPTS[@]}" "${pkgs[@]}" >/tmp/wsbeat-cross-apt-install.log 2>&1 \
      || { tail -25 /tmp/wsbeat-cross-apt-install.log >&2; die "apt-get install failed (full log: /tmp/wsbeat-cross-apt-install.log)"; }
    grep -E '^(Need to get|After this operation)' /tmp/wsbeat-cross-apt-install.log >&2 || true
  fi
  mkdir -p /var/lib/wsbeat-cross
  rec=/var/lib/wsbeat-cross/installed-$(date +%Y%m%d-%H%M%S).txt
  dpkg-query -W -f='${Package}:${Architecture} ${Version}\n' | sort | comm -13 "$before" - >"$rec" || true
  rm -f "$before"
  log "packages added or changed: $(wc -l <"$rec") (list: $rec)"
  T_APT=$((SECONDS - t0))
else
  log "all packages present; skipping apt"
fi

# ------------------------------------------------------------------ target std sysroot
[ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing (rustc-web not installed)"
V=$(installed_ver rustc-web)
[ -n "$V" ] || die "rustc-web is not installed (/usr/bin/rustc is $(/usr/bin/rustc -V))"
SR=/opt/rust-web-cross/$V
t0=$SECONDS
for t in "${TARGETS[@]}"; do
  a=$(deb_arch "$t")
  [ -f "$SR/lib/rustlib/$t/.from-deb" ] && continue
  [ -z "${SKIP_APT:-}" ] || die "SKIP_APT=1 but the $t std is missing from $SR"
  tmp=$(mktemp -d); chmod 755 "$tmp"
  log "unpacking libstd-rust-web-dev:$a=$V into $SR"
  (cd "$tmp" && timeout 600 apt-get download -q "libstd-rust-web-dev:$a=$V" >/dev/null 2>&1) \
    || die "apt-get download libstd-rust-web-dev:$a=$V failed (is the $a index loaded? apt-cache madison libstd-rust-web-dev:$a)"
  dpkg-deb -x "$tmp"/libstd-rust-web-dev_*_"$a".deb "$tmp/x"
  [ -d "$tmp/x/usr/lib/rustlib/$t/lib" ] || die "libstd-rust-web-dev:$a has no usr/lib/rustlib/$t"
  mkdir -p "$SR/lib/rustlib"
  rm -rf "${SR:?}/lib/rustlib/$t"
  cp -a "$tmp/x/usr/lib/rustlib/$t" "$SR/lib/rustlib/"
  echo "libstd-rust-web-dev:$a=$V" >"$SR/lib/rustlib/$t/.from-deb"
  rm -rf "$tmp"
done
T_SYSROOT=$((SECONDS - t0))

# ------------------------------------------------------------------ cargo environment
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
for t in "${TARGETS[@]}"; do
  U=$(echo "$t" | tr 'a-z-' 'A-Z_'); l=${t//-/_}; g=$(gnu_triplet "$t"); q=$(qemu_bin "$t")
  command -v "$g-gcc" >/dev/null || die "$g-gcc not found"
  command -v "$q" >/dev/null || die "$q not found (qemu-user)"
  export "CARGO_TARGET_${U}_LINKER=$g-gcc"
  v="CARGO_TARGET_${U}_RUSTFLAGS"; export "$v=--sysroot=$SR${!v:+ ${!v}}"
  export "CARGO_TARGET_${U}_RUNNER=$q -L /usr/$g -E LD_LIBRARY_PATH=/usr/$g/lib"
  export "CC_$l=$g-gcc" "AR_$l=$g-ar"
  export "PKG_CONFIG_ALLOW_CROSS_$l=1" "PKG_CONFIG_LIBDIR_$l=/usr/lib/$g/pkgconfig:/usr/share/pkgconfig"
done
# A global RUSTFLAGS would replace the per-target rustflags (and the --sysroot in them).
if [ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
  export CARGO_ENCODED_RUSTFLAGS="--sysroot=$SR"$'\x1f'"$CARGO_ENCODED_RUSTFLAGS"
elif [ -n "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="--sysroot=$SR $RUSTFLAGS"
fi
FEATURES=()
[ -n "${VENDORED:-}" ] && FEATURES=(--features vendored-openssl)
# Like the rest of CI: the committed Cargo.lock, unchanged (LOCKED=0 to allow updates).
[ "${LOCKED:-1}" = 1 ] && [ -f "$ROOT/Cargo.lock" ] && FEATURES+=(--locked)

log "cargo: $CARGO ($("$CARGO" -V)); rustc: $($RUSTC -V)"
cd "$ROOT"
TD=${CARGO_TARGET_DIR:-$ROOT/target}

# Runs cargo with a time limit and explains MSRV failures. Interactively, --foreground lets
# Ctrl-C reach cargo; otherwise (CI) timeout runs cargo in its own process group and on expiry
# kills the whole group, so no test binary or wsbeat child under qemu outlives the step holding
# the log pipes open.
run_cargo() {
  local what=$1 limit=$2; shift 2
  local log_file; log_file=$(mktemp)
  local rc=0
  local fg=()
  if [ -t 0 ]; then fg=(--foreground); fi
  timeout "${fg[@]}" -k 10 "$limit" "$CARGO" "$@" 2> >(tee "$log_file" >&2) || rc=$?
  if [ $rc = 124 ]; then log "$what: timed out after ${limit}s"; fi
  if [ $rc != 0 ] && grep -qE 'requires rustc [0-9.]+|is not supported by the following package|rustc [0-9.]+ is not supported' "$log_file"; then
    log "$what: a dependency needs a newer Rust than Debian's $($RUSTC -V) (the crate's MSRV)."
    log "  pin it back, e.g.: cargo update -p <crate> --precise <older version>"
  fi
  rm -f "$log_file"
  return $rc
}

FAIL=0
for t in "${TARGETS[@]}"; do
  U=$(echo "$t" | tr 'a-z-' 'A-Z_'); rv="CARGO_TARGET_${U}_RUNNER"
  # The integration tests run the wsbeat binary through this (CARGO_BIN_EXE_wsbeat is
  # target/<triple>/debug/wsbeat, the ARM build).
  export WSBEAT_TEST_RUNNER="${!rv}"
  log "=== $t: building tests (runner: $WSBEAT_TEST_RUNNER)"
  t0=$SECONDS
  if run_cargo "$t build" "$BUILD_TIMEOUT" test --no-run --target "$t" --lib --bins --tests "${FEATURES[@]}"; then
    T_TESTBUILD[$t]=$((SECONDS - t0))
    # the binary the integration tests spawn (CARGO_BIN_EXE_wsbeat) must be the target's
    case $(od -An -tx1 -j18 -N2 "$TD/$t/debug/wsbeat" 2>/dev/null | tr -d ' ') in
      b700 | 2800) ;;
      *) die "$TD/$t/debug/wsbeat is missing or not an ARM binary" ;;
    esac
    log "=== $t: cargo test under qemu"
    t0=$SECONDS
    # shellcheck disable=SC2086
    if run_cargo "$t test" "$TEST_TIMEOUT" test --target "$t" --lib --bins --tests "${FEATURES[@]}" -- ${TEST_ARGS:-}; then
      RESULT[$t]=passed
    else
      RESULT[$t]="TESTS FAILED"; FAIL=1
    fi
    T_TESTRUN[$t]=$((SECONDS - t0))
  else
    T_TESTBUILD[$t]=$((SECONDS - t0)); T_TESTRUN[$t]=-; RESULT[$t]="BUILD FAILED"; FAIL=1
  fi

  if [ -z "${SKIP_RELEASE:-}" ]; then
    log "=== $t: release build"
    t0=$SECONDS
    if run_cargo "$t release" "$BUILD_TIMEOUT" build --release --target "$t" --bin wsbeat "${FEATURES[@]}"; then
      g=$(gnu_triplet "$t"); bin=$TD/$t/release/wsbeat
      # [profile.release] strips already; strip again so the number is right whatever the profile says
      cp "$bin" "$bin.stripped" && "$g-strip" "$bin.stripped"
      SIZE[$t]=$(stat -c %s "$bin.stripped"); rm -f "$bin.stripped"
      if [ -z "${SKIP_DEB:-}" ]; then
        DEB[$t]=$(CARGO_TARGET_DIR=$TD "$ROOT/scripts/build-deb.sh" --no-build "$t") || { DEB[$t]="packaging failed"; FAIL=1; }
      fi
    else
      SIZE[$t]="build failed"; FAIL=1
    fi
    T_REL[$t]=$((SECONDS - t0))
  fi
done

echo "---- cross-test summary ----"
echo "rustc: $($RUSTC -V) (Debian rustc-web $V, sysroot $SR); cargo: $("$CARGO" -V)"
echo "apt: ${T_APT}s, sysroot: ${T_SYSROOT}s"
for t in "${TARGETS[@]}"; do
  line="$t: tests ${RESULT[$t]} (build ${T_TESTBUILD[$t]}s, run ${T_TESTRUN[$t]}s)"
  if [ -z "${SKIP_RELEASE:-}" ] && [ -n "${SIZE[$t]:-}" ]; then
    case ${SIZE[$t]} in
      *[!0-9]*) line="$line; release ${SIZE[$t]}" ;;
      *) line="$line; release build ${T_REL[$t]}s, stripped $(( SIZE[$t] )) bytes ($(awk -v s="${SIZE[$t]}" 'BEGIN{printf "%.2f", s/1048576}') MiB)" ;;
    esac
  fi
  echo "$line"
  if [ -n "${DEB[$t]:-}" ]; then echo "  deb: ${DEB[$t]}"; fi
done
echo "total: $((SECONDS - T_START))s"
[ $FAIL = 0 ] || die "failed (see above)"
