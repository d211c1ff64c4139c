#!/usr/bin/env bash
# Build the Rust-enabled test kernel (bzImage + modules incl. lib/test_hmm.ko),
# install its UAPI headers and build the static kselftest binary hmm-tests.
#
# Everything goes to $HMM_KERNEL_CACHE (default
# /var/cache/hmm-rs/kernel-<pkgversion>-<hash of kernel.config + rustc>),
# outside the repository. If the build stamp for that key exists, nothing is
# done. Run setup.sh first.
#
# Outputs (all under $HMM_KERNEL_CACHE):
#   linux/                       configured + built kernel tree (use with M=)
#   linux/arch/x86/boot/bzImage
#   linux/lib/test_hmm.ko
#   headers/include              make headers_install output
#   hmm-tests                    static tools/testing/selftests/mm/hmm-tests
#   build.log, timings.txt, .build-complete
set -euo pipefail
. "$(dirname "$0")/env.sh"

STAMP="$HMM_KERNEL_CACHE/.build-complete"
LOG="$HMM_KERNEL_CACHE/build.log"
TIMINGS="$HMM_KERNEL_CACHE/timings.txt"

hmm_log "kernel cache: $HMM_KERNEL_CACHE"
if [ -f "$STAMP" ] && [ -f "$HMM_KDIR/arch/x86/boot/bzImage" ] \
    && [ -f "$HMM_KDIR/lib/test_hmm.ko" ] && [ -x "$HMM_KERNEL_CACHE/hmm-tests" ]; then
    hmm_log "build stamp found, nothing to do"
    exit 0
fi

[ -f "$HMM_KERNEL_TARBALL" ] || hmm_die "kernel source $HMM_KERNEL_TARBALL missing (run setup.sh)"
[ -x "$HMM_RUSTC" ] || hmm_die "rustc $HMM_RUSTC missing (run setup.sh)"
[ -x "$HMM_BINDGEN" ] || hmm_die "bindgen $HMM_BINDGEN missing (run setup.sh)"
mkdir -p "$HMM_KERNEL_CACHE"
# Serialise concurrent builds of the same cache directory.
exec 9> "$HMM_KERNEL_CACHE/.lock"
if ! flock -n 9; then
    hmm_log "another build of $HMM_KERNEL_CACHE is running; waiting for it"
    flock 9
fi
if [ -f "$STAMP" ]; then
    hmm_log "build completed by the concurrent run, nothing to do"
    exit 0
fi
: > "$TIMINGS"

stage_start=0
stage() { stage_name="$1"; stage_start=$(date +%s); hmm_log "stage: $stage_name"; }
stage_end() {
    local t=$(( $(date +%s) - stage_start ))
    hmm_log "stage $stage_name done in ${t}s"
    printf '%-22s %5ds\n' "$stage_name" "$t" >> "$TIMINGS"
}

KMAKE=("${HMM_KMAKE[@]}")

# ---------------------------------------------------------------- extract
if [ ! -f "$HMM_KDIR/.hmm-extracted" ]; then
    stage extract
    rm -rf "$HMM_KDIR" "$HMM_KERNEL_CACHE/extract.tmp"
    mkdir -p "$HMM_KERNEL_CACHE/extract.tmp"
    hmm_log "extracting $HMM_KERNEL_TARBALL"
    tar -C "$HMM_KERNEL_CACHE/extract.tmp" -xf "$HMM_KERNEL_TARBALL"
    top="$(find "$HMM_KERNEL_CACHE/extract.tmp" -mindepth 1 -maxdepth 1 -type d | head -n1)"
    [ -f "$top/Makefile" ] || hmm_die "unexpected tarball layout"
    mv "$top" "$HMM_KDIR"
    rmdir "$HMM_KERNEL_CACHE/extract.tmp"
    touch "$HMM_KDIR/.hmm-extracted"
    stage_end
else
    hmm_log "reusing extracted tree $HMM_KDIR"
fi

# ---------------------------------------------------------------- configure
stage configure
hmm_log "checking Rust toolchain: ${KMAKE[*]} rustavailable"
"${KMAKE[@]}" rustavailable

