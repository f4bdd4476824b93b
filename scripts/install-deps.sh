#!/usr/bin/env bash
# Install what building and testing Brisk needs on Debian 12. Idempotent and quiet:
# apt runs only when a package is missing.
set -euo pipefail

PKGS=(containerd runc busybox-static strace protobuf-compiler procps tar gzip xz-utils coreutils prometheus)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

# Rust links through the system C compiler.
if ! command -v cc >/dev/null; then
    missing+=(gcc libc6-dev)
fi

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing packages: ${missing[*]} (run as root)" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for bin in containerd ctr runc containerd-shim-runc-v2 protoc; do
    command -v "$bin" >/dev/null || { echo "install-deps: $bin not found after install" >&2; exit 1; }
done
[[ -x /bin/busybox ]] || { echo "install-deps: /bin/busybox missing" >&2; exit 1; }

if ! command -v cargo >/dev/null; then
    if [[ -x $HOME/.cargo/bin/cargo ]]; then
        echo "install-deps: cargo is in $HOME/.cargo/bin but not on PATH" >&2
    else
        echo "install-deps: cargo not found; install Rust with rustup" >&2
    fi
    exit 1
fi
