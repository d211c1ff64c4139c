#!/usr/bin/env bash
# End-to-end baseline: set up, build the kernel (cached), build an initramfs,
# boot it, load the kernel's C reference driver test_hmm.ko, run the kselftest
# hmm-tests, unload the driver, and summarise the results.
#
# usage: baseline.sh [OUTDIR]     (default $HMM_CACHE_ROOT/runs/baseline)
#
# Env: HMM_SKIP_SETUP=1 skips setup.sh; HMM_QEMU_TIMEOUT (default 900 s);
#      HMM_STRICT=1 also fails when a test fails.
# Writes OUTDIR/serial.log, OUTDIR/results.txt, OUTDIR/initramfs.cpio.gz.
# Exit status: non-zero if the kernel did not boot or the run did not finish
# (or, with HMM_STRICT=1, if any test failed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

out="${1:-$HMM_CACHE_ROOT/runs/baseline}"
mkdir -p "$out"
t0=$(date +%s)
times=()
timed() {  # timed NAME CMD...  (returns the command's status)
    local name="$1" s rc=0; shift
    s=$(date +%s)
    hmm_log "=== $name"
    "$@" || rc=$?
    times+=("$(printf '%-14s %5ds  (exit %d)' "$name" $(( $(date +%s) - s )) "$rc")")
    return "$rc"
}

if [ "${HMM_SKIP_SETUP:-0}" != 1 ]; then
    timed setup "$here/setup.sh"
    # setup may have installed rustc/linux-source: recompute the cache key.
    unset HMM_KERNEL_CACHE
    . "$here/env.sh"
fi
timed build-kernel "$here/build-kernel.sh"

cat > "$out/test.sh" <<'EOF'
#!/bin/sh
# Runs inside the VM (cwd /hmm).
echo "== insmod test_hmm.ko"
if ! insmod /hmm/test_hmm.ko; then
    echo "@@HMM-BASELINE insmod-failed"
    exit 1
fi
ls -l /dev/hmm_dmirror* 2>&1
echo "== hmm-tests"
./hmm-tests
echo "@@HMM-BASELINE hmm-tests-exit=$?"
echo "== rmmod test_hmm"
rmmod test_hmm && echo "@@HMM-BASELINE rmmod-ok" || echo "@@HMM-BASELINE rmmod-failed"
echo "== kernel warnings"
dmesg | grep -E 'WARNING|BUG|Oops|RIP:' || echo "(none)"
EOF

timed mkinitramfs "$here/mkinitramfs.sh" -o "$out/initramfs.cpio.gz" -s "$out/test.sh"

set +e
timed qemu "$here/run-qemu.sh" -i "$out/initramfs.cpio.gz" -l "$out/serial.log" \
    -t "${HMM_QEMU_TIMEOUT:-900}"
qrc=$?
set -e

hmm_log "=== results"
set +e
if [ "${HMM_STRICT:-0}" = 1 ]; then
    "$here/parse-kselftest.sh" --strict "$out/serial.log" > "$out/results.txt"
else
    "$here/parse-kselftest.sh" "$out/serial.log" > "$out/results.txt"
fi
prc=$?
set -e
column -t -s "$(printf '\t')" < "$out/results.txt" 2>/dev/null || cat "$out/results.txt"

hmm_log "stage times:"
printf '    %s\n' "${times[@]}" >&2
hmm_log "total $(( $(date +%s) - t0 ))s"
hmm_log "serial log: $out/serial.log   results: $out/results.txt"

if ! grep -q '^@@HMM-HARNESS BOOTED' "$out/serial.log"; then
    hmm_die "the kernel did not boot to /init"
fi
grep -q '^@@HMM-BASELINE insmod-failed' "$out/serial.log" && hmm_die "insmod test_hmm.ko failed"
[ "$qrc" = 0 ] || hmm_die "QEMU run did not complete (run-qemu.sh exit $qrc)"
[ "$prc" = 0 ] || hmm_die "test results incomplete or failing (parse-kselftest.sh exit $prc)"
tail -n 1 "$out/results.txt"
