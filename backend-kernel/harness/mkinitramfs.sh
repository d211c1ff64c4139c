#!/usr/bin/env bash
# Build a busybox-static initramfs (gzip'ed newc cpio) for the test VM.
#
# usage: mkinitramfs.sh -o OUT.cpio.gz -s TEST_SCRIPT [EXTRA_FILE...]
#
# Contents of the image:
#   /bin/busybox (+ applet links created at boot), /init
#   /hmm/test.sh         the TEST_SCRIPT (run with sh, cwd /hmm)
#   /hmm/hmm-tests       kselftest binary from the kernel cache
#   /hmm/test_hmm.ko     the kernel's C reference driver (lib/test_hmm.ko)
#   /hmm/<basename>      each EXTRA_FILE (e.g. our .ko, a userfaultfd test)
#
# /init mounts proc, sysfs, devtmpfs, tmpfs on /tmp, debugfs, hugetlbfs on
# /dev/hugepages, reserves $HMM_HUGEPAGES (default 8) 2 MiB huge pages, runs
# /hmm/test.sh and powers off. Serial-log markers (one per line):
#   @@HMM-HARNESS BOOTED <uname -r>
#   @@HMM-HARNESS TEST-START
#   @@HMM-HARNESS TEST-END rc=<exit code of test.sh>
#   @@HMM-HARNESS DONE
# Uses the kernel's usr/gen_init_cpio, so it needs no root and no mknod.
set -euo pipefail
. "$(dirname "$0")/env.sh"

out="" script=""
while getopts "o:s:h" o; do
    case "$o" in
        o) out="$OPTARG" ;;
        s) script="$OPTARG" ;;
        *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ -n "$out" ] && [ -n "$script" ] || { sed -n '2,20p' "$0"; exit 2; }
[ -f "$script" ] || hmm_die "test script $script not found"

busybox="${HMM_BUSYBOX:-/bin/busybox}"
hmmtests="$HMM_KERNEL_CACHE/hmm-tests"
testhmm="$HMM_KDIR/lib/test_hmm.ko"
hugepages="${HMM_HUGEPAGES:-8}"
for f in "$busybox" "$hmmtests" "$testhmm" "$@"; do
    [ -f "$f" ] || hmm_die "missing input file: $f (did build-kernel.sh run?)"
done
file "$busybox" 2>/dev/null | grep -q 'statically linked' \
    || hmm_log "warning: $busybox does not look statically linked"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

gen="$HMM_KDIR/usr/gen_init_cpio"
if [ ! -x "$gen" ]; then
    hmm_log "compiling gen_init_cpio from the kernel tree"
    gcc -O2 -o "$work/gen_init_cpio" "$HMM_KDIR/usr/gen_init_cpio.c"
    gen="$work/gen_init_cpio"
fi

cat > "$work/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
mkdir -p /dev/hugepages /dev/shm
mount -t hugetlbfs hugetlbfs /dev/hugepages || echo "init: hugetlbfs mount failed"
mount -t tmpfs tmpfs /dev/shm
echo $hugepages > /proc/sys/vm/nr_hugepages || echo "init: cannot reserve huge pages"
echo "init: nr_hugepages=\$(cat /proc/sys/vm/nr_hugepages)" \
     "thp=\$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)" \
     "cpus=\$(grep -c ^processor /proc/cpuinfo) mem=\$(grep MemTotal /proc/meminfo)"
echo "@@HMM-HARNESS BOOTED \$(uname -r)"
cd /hmm
echo "@@HMM-HARNESS TEST-START"
sh /hmm/test.sh
rc=\$?
echo "@@HMM-HARNESS TEST-END rc=\$rc"
sync
echo "@@HMM-HARNESS DONE"
poweroff -f
EOF

list="$work/list"
{
    echo "dir /bin 0755 0 0"
    echo "dir /sbin 0755 0 0"
    echo "dir /usr 0755 0 0"
    echo "dir /usr/bin 0755 0 0"
    echo "dir /usr/sbin 0755 0 0"
    echo "dir /dev 0755 0 0"
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "nod /dev/null 0666 0 0 c 1 3"
    echo "dir /proc 0755 0 0"
    echo "dir /sys 0755 0 0"
    echo "dir /tmp 1777 0 0"
    echo "dir /root 0700 0 0"
    echo "dir /hmm 0755 0 0"
    echo "file /bin/busybox $busybox 0755 0 0"
    echo "slink /bin/sh busybox 0777 0 0"
    echo "file /init $work/init 0755 0 0"
    echo "file /hmm/test.sh $(readlink -f "$script") 0755 0 0"
    echo "file /hmm/hmm-tests $hmmtests 0755 0 0"
    echo "file /hmm/test_hmm.ko $testhmm 0644 0 0"
    for f in "$@"; do
        echo "file /hmm/$(basename "$f") $(readlink -f "$f") 0755 0 0"
    done
} > "$list"

hmm_log "initramfs contents:"
grep -E '^file' "$list" | awk '{print "    " $2 "  <-  " $3}' >&2
mkdir -p "$(dirname "$out")"
"$gen" "$list" | gzip -9 > "$out"
hmm_log "wrote $out ($(du -h "$out" | cut -f1))"
