#!/bin/sh
# Runs inside the test VM (cwd /hmm), from the busybox initramfs that
# run.sh packs. Every test program's output is framed by
#     @@HMM-SECTION BEGIN <driver>.<program>
#     @@HMM-SECTION END rc=<exit status>
# so the host can tell the two drivers' TAP streams apart.
#
# Kernel messages are kept off the console (they would interleave with TAP
# lines). After every phase (boot, each driver's tests, fuzzing, benchmark
# pass and unload) the kernel log is drained (`dmesg -c`) into a section
# `kernel-log.<phase>`, so every message is attributed to the phase that
# caused it. The host (src/klog.rs) fails the run on any splat (warning, BUG,
# oops, lockdep, KASAN, RCU, hung task, Rust panic) outside the C driver's
# own phases.
#
# Events (lines `@@HMM-<WHAT> ...` outside sections): INSMOD-FAILED and
# RMMOD-FAILED <driver>, HUGEPAGES <driver> free=<n> total=<n> (before each
# driver's tests), LOCKDEP <driver> debug_locks=<0|1> (after each driver's
# phases, when the kernel has lockdep), CONFIG flavor=<release|debug>,
# SPM ranges=<n> (soft-reserved ranges for the device-coherent devices).
echo 1 > /proc/sys/kernel/printk
BENCH_MIB="${BENCH_MIB:-64}"
BENCH_ROUNDS="${BENCH_ROUNDS:-5}"
BENCH_SNAP_ROUNDS="${BENCH_SNAP_ROUNDS:-21}"
BENCH_PASSES="${BENCH_PASSES:-7}"
PAIR_ROUNDS="${PAIR_ROUNDS:-31}"
PAIR_SNAP_ROUNDS="${PAIR_SNAP_ROUNDS:-51}"
FLAVOR="${FLAVOR:-release}"
FUZZ_SEED="${FUZZ_SEED:-1}"
FUZZ_CALLS="${FUZZ_CALLS:-20000}"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
DIFF_LAYOUTS="${DIFF_LAYOUTS:-100}"
# Module parameters giving both drivers device-coherent memory (the VM's
# soft-reserved ranges); only the hmm-tests phases use them.
SPM_ARGS="${SPM_ARGS:-}"

echo "@@HMM-CONFIG flavor=$FLAVOR benches=$BENCH_PASSES fuzz_seed=$FUZZ_SEED"

section() {
    echo "@@HMM-SECTION BEGIN $1"
    shift
    "$@"
    echo "@@HMM-SECTION END rc=$?"
}

kernel_log() {  # kernel_log PHASE: drain the kernel log into a section
    echo "@@HMM-SECTION BEGIN kernel-log.$1"
    dmesg -c
    echo "@@HMM-SECTION END rc=0"
}

hugepages() {  # hugepages DRIVER: the huge pages the hugetlb cases will get
    free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    total=$(awk '/^HugePages_Total:/ { print $2 }' /proc/meminfo)
    echo "@@HMM-HUGEPAGES $1 free=${free:-0} total=${total:-0}"
}

lockdep() {  # lockdep DRIVER: is lockdep still validating?
    if [ -r /proc/lockdep_stats ]; then
        dl=$(awk '/debug_locks:/ { print $2 }' /proc/lockdep_stats)
        echo "@@HMM-LOCKDEP $1 debug_locks=${dl:-unknown}"
    fi
}

load() {  # load DRIVER KO [PARAMS...]
    drv="$1"; ko="$2"; shift 2
    # shellcheck disable=SC2086 # PARAMS are words
    insmod "$ko" "$@" && return 0
    echo "@@HMM-INSMOD-FAILED $drv"
    return 1
}

unload() {  # unload DRIVER MODNAME
    rmmod "$2" || echo "@@HMM-RMMOD-FAILED $1"
}

run_driver() {  # run_driver DRIVER KO MODNAME
    drv="$1"; ko="$2"; mod="$3"
    # shellcheck disable=SC2086 # SPM_ARGS are words
    load "$drv" "$ko" $SPM_ARGS || { kernel_log "$drv.load"; return; }
    kernel_log "$drv.load"
    hugepages "$drv"
    section "$drv.hmm-tests" ./hmm-tests
    kernel_log "$drv.hmm-tests"
    section "$drv.uffd" ./uffd_read /dev/hmm_dmirror0
    kernel_log "$drv.uffd"
    section "$drv.hostile" ./hostile /dev/hmm_dmirror0
    kernel_log "$drv.hostile"
    unload "$drv" "$mod"
    kernel_log "$drv.unload"
    lockdep "$drv"
}

