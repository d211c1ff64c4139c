#!/usr/bin/env bash
# Build the firmware image once, boot it under QEMU (aarch64 virt, EL2,
# 2 CPUs) on each CPU model of a matrix, parse each UART log and report
# "N passed, M failed" per model.
#
# The default matrix covers the PA ranges and stage-2 layouts QEMU's
# EL2-capable models offer: 40 bits (stage 2 from level 1 with two
# concatenated root tables), 44 bits and 48 bits (level 0), and Armv8.0 to
# Armv9 feature sets (hardware access/dirty flags, LPA2, ...).
#
# Exit status: 0 only if the image built and, on every model, QEMU exited 0
# within the timeout, every TEST line passed, the firmware printed
# FIRMWARE PASS and its RESULT line agrees with the TEST lines.
#
# Environment: FW_CPUS (space-separated QEMU CPU models, default below),
# FW_TIMEOUT (seconds per model, default 300), FW_PROFILE (dev|release,
# default dev), CARGO_TARGET_DIR (default <repo>/target/firmware),
# FW_LOG_DIR (where to keep the UART logs, firmware-<cpu>.log, default the
# target dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export RUSTC="${RUSTC:-/usr/bin/rustc}" RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/firmware}"
timeout_s="${FW_TIMEOUT:-300}"
profile="${FW_PROFILE:-dev}"
cpus="${FW_CPUS:-cortex-a53 cortex-a57 cortex-a72 cortex-a76 cortex-a710 neoverse-n1 neoverse-v1 max}"
log_dir="${FW_LOG_DIR:-$CARGO_TARGET_DIR}"
case "$profile" in
    dev) profile_dir=debug; profile_flag=() ;;
    release) profile_dir=release; profile_flag=(--release) ;;
    *) echo "FW_PROFILE must be dev or release" >&2; exit 2 ;;
esac
[ -n "${cpus// /}" ] || { echo "FW_CPUS is empty" >&2; exit 2; }

for tool in /usr/bin/cargo "$RUSTC" ld.lld qemu-system-aarch64; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

echo "== build (cargo build -Zbuild-std=core --target aarch64-unknown-none)"
(cd "$here" && RUSTFLAGS="-C link-arg=-T$here/link.ld -C linker=ld.lld" \
    /usr/bin/cargo build -q -Zbuild-std=core --target aarch64-unknown-none "${profile_flag[@]}")
image="$CARGO_TARGET_DIR/aarch64-unknown-none/$profile_dir/hmm-firmware"
mkdir -p "$log_dir"

# Boot the image on CPU model $1; print its log; set run_status / summary.
run_one() {
    local cpu="$1" log="$log_dir/firmware-$1.log" qemu_rc passed failed expected pa status=0
    echo "== boot (qemu-system-aarch64 -machine virt,virtualization=on -cpu $cpu -smp 2 -m 2G, timeout ${timeout_s}s)"
    set +e
    timeout --foreground -k 5 "$timeout_s" qemu-system-aarch64 \
        -machine virt,virtualization=on -cpu "$cpu" -smp 2 -m 2G \
        -nographic -no-reboot -monitor none -serial stdio \
        -kernel "$image" </dev/null | tr -d '\r' | tee "$log"
    qemu_rc=${PIPESTATUS[0]}
    set -e
    passed=$(grep -c '^TEST .* \.\.\. ok$' "$log" || true)
    failed=$(grep -c '^TEST .* \.\.\. FAILED' "$log" || true)
    echo "== $cpu: $passed passed, $failed failed (QEMU exit status $qemu_rc; log in $log)"
    if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
        echo "$cpu: QEMU timed out after ${timeout_s}s" >&2; status=1
    elif [ "$qemu_rc" -ne 0 ]; then
        echo "$cpu: QEMU exited with status $qemu_rc" >&2; status=1
    fi
    if ! grep -q '^FIRMWARE PASS$' "$log"; then
        echo "$cpu: the firmware did not report FIRMWARE PASS" >&2; status=1
    fi
    if [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
        status=1
    fi
    expected=$(sed -n 's/^RESULT \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$log")
    if [ "$expected" != "$passed $failed" ]; then
        echo "$cpu: TEST lines ($passed/$failed) disagree with the firmware's RESULT line ($expected)" >&2; status=1
    fi
    pa=$(sed -n 's/^stage 2: .*(\(PA [0-9]* bits, IPA [0-9]* bits\), T0SZ [0-9]*, \(start level [0-9]*, [0-9]* root table(s)\)).*/\1, \2/p' "$log")
    summary+=("$(printf '%-12s %3d passed, %d failed  %s  %s' "$cpu" "$passed" "$failed" \
        "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "${pa:-(no stage-2 line)}")")
    run_status=$status
}

summary=()
overall=0
for cpu in $cpus; do
    run_status=1
    run_one "$cpu"
    [ "$run_status" -eq 0 ] || overall=1
done

echo "== matrix"
printf '%s\n' "${summary[@]}"
if [ "$overall" -eq 0 ]; then
    echo "== every CPU model passed"
else
    echo "== at least one CPU model failed" >&2
fi
exit $overall
