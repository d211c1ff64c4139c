#!/usr/bin/env bash
# Boot the test kernel with an initramfs under QEMU and capture the serial log.
#
# usage: run-qemu.sh -i INITRAMFS -l LOGFILE [-k BZIMAGE] [-t TIMEOUT_S] [-a EXTRA_APPEND]
#
# Defaults: -k the cached bzImage, -t 600. Serial output goes to stdout and
# to LOGFILE. Software emulation (TCG) by default; HMM_QEMU_KVM=1 adds
# -enable-kvm (on the nested-virt dev machine KVM hung / -cpu host aborted on
# MSR 0x10a, so it is opt-in). HMM_QEMU_MEM / HMM_QEMU_SMP override 2G / 2.
# Exit status: 0 if the guest reached "@@HMM-HARNESS DONE", 124 on timeout,
# 3 if the kernel panicked / oopsed fatally, 1 otherwise.
set -euo pipefail
. "$(dirname "$0")/env.sh"

kernel="$HMM_KDIR/arch/x86/boot/bzImage" initrd="" log="" tmo=600 extra=""
while getopts "k:i:l:t:a:h" o; do
    case "$o" in
        k) kernel="$OPTARG" ;;
        i) initrd="$OPTARG" ;;
        l) log="$OPTARG" ;;
        t) tmo="$OPTARG" ;;
        a) extra="$OPTARG" ;;
        *) sed -n '2,10p' "$0"; exit 2 ;;
    esac
done
[ -n "$initrd" ] && [ -n "$log" ] || { sed -n '2,10p' "$0"; exit 2; }
[ -f "$kernel" ] || hmm_die "kernel image $kernel not found"
[ -f "$initrd" ] || hmm_die "initramfs $initrd not found"
command -v qemu-system-x86_64 > /dev/null || hmm_die "qemu-system-x86_64 not installed (run setup.sh)"

accel=()
if [ "${HMM_QEMU_KVM:-0}" = 1 ]; then
    accel=(-enable-kvm)
    hmm_log "using KVM (HMM_QEMU_KVM=1)"
else
    hmm_log "no KVM: software emulation (TCG)"
fi

append="console=ttyS0 panic=-1 transparent_hugepage=always $extra"
cmd=(qemu-system-x86_64 "${accel[@]}" -m "${HMM_QEMU_MEM:-2G}" -smp "${HMM_QEMU_SMP:-2}"
     -nographic -no-reboot -kernel "$kernel" -initrd "$initrd" -append "$append")
mkdir -p "$(dirname "$log")"
hmm_log "timeout ${tmo}s ${cmd[*]}"
hmm_log "serial log: $log"
start=$(date +%s)
set +e
timeout --kill-after=10 "$tmo" "${cmd[@]}" < /dev/null 2>&1 | tr -d '\r' | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo   # the guest's last line usually has no newline
hmm_log "qemu exited with $rc after $(( $(date +%s) - start ))s"

if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    hmm_log "TIMEOUT after ${tmo}s"
    exit 124
fi
if grep -q '^@@HMM-HARNESS DONE' "$log"; then
    exit 0
fi
if grep -qE 'Kernel panic|end Kernel panic' "$log"; then
    hmm_log "kernel panic (see $log)"
    exit 3
fi
if ! grep -q '^@@HMM-HARNESS BOOTED' "$log"; then
    hmm_log "the guest never reached /init (see $log)"
fi
exit 1
