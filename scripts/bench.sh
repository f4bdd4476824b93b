#!/usr/bin/env bash
# Stock runc shim vs brisk, in one run on one private containerd: shim RSS per
# pod and per extra container, median CRI create->start->exit->remove time.
# `sudo ./scripts/bench.sh [--iterations 20] [--containers 5] [--list-pods 10] [--list-per-pod 10] [--handlers runc,brisk]`
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --release --workspace --quiet
exec "$BIN_DIR/brisk-bench" "$@"
