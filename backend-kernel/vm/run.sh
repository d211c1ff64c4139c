#!/usr/bin/env bash
# End-to-end kernel harness for hmm_rs: set up the host, build the kernel
# (cached), build the hmm_rs module and the in-VM test programs, pack a
# busybox initramfs, boot it under QEMU and run, in that one VM:
#   1. hmm-tests, uffd_read, the ioctl fuzzer and hmm_bench against the
#      kernel's C driver (lib/test_hmm.ko, the baseline);
#   2. the same against hmm_rs.ko.
# The serial log is the result; `cargo run -p backend-kernel --bin
# kernel-harness` runs this script and then judges the log (per-test table,
# claims, timings, "N passed, M failed").
#
# usage: run.sh [OUTDIR]        (default $HMM_CACHE_ROOT/runs/kernel-harness,
#                               kernel-harness-debug for the debug kernel)
# Env: HMM_KERNEL_FLAVOR=debug uses the debug kernel (kernel-debug.config:
#      lockdep, KASAN, DEBUG_VM, ...) and runs no benchmark;
#      HMM_SKIP_SETUP=1 skips setup.sh; HMM_QEMU_TIMEOUT (default 1500 s,
#      3000 s on the debug kernel);
#      HMM_BENCH_MIB (default 64), HMM_BENCH_ROUNDS (default 5: READ calls
#      per pass), HMM_BENCH_SNAP_ROUNDS (default 21: SNAPSHOT calls per
#      pass), HMM_BENCH_PASSES (default 7): the drivers take turns, one pass
#      each; then both drivers loaded side by side, calls paired:
#      HMM_PAIR_ROUNDS (default 31 READ pairs), HMM_PAIR_SNAP_ROUNDS
#      (default 51 SNAPSHOT pairs), per mapping kind;
#      HMM_FUZZ_SEED (default: the current time), HMM_FUZZ_CALLS (default
#      20000), HMM_FUZZ_SECONDS (default 60): the ioctl fuzzer, per driver.
#      HMM_DIFF_LAYOUTS (default 100): layouts of the differential test.
#
# Device-coherent memory: the VM boots with two 256 MiB ranges of its RAM,
# at 1 GiB and 1.25 GiB, turned into soft-reserved memory (E820 type
# 0xefffffff, `memmap=256M%<addr>-1+0xefffffff`), and both drivers get them
# as spm_addr_dev0/1 for their device-coherent devices 2 and 3.
# Writes OUTDIR/serial.log, OUTDIR/stages.txt and OUTDIR/module-build.log.
# Exit status: non-zero if a build failed or the VM run did not complete.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
crate="$(dirname "$here")"
harness="$crate/harness"
. "$harness/env.sh"

if [ "$HMM_KERNEL_FLAVOR" = debug ]; then
    out="${1:-$HMM_CACHE_ROOT/runs/kernel-harness-debug}"
    passes=0
    qemu_timeout="${HMM_QEMU_TIMEOUT:-3000}"
else
    out="${1:-$HMM_CACHE_ROOT/runs/kernel-harness}"
    passes="${HMM_BENCH_PASSES:-7}"
    qemu_timeout="${HMM_QEMU_TIMEOUT:-1500}"
fi
fuzz_seed="${HMM_FUZZ_SEED:-$(date +%s)}"
spm0=0x40000000 spm1=0x50000000
spm_append="memmap=256M%$spm0-1+0xefffffff memmap=256M%$spm1-1+0xefffffff"
hmm_log "kernel flavor $HMM_KERNEL_FLAVOR; ioctl fuzzer seed $fuzz_seed"
mkdir -p "$out"
: > "$out/stages.txt"
t0=$(date +%s)
timed() {  # timed NAME CMD...
    local name="$1" s rc=0; shift
    s=$(date +%s)
    hmm_log "=== $name"
    "$@" || rc=$?
    printf '%-14s %5ds  (exit %d)\n' "$name" $(( $(date +%s) - s )) "$rc" >> "$out/stages.txt"
    return "$rc"
}

if [ "${HMM_SKIP_SETUP:-0}" != 1 ]; then
    timed setup "$harness/setup.sh"
    unset HMM_KERNEL_CACHE   # setup may have changed the cache key inputs
    . "$harness/env.sh"
fi
timed build-kernel "$harness/build-kernel.sh"

build_module() {
    # The module is built in place for either kernel: start clean.
    "${HMM_KMAKE[@]}" M="$crate/module" clean > /dev/null 2>&1 || true
    if ! "${HMM_KMAKE[@]}" M="$crate/module" modules > "$out/module-build.log" 2>&1; then
        cat "$out/module-build.log" >&2
        return 1
    fi
    [ -f "$crate/module/hmm_rs.ko" ]
}
timed module build_module

build_tests() {
    local cc=(gcc -O2 -Wall -static -I"$HMM_KERNEL_CACHE/headers/include")
    "${cc[@]}" -o "$out/uffd_read" "$crate/tests-vm/uffd_read.c" -lpthread
    "${cc[@]}" -o "$out/hmm_bench" "$crate/tests-vm/hmm_bench.c"
    "${cc[@]}" -o "$out/ioctl_fuzz" "$crate/tests-vm/ioctl_fuzz.c" -lpthread
    "${cc[@]}" -o "$out/hostile" "$crate/tests-vm/hostile.c" -lpthread
    "${cc[@]}" -o "$out/hmm_diff" "$crate/tests-vm/hmm_diff.c"
}
timed tests-vm build_tests

cat > "$out/test.sh" <<EOF
#!/bin/sh
FLAVOR=$HMM_KERNEL_FLAVOR \\
BENCH_MIB=${HMM_BENCH_MIB:-64} BENCH_ROUNDS=${HMM_BENCH_ROUNDS:-5} BENCH_SNAP_ROUNDS=${HMM_BENCH_SNAP_ROUNDS:-21} BENCH_PASSES=$passes \\
PAIR_ROUNDS=${HMM_PAIR_ROUNDS:-31} PAIR_SNAP_ROUNDS=${HMM_PAIR_SNAP_ROUNDS:-51} \\
FUZZ_SEED=$fuzz_seed FUZZ_CALLS=${HMM_FUZZ_CALLS:-20000} FUZZ_SECONDS=${HMM_FUZZ_SECONDS:-60} \\
DIFF_LAYOUTS=${HMM_DIFF_LAYOUTS:-100} \\
SPM_ARGS="spm_addr_dev0=$spm0 spm_addr_dev1=$spm1" \\
    sh /hmm/guest.sh
EOF
timed initramfs "$harness/mkinitramfs.sh" -o "$out/initramfs.cpio.gz" -s "$out/test.sh" \
    "$crate/module/hmm_rs.ko" "$out/uffd_read" "$out/hmm_bench" "$out/ioctl_fuzz" "$out/hostile" "$out/hmm_diff" \
    "$here/guest.sh"

set +e
timed qemu "$harness/run-qemu.sh" -i "$out/initramfs.cpio.gz" -l "$out/serial.log" \
    -a "$spm_append" \
    -t "$qemu_timeout" > /dev/null
qrc=$?
set -e
hmm_log "stage times:"
sed 's/^/    /' "$out/stages.txt" >&2
hmm_log "total $(( $(date +%s) - t0 ))s; serial log: $out/serial.log"
[ "$qrc" = 0 ] || hmm_die "the VM run did not complete (run-qemu.sh exit $qrc)"
