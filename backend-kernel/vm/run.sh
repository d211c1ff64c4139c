#!/usr/bin/env bash
# End-to-end kernel harness for hmm_rs: set up the host, build the kernel
# (cached), build the hmm_rs module and the in-VM test programs, pack a
# busybox initramfs, boot it under QEMU and run, in that one VM:
#   1. hmm-tests, uffd_read and hmm_bench against the kernel's C driver
#      (lib/test_hmm.ko, the baseline);
#   2. the same against hmm_rs.ko.
# The serial log is the result; `cargo run -p backend-kernel --bin
# kernel-harness` runs this script and then judges the log (per-test table,
# claims, timings, "N passed, M failed").
#
# usage: run.sh [OUTDIR]        (default $HMM_CACHE_ROOT/runs/kernel-harness)
# Env: HMM_SKIP_SETUP=1 skips setup.sh; HMM_QEMU_TIMEOUT (default 1500 s);
#      HMM_BENCH_MIB (default 64), HMM_BENCH_ROUNDS (default 5) per pass,
#      HMM_BENCH_PASSES (default 3): the drivers take turns, one pass each.
# Writes OUTDIR/serial.log, OUTDIR/stages.txt and OUTDIR/module-build.log.
# Exit status: non-zero if a build failed or the VM run did not complete.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
crate="$(dirname "$here")"
harness="$crate/harness"
. "$harness/env.sh"

out="${1:-$HMM_CACHE_ROOT/runs/kernel-harness}"
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
}
timed tests-vm build_tests

cat > "$out/test.sh" <<EOF
#!/bin/sh
BENCH_MIB=${HMM_BENCH_MIB:-64} BENCH_ROUNDS=${HMM_BENCH_ROUNDS:-5} BENCH_PASSES=${HMM_BENCH_PASSES:-3} \\
    sh /hmm/guest.sh
EOF
timed initramfs "$harness/mkinitramfs.sh" -o "$out/initramfs.cpio.gz" -s "$out/test.sh" \
    "$crate/module/hmm_rs.ko" "$out/uffd_read" "$out/hmm_bench" "$here/guest.sh"

set +e
timed qemu "$harness/run-qemu.sh" -i "$out/initramfs.cpio.gz" -l "$out/serial.log" \
    -t "${HMM_QEMU_TIMEOUT:-1500}" > /dev/null
qrc=$?
set -e
hmm_log "stage times:"
sed 's/^/    /' "$out/stages.txt" >&2
hmm_log "total $(( $(date +%s) - t0 ))s; serial log: $out/serial.log"
[ "$qrc" = 0 ] || hmm_die "the VM run did not complete (run-qemu.sh exit $qrc)"
