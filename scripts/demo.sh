#!/usr/bin/env bash
# Run one short-task pod under brisk in a private containerd and print its
# lifecycle; then, for the stock runc shim and for brisk side by side, a
# container that exits while strace delays its shim's umount2 by 10 s and a
# kubelet-like loop runs, with ListContainers latency and exit->EXITED in a
# table. About 2 minutes; everything is removed afterwards.
# `sudo ./scripts/demo.sh [--handler brisk|runc] [--delay-secs 10] [--no-compare]`
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --release --workspace --quiet
exec "$BIN_DIR/brisk-demo" "$@"
