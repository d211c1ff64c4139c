#!/usr/bin/env bash
# Build the no_std crates for bare-metal targets with Debian's rustc and
# build-std (see ../shared/reference/toolchain.md in the design notes).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${BARE_METAL_TARGET_DIR:-$PWD/target/bare-metal}"
for target in x86_64-unknown-none aarch64-unknown-none; do
    echo "-- hmm-core (no registry crates) for $target"
    (cd hmm-core && /usr/bin/cargo build -q --no-default-features -Zbuild-std=core --target "$target")
    echo "-- hmm-core (default features) for $target"
    (cd hmm-core && /usr/bin/cargo build -q -Zbuild-std=core --target "$target")
    echo "-- backend-hypervisor for $target"
    (cd backend-hypervisor && /usr/bin/cargo build -q -Zbuild-std=core --target "$target")
done
echo "bare-metal builds ok"
