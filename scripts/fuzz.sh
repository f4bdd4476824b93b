#!/usr/bin/env bash
# Fuzzes the decoding of runtime options, brisk.toml and OCI specs (a bundle's
# config.json, an exec's process spec), and the parsing of
# runc's JSON output, each target for a bounded time:
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Uses a nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs unstable sanitizer flags).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"
secs=${1:-60}
if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
for target in runtime_options brisk_toml runc_output oci_spec; do
    mkdir -p "corpus/$target"
    echo "== fuzz $target for ${secs}s"
    cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
done
