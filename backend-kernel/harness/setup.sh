#!/usr/bin/env bash
# Idempotently install what the kernel harness needs on Debian 12 (bookworm),
# as root: the apt packages of packages.txt, QEMU from bookworm-backports, and bindgen-cli
# into $HMM_TOOLS_DIR (default /var/cache/hmm-rs/tools).
#
# QEMU comes from bookworm-backports because machines that already carry
# backports' qemu-utils cannot install bookworm's qemu-system-x86 next to it.
set -euo pipefail
. "$(dirname "$0")/env.sh"

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# The package list lives in packages.txt (also read by declared-path.sh):
# one package per line, `#` comments, `bpo:` = from bookworm-backports,
# $HMM_KERNEL_PKG = env.sh's kernel source package.
apt_pkgs=()
bpo_pkgs=()
while read -r pkg extra; do
    [ -n "$pkg" ] || continue
    [ -z "$extra" ] || hmm_die "packages.txt: one package per line, got: $pkg $extra"
    pkg="${pkg//'$HMM_KERNEL_PKG'/$HMM_KERNEL_PKG}"
    case "$pkg" in
        bpo:*) bpo_pkgs+=("${pkg#bpo:}") ;;
        *) apt_pkgs+=("$pkg") ;;
    esac
done < <(sed 's/#.*//' "$HMM_HARNESS_DIR/packages.txt")
[ "${#apt_pkgs[@]}" -gt 0 ] || hmm_die "no packages in $HMM_HARNESS_DIR/packages.txt"

missing() {  # print the packages of "$@" that are not installed
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
            || echo "$p"
    done
}

# ------------------------------------------------------------ backports
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    hmm_log "adding bookworm-backports to /etc/apt/sources.list.d/bookworm-backports.list"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' \
        | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list > /dev/null
    need_update=1
fi

mapfile -t miss < <(missing "${apt_pkgs[@]}")
mapfile -t miss_bpo < <(missing "${bpo_pkgs[@]}")
if [ "${#miss[@]}" -gt 0 ] || [ "${#miss_bpo[@]}" -gt 0 ] || [ -n "${need_update:-}" ]; then
    hmm_log "apt-get update"
    $SUDO apt-get update -q
fi
if [ "${#miss[@]}" -gt 0 ]; then
    hmm_log "apt-get install ${miss[*]}"
    $SUDO apt-get install -y -q --no-install-recommends "${miss[@]}"
else
    hmm_log "apt packages already installed"
fi
if [ "${#miss_bpo[@]}" -gt 0 ]; then
    hmm_log "apt-get install -t bookworm-backports ${miss_bpo[*]}"
    $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${bpo_pkgs[@]}"
else
    hmm_log "qemu already installed: $(qemu-system-x86_64 --version | head -n1)"
fi

# ------------------------------------------------------------ bindgen
if [ -x "$HMM_BINDGEN" ] && "$HMM_BINDGEN" --version 2>/dev/null | grep -q "$HMM_BINDGEN_VERSION"; then
    hmm_log "bindgen present: $("$HMM_BINDGEN" --version)"
else
    cargo=/root/.cargo/bin/cargo          # rustup stable
    [ -x "$cargo" ] || cargo="$(command -v cargo || true)"
    [ -x "$cargo" ] || cargo=/usr/bin/cargo
    hmm_log "installing bindgen-cli $HMM_BINDGEN_VERSION into $HMM_TOOLS_DIR with $cargo"
    mkdir -p "$HMM_TOOLS_DIR"
    "$cargo" install --locked bindgen-cli --version "$HMM_BINDGEN_VERSION" --root "$HMM_TOOLS_DIR"
    "$HMM_BINDGEN" --version
fi

hmm_log "rustc:   $("$HMM_RUSTC" --version)"
hmm_log "clang:   $(clang --version | head -n1)"
hmm_log "kernel:  $(dpkg-query -W -f='${Package} ${Version}' "$HMM_KERNEL_PKG")"
hmm_log "setup complete"
