#!/usr/bin/env bash
# Install the Debian packages the checks need, if missing.
set -euo pipefail
pkgs=(rustc-web cargo-web rust-web-src lld)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
else
    echo "all packages present"
fi
/usr/bin/rustc --version