# Parse the fragment into scripts/config arguments.
cfg_args=()
declare -A want=()
while IFS= read -r line; do
    line="${line%%#*}"
    line="$(echo "$line" | tr -d '[:space:]')"
    [ -n "$line" ] || continue
    opt="${line%%=*}"; val="${line#*=}"
    want[$opt]="$val"
    case "$val" in
        y) cfg_args+=(-e "$opt") ;;
        m) cfg_args+=(-m "$opt") ;;
        n) cfg_args+=(-d "$opt") ;;
        *) hmm_die "bad line in $HMM_CONFIG_FRAGMENT: $line" ;;
    esac
# shellcheck disable=SC2086  # a list of fragments, applied in order
done < <(cat $HMM_CONFIG_FRAGMENT)

hmm_log "make tinyconfig"
"${KMAKE[@]}" tinyconfig > /dev/null
hmm_log "applying $HMM_CONFIG_FRAGMENT (${#want[@]} options)"
# Two rounds: options hidden behind a dependency that is enabled in the same
# fragment become visible only after olddefconfig resolves the first round.
for round in 1 2; do
    "$HMM_KDIR/scripts/config" --file "$HMM_KDIR/.config" "${cfg_args[@]}"
    "${KMAKE[@]}" olddefconfig > /dev/null
done

hmm_log "verifying the configuration"
bad=0
for opt in "${!want[@]}"; do
    exp="${want[$opt]}"
    got="$("$HMM_KDIR/scripts/config" --file "$HMM_KDIR/.config" -s "$opt")"
    case "$got" in undef) got=n ;; esac
    if [ "$got" != "$exp" ]; then
        echo "  CONFIG_$opt: wanted $exp, got $got" >&2
        bad=1
    fi
done
[ "$bad" = 0 ] || hmm_die "kernel config did not take every option of $HMM_CONFIG_FRAGMENT (see above)"
for must in RUST=y TEST_HMM=m USERFAULTFD=y HUGETLBFS=y TRANSPARENT_HUGEPAGE=y DEVICE_PRIVATE=y; do
    grep -qx "CONFIG_$must" "$HMM_KDIR/.config" || hmm_die "CONFIG_$must not in .config"
done
hmm_log "config OK: $(grep -cE '=(y|m)$' "$HMM_KDIR/.config") options enabled"
stage_end

# ---------------------------------------------------------------- build
stage "kernel+modules"
hmm_log "${KMAKE[*]} -j$HMM_JOBS bzImage modules  (log: $LOG)"
if ! "${KMAKE[@]}" -j"$HMM_JOBS" bzImage modules > "$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    hmm_die "kernel build failed (full log: $LOG)"
fi
[ -f "$HMM_KDIR/arch/x86/boot/bzImage" ] || hmm_die "no bzImage produced"
[ -f "$HMM_KDIR/lib/test_hmm.ko" ] || hmm_die "no lib/test_hmm.ko produced"
stage_end

# ---------------------------------------------------------------- headers
stage headers_install
rm -rf "$HMM_KERNEL_CACHE/headers"
"${KMAKE[@]}" headers_install INSTALL_HDR_PATH="$HMM_KERNEL_CACHE/headers" > /dev/null
stage_end

# ---------------------------------------------------------------- hmm-tests
stage hmm-tests
sel="$HMM_KDIR/tools/testing/selftests/mm"
hmm_log "gcc -static hmm-tests.c vm_util.c"
(
    cd "$sel"
    gcc -O2 -static \
        -I"$HMM_KERNEL_CACHE/headers/include" -I"$HMM_KDIR" -I.. \
        -I"$HMM_KDIR/tools/include" \
        -o "$HMM_KERNEL_CACHE/hmm-tests" hmm-tests.c vm_util.c -lpthread
)
stage_end

touch "$STAMP"
hmm_log "done. bzImage:   $HMM_KDIR/arch/x86/boot/bzImage"
hmm_log "      test_hmm:  $HMM_KDIR/lib/test_hmm.ko"
hmm_log "      hmm-tests: $HMM_KERNEL_CACHE/hmm-tests"
cat "$TIMINGS" >&2
