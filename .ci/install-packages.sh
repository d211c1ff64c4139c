#!/usr/bin/env bash
# Install what the checks need on a fresh Debian 12 machine, if missing:
# Debian's rustc-web (bare-metal targets, the kernel), clang/lld/llvm, QEMU
# (x86_64 and aarch64, from bookworm-backports), the kernel source package,
# busybox, bindgen-cli. The kernel harness's setup script knows the list.
set -euo pipefail
cd "$(dirname "$0")/.."
bash backend-kernel/harness/setup.sh
/usr/bin/rustc --version
