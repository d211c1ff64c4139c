# shellcheck shell=bash
# Common settings for the hmm-rs kernel harness. Source it:
#
#     . backend-kernel/harness/env.sh
#
# It defines (without building anything):
#   HMM_HARNESS_DIR   this directory
#   HMM_CACHE_ROOT    /var/cache/hmm-rs           (env override)
#   HMM_TOOLS_DIR     $HMM_CACHE_ROOT/tools       (bindgen lives in bin/)
#   HMM_RUSTC         /usr/bin/rustc              (Debian rustc-web; env override)
#   HMM_BINDGEN       $HMM_TOOLS_DIR/bin/bindgen  (env override)
#   HMM_KERNEL_TARBALL /usr/src/linux-source-6.12.tar.xz (env override)
#   HMM_KERNEL_CACHE  per-config build directory  (env override)
#   HMM_KDIR          $HMM_KERNEL_CACHE/linux     (configured+built kernel tree)
#   HMM_KMAKE         array: make -C $HMM_KDIR LLVM=1 RUSTC=... BINDGEN=...
#
# Build an out-of-tree (Rust) module against the cached kernel with:
#     "${HMM_KMAKE[@]}" M=/path/to/module/dir modules

HMM_HARNESS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HMM_CACHE_ROOT="${HMM_CACHE_ROOT:-/var/cache/hmm-rs}"
HMM_TOOLS_DIR="${HMM_TOOLS_DIR:-$HMM_CACHE_ROOT/tools}"
HMM_RUSTC="${HMM_RUSTC:-/usr/bin/rustc}"
HMM_BINDGEN="${HMM_BINDGEN:-$HMM_TOOLS_DIR/bin/bindgen}"
HMM_BINDGEN_VERSION="0.71.1"
HMM_KERNEL_PKG="${HMM_KERNEL_PKG:-linux-source-6.12}"
HMM_KERNEL_TARBALL="${HMM_KERNEL_TARBALL:-/usr/src/$HMM_KERNEL_PKG.tar.xz}"
# HMM_KERNEL_FLAVOR=debug adds kernel-debug.config (lockdep, KASAN, DEBUG_VM,
# ...) after kernel.config. HMM_CONFIG_FRAGMENT: space-separated fragments,
# applied in order (a later line for the same option wins).
HMM_KERNEL_FLAVOR="${HMM_KERNEL_FLAVOR:-release}"
case "$HMM_KERNEL_FLAVOR" in
    release) hmm_default_fragments="$HMM_HARNESS_DIR/kernel.config" ;;
    debug) hmm_default_fragments="$HMM_HARNESS_DIR/kernel.config $HMM_HARNESS_DIR/kernel-debug.config" ;;
    *) printf 'HMM_KERNEL_FLAVOR must be release or debug, not %s\n' "$HMM_KERNEL_FLAVOR" >&2; exit 2 ;;
esac
HMM_CONFIG_FRAGMENT="${HMM_CONFIG_FRAGMENT:-$hmm_default_fragments}"
HMM_JOBS="${HMM_JOBS:-$(( $(nproc) + 1 ))}"

hmm_log() { printf '[harness %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
hmm_die() { printf '[harness %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# Cache key: kernel package version + hash of (config fragment, rustc version).
# The rustc version is part of the key because out-of-tree Rust modules must
# be compiled by exactly the rustc that built the kernel.
hmm_kernel_key() {
    local pkgver hash rustcver
    pkgver="$(dpkg-query -W -f='${Version}' "$HMM_KERNEL_PKG" 2>/dev/null || echo unknown)"
    pkgver="${pkgver//[^A-Za-z0-9.+-]/-}"
    rustcver="$("$HMM_RUSTC" --version 2>/dev/null || echo no-rustc)"
    # shellcheck disable=SC2086  # a list of fragments
    hash="$( { cat $HMM_CONFIG_FRAGMENT; echo "$rustcver"; } | sha256sum | cut -c1-12)"
    printf 'kernel-%s-%s' "$pkgver" "$hash"
}

if [ -z "${HMM_KERNEL_CACHE:-}" ]; then
    HMM_KERNEL_CACHE="$HMM_CACHE_ROOT/$(hmm_kernel_key)"
fi
HMM_KDIR="$HMM_KERNEL_CACHE/linux"
HMM_KMAKE=(make -C "$HMM_KDIR" LLVM=1 "RUSTC=$HMM_RUSTC" "BINDGEN=$HMM_BINDGEN")
export HMM_KERNEL_FLAVOR HMM_HARNESS_DIR HMM_CACHE_ROOT HMM_TOOLS_DIR HMM_RUSTC HMM_BINDGEN \
    HMM_KERNEL_TARBALL HMM_CONFIG_FRAGMENT HMM_KERNEL_CACHE HMM_KDIR HMM_JOBS