fuzz_driver() {  # fuzz_driver DRIVER KO MODNAME
    drv="$1"; ko="$2"; mod="$3"
    load "$drv" "$ko" || { kernel_log "$drv.fuzz"; return; }
    section "$drv.fuzz" ./ioctl_fuzz -s "$FUZZ_SEED" -n "$FUZZ_CALLS" \
        -t "$FUZZ_SECONDS" -d /dev/hmm_dmirror0
    kernel_log "$drv.fuzz"
    unload "$drv" "$mod"
    kernel_log "$drv.fuzz-unload"
    lockdep "$drv"
}

diff_drivers() {  # both drivers loaded side by side, the same questions
    if ! insmod /hmm/test_hmm.ko; then
        echo "@@HMM-INSMOD-FAILED c"
        kernel_log both.diff
        return
    fi
    if insmod /hmm/hmm_rs.ko devname=hmm_rs_dmirror; then
        section both.diff ./hmm_diff -s "$FUZZ_SEED" -n "$DIFF_LAYOUTS" \
            /dev/hmm_dmirror0 /dev/hmm_rs_dmirror0 \
            /dev/hmm_dmirror1 /dev/hmm_rs_dmirror1
        # Self-check: two devices of one driver answer differently for
        # pages on one of them (LOCAL vs NONE); the test must see it.
        section both.diff-selfcheck ./hmm_diff -s "$FUZZ_SEED" -n 10 \
            /dev/hmm_dmirror0 /dev/hmm_dmirror1 \
            /dev/hmm_dmirror1 /dev/hmm_rs_dmirror1
        unload rs hmm_rs
    else
        echo "@@HMM-INSMOD-FAILED rs"
    fi
    unload c test_hmm
    kernel_log both.diff
    lockdep rs
}

bench_driver() {  # bench_driver DRIVER KO MODNAME PASS BENCH_ARGS...
    drv="$1"; ko="$2"; mod="$3"; pass="$4"; shift 4
    load "$drv" "$ko" || { kernel_log "$drv.bench.$pass"; return; }
    section "$drv.bench.$pass" sh -c "./hmm_bench -m $BENCH_MIB -r $BENCH_ROUNDS -s $BENCH_SNAP_ROUNDS -n $* &&
                                      ./hmm_bench -m $BENCH_MIB -r $BENCH_ROUNDS -s $BENCH_SNAP_ROUNDS $*"
    unload "$drv" "$mod"
    kernel_log "$drv.bench.$pass"
}

# Paired timing: both drivers loaded side by side (hmm_rs's nodes renamed),
# each READ / SNAPSHOT of one issued next to the same call of the other on
# the same buffer, so each pair of calls saw the same machine.
bench_paired() {
    if ! insmod /hmm/test_hmm.ko; then
        echo "@@HMM-INSMOD-FAILED c"
        kernel_log both.bench-paired
        return
    fi
    if insmod /hmm/hmm_rs.ko devname=hmm_rs_dmirror; then
        args="-d /dev/hmm_dmirror0 -a /dev/hmm_rs_dmirror0 -m $BENCH_MIB -r $PAIR_ROUNDS -s $PAIR_SNAP_ROUNDS"
        section both.bench-paired sh -c "./hmm_bench $args -n && ./hmm_bench $args"
        unload rs hmm_rs
    else
        echo "@@HMM-INSMOD-FAILED rs"
    fi
    unload c test_hmm
    kernel_log both.bench-paired
}

kernel_log boot
echo "@@HMM-SPM ranges=$(grep -c 'Soft Reserved' /proc/iomem)"

# On the debug kernel hmm_rs goes first: lockdep switches itself off at its
# first report, and a report caused by the C driver must not leave hmm_rs
# unchecked.
if [ "$FLAVOR" = debug ]; then
    run_driver rs /hmm/hmm_rs.ko hmm_rs
    run_driver c /hmm/test_hmm.ko test_hmm
else
    run_driver c /hmm/test_hmm.ko test_hmm
    run_driver rs /hmm/hmm_rs.ko hmm_rs
fi

# The ioctl fuzzer, same seed for both drivers; hmm_rs first, so that a
# crash of the (unhardened) C driver cannot hide hmm_rs's result.
fuzz_driver rs /hmm/hmm_rs.ko hmm_rs
fuzz_driver c /hmm/test_hmm.ko test_hmm

# The differential test: test_hmm and hmm_rs loaded together (hmm_rs's
# nodes renamed), each layout asked of both.
diff_drivers

# Timing: the drivers take turns, so drift in the (emulated, shared) machine
# affects both alike; the host takes the fastest and the median over passes.
pass=1
while [ "$pass" -le "$BENCH_PASSES" ]; do
    bench_driver c /hmm/test_hmm.ko test_hmm "$pass"
    bench_driver rs /hmm/hmm_rs.ko hmm_rs "$pass" -u
    pass=$((pass + 1))
done
if [ "$BENCH_PASSES" -gt 0 ]; then
    bench_paired
fi
kernel_log end
