#!/usr/bin/env bash
# Run one short-task pod under brisk in a private containerd and print its
# lifecycle: `sudo ./scripts/demo.sh [--handler brisk|runc]`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --release --workspace --quiet
exec "$ROOT/target/release/brisk-demo" "$@"
