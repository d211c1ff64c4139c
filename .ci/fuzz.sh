#!/usr/bin/env bash
# Install cargo-fuzz if missing and run every fuzz target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install -q cargo-fuzz --locked
fi
bash fuzz/run.sh "${FUZZ_SECONDS:-30}"
