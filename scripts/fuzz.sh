#!/bin/sh
# Fuzzes the pure parsers for a bounded time: scripts/fuzz.sh [SECONDS]
#
# Runs each cargo-fuzz target in fuzz/ (parse_args, parse_duration,
# parse_header_file; or those in $FUZZ_TARGETS) for SECONDS (default 60) and
# prints executions per target. Exits 1 if any target fails; the input that
# crashed it is saved in fuzz/artifacts/<target>/ (replay it with
# `cargo fuzz run <target> fuzz/artifacts/<target>/<file>` from fuzz/).
#
# Needs cargo-fuzz (installed here if missing) and a C++ compiler for
# libFuzzer. cargo-fuzz passes -Z flags to rustc (AddressSanitizer, coverage
# instrumentation); on a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc accept
# them, so no nightly toolchain is needed. The seeds in fuzz/corpus/ are only
# read; the growing corpus and the logs stay under the fuzz build directory
# ($CARGO_TARGET_DIR, else fuzz/target).
set -eu

secs=${1:-60}
case $secs in
'' | *[!0-9]* | 0)
    echo "usage: scripts/fuzz.sh [SECONDS]  (whole seconds per target, at least 1)" >&2
    exit 64
    ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
case $(rustc --version) in
*nightly*) ;;
*) export RUSTC_BOOTSTRAP=1 ;;
esac

targets=${FUZZ_TARGETS:-parse_args parse_duration parse_header_file}
work=${CARGO_TARGET_DIR:-$root/fuzz/target}/fuzz-corpus
status=0
for target in $targets; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    # -a: debug assertions, so arithmetic overflow is a crash too.
    if cargo fuzz run -a "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -dict="dict/$target.dict" \
        -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        echo "fuzz $target: ok, ${runs:-?} executions in ${secs} s (${rate:-?}/s)"
    else
        status=1
        echo "fuzz $target: FAILED (crash input, if any, in fuzz/artifacts/$target/); end of $log:"
        tail -n 40 "$log"
    fi
done
exit $status
