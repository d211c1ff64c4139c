#!/usr/bin/env bash
# Run make in the cached kernel tree with the right toolchain, e.g. to build
# an out-of-tree (Rust + C shim) module:
#
#     backend-kernel/harness/kmake.sh M=/abs/path/to/module modules
#     backend-kernel/harness/kmake.sh M=/abs/path/to/module rust-analyzer
#     backend-kernel/harness/kmake.sh M=/abs/path/to/module clean
#
# Equivalent to: make -C $HMM_KDIR LLVM=1 RUSTC=/usr/bin/rustc \
#                     BINDGEN=$HMM_TOOLS_DIR/bin/bindgen "$@"
# M= must be an absolute path. Run build-kernel.sh first.
set -euo pipefail
. "$(dirname "$0")/env.sh"
[ -f "$HMM_KERNEL_CACHE/.build-complete" ] \
    || hmm_die "kernel not built in $HMM_KERNEL_CACHE (run build-kernel.sh)"
hmm_log "${HMM_KMAKE[*]} $*"
exec "${HMM_KMAKE[@]}" "$@"
