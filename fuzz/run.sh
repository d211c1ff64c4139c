#!/usr/bin/env bash
# Run each fuzz target for a bounded time and print its execution count.
#
#   fuzz/run.sh [seconds per target, default 60]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). With a nightly toolchain
# it uses the default AddressSanitizer build; otherwise it uses the stable
# toolchain with RUSTC_BOOTSTRAP=1 and `--sanitizer none` (also forced by
# FUZZ_STABLE=1; hmm-core and the
# models are safe Rust, so the sanitizer adds little). The seed corpus in
# fuzz/corpus/<target> is copied to a scratch corpus first, so a run never
# changes the committed seeds.
set -euo pipefail
secs="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"

if [ "${FUZZ_STABLE:-0}" != 1 ] && rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    mode="nightly, address sanitizer"
else
    fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
    sanitizer=(--sanitizer none)
    mode="stable with RUSTC_BOOTSTRAP=1, no sanitizer"
fi
echo "cargo fuzz: $mode"

total=0
for target in walk driver raw_walk raw_driver; do
    scratch="$(mktemp -d)"
    cp corpus/"$target"/* "$scratch"/
    log="$(mktemp)"
    "${fuzz[@]}" run ${sanitizer[@]+"${sanitizer[@]}"} "$target" "$scratch" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || {
        tail -60 "$log"
        echo "fuzz target $target FAILED"
        exit 1
    }
    runs="$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)"
    rate="$(grep -oE 'average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+' | tail -1)"
    cov="$(grep -oE 'DONE +cov: [0-9]+' "$log" | grep -oE '[0-9]+' | tail -1)"
    echo "fuzz target $target: ${runs:-0} executions in ${secs} s (${rate:-0}/s, ${cov:-?} coverage edges), no failure"
    total=$((total + ${runs:-0}))
    rm -rf "$scratch" "$log"
done
echo "fuzz total: $total executions"
