#!/bin/sh
# Runs inside the test VM (cwd /hmm), from the busybox initramfs that
# run.sh packs. Every test program's output is framed by
#     @@HMM-SECTION BEGIN <driver>.<program>
#     @@HMM-SECTION END rc=<exit status>
# so the host can tell the two drivers' TAP streams apart. Kernel messages
# are kept off the console (they would interleave with TAP lines) and
# printed at the end, per driver, from dmesg.
echo 1 > /proc/sys/kernel/printk
BENCH_MIB="${BENCH_MIB:-64}"
BENCH_ROUNDS="${BENCH_ROUNDS:-5}"
BENCH_PASSES="${BENCH_PASSES:-3}"

section() {
    echo "@@HMM-SECTION BEGIN $1"
    shift
    "$@"
    echo "@@HMM-SECTION END rc=$?"
}

kernel_log() {  # kernel_log NAME FROM_LINE: warnings logged since FROM_LINE
    echo "@@HMM-SECTION BEGIN $1.kernel-log"
    dmesg | tail -n +"$2" | grep -E 'WARNING:|BUG:|Oops|RIP:|Call Trace' 
    echo "@@HMM-SECTION END rc=0"
}

run_driver() {  # run_driver DRIVER KO MODNAME
    drv="$1"; ko="$2"; mod="$3"
    from=$(( $(dmesg | wc -l) + 1 ))
    if ! insmod "$ko"; then
        echo "@@HMM-INSMOD-FAILED $drv"
        return
    fi
    section "$drv.hmm-tests" ./hmm-tests
    section "$drv.uffd" ./uffd_read /dev/hmm_dmirror0
    rmmod "$mod" || echo "@@HMM-RMMOD-FAILED $drv"
    kernel_log "$drv" "$from"
}

bench_driver() {  # bench_driver DRIVER KO MODNAME PASS BENCH_ARGS...
    drv="$1"; ko="$2"; mod="$3"; pass="$4"; shift 4
    insmod "$ko" || { echo "@@HMM-INSMOD-FAILED $drv"; return; }
    section "$drv.bench.$pass" sh -c "./hmm_bench -m $BENCH_MIB -r $BENCH_ROUNDS -n $* &&
                                      ./hmm_bench -m $BENCH_MIB -r $BENCH_ROUNDS $*"
    rmmod "$mod" || echo "@@HMM-RMMOD-FAILED $drv"
}

run_driver c /hmm/test_hmm.ko test_hmm
run_driver rs /hmm/hmm_rs.ko hmm_rs

# Timing: the drivers take turns, so drift in the (emulated, shared) machine
# affects both alike; the host takes the fastest and the median over passes.
pass=1
while [ "$pass" -le "$BENCH_PASSES" ]; do
    bench_driver c /hmm/test_hmm.ko test_hmm "$pass"
    bench_driver rs /hmm/hmm_rs.ko hmm_rs "$pass" -u
    pass=$((pass + 1))
done
