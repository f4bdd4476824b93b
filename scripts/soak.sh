#!/usr/bin/env bash
# The soak benchmark: 1000 short tasks under brisk by default (10 pods at
# once, 100 tasks each, umount2 delayed on 2 shims), with a kubelet-like loop;
# prints the shims' RSS/fd curve, ListContainers p50/p99/max and leaks.
#   sudo ./scripts/soak.sh [--pods N] [--tasks-per-pod N] [--delayed-shims N] [--delay-ms N]
# The chaos soak (integration/src/chaos.rs): containerd restarts, shim
# kills, delayed unmounts, hung runc, a full containerd root and OOM kills
# at once on a seeded schedule, every task's end checked:
#   sudo ./scripts/soak.sh --chaos [--seed N] [--handler runc] [--short]
# (10 pods x 100 tasks by default; --short is the test command's run).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --release --workspace --quiet
exec "$BIN_DIR/brisk-soak" "$@"
