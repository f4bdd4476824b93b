#!/usr/bin/env bash
# A node full of pods, stock shim vs brisk, in one run on one private
# containerd: shim RSS and PSS summed over 110 pods, the time to start them
# 10 at a time, containerd's RSS, and what the shims do while the pods idle
# for 60 s (CPU time, context switches).
# `sudo ./scripts/bench-density.sh [--pods 110] [--parallel 10] [--idle-secs 60] [--handlers runc,brisk]`
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --release --workspace --quiet
exec "$BIN_DIR/brisk-density" "$@"
