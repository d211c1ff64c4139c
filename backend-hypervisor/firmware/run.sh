#!/usr/bin/env bash
# Build the firmware image, boot it under QEMU (aarch64 virt, EL2, 2 CPUs),
# parse the UART log and report "N passed, M failed".
#
# Exit status: 0 only if the image built, QEMU exited 0 within the timeout,
# every TEST line passed, and the firmware printed FIRMWARE PASS.
#
# Environment: FW_TIMEOUT (seconds, default 300), FW_PROFILE (dev|release,
# default dev), CARGO_TARGET_DIR (default <repo>/target/firmware),
# FW_LOG (where to keep the UART log, default <target dir>/firmware.log).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export RUSTC="${RUSTC:-/usr/bin/rustc}" RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/firmware}"
timeout_s="${FW_TIMEOUT:-300}"
profile="${FW_PROFILE:-dev}"
case "$profile" in
    dev) profile_dir=debug; profile_flag=() ;;
    release) profile_dir=release; profile_flag=(--release) ;;
    *) echo "FW_PROFILE must be dev or release" >&2; exit 2 ;;
esac

for tool in /usr/bin/cargo "$RUSTC" ld.lld qemu-system-aarch64; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

echo "== build (cargo build -Zbuild-std=core --target aarch64-unknown-none)"
(cd "$here" && RUSTFLAGS="-C link-arg=-T$here/link.ld -C linker=ld.lld" \
    /usr/bin/cargo build -q -Zbuild-std=core --target aarch64-unknown-none "${profile_flag[@]}")
image="$CARGO_TARGET_DIR/aarch64-unknown-none/$profile_dir/hmm-firmware"
log="${FW_LOG:-$CARGO_TARGET_DIR/firmware.log}"

echo "== boot (qemu-system-aarch64 -machine virt,virtualization=on -cpu cortex-a57 -smp 2 -m 2G, timeout ${timeout_s}s)"
set +e
timeout --foreground -k 5 "$timeout_s" qemu-system-aarch64 \
    -machine virt,virtualization=on -cpu cortex-a57 -smp 2 -m 2G \
    -nographic -no-reboot -monitor none -serial stdio \
    -kernel "$image" </dev/null | tr -d '\r' | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e

passed=$(grep -c '^TEST .* \.\.\. ok$' "$log" || true)
failed=$(grep -c '^TEST .* \.\.\. FAILED' "$log" || true)
echo "== $passed passed, $failed failed (QEMU exit status $qemu_rc; log in $log)"

status=0
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    echo "QEMU timed out after ${timeout_s}s" >&2; status=1
elif [ "$qemu_rc" -ne 0 ]; then
    echo "QEMU exited with status $qemu_rc" >&2; status=1
fi
if ! grep -q '^FIRMWARE PASS$' "$log"; then
    echo "the firmware did not report FIRMWARE PASS" >&2; status=1
fi
if [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
    status=1
fi
expected=$(sed -n 's/^RESULT \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$log")
if [ "$expected" != "$passed $failed" ]; then
    echo "TEST lines ($passed/$failed) disagree with the firmware's RESULT line ($expected)" >&2; status=1
fi
exit $status
