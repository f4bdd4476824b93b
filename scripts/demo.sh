#!/usr/bin/env bash
# Run one short-task pod under brisk in a private containerd and print its
# lifecycle; then, for the stock runc shim and for brisk side by side, a
# container that exits while strace delays its shim's umount2 by 10 s and a
# kubelet-like loop runs, with ListContainers latency and exit->EXITED in a
# table. About 2 minutes; everything but the logs is removed afterwards.
# `sudo ./scripts/demo.sh [--handler brisk|runc] [--delay-secs 10] [--no-compare]`
# `./scripts/demo.sh --help` prints this and the demo's flags, installing nothing.
# containerd's logs (with the shims' lines) are kept in target/demo-logs/.
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    sed -n '2,/^$/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
    demo=$(dirname "${BASH_SOURCE[0]}")/../target/$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')/release/brisk-demo
    [[ -x $demo ]] && echo && exec "$demo" --help
    exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cargo build --release --workspace --quiet
exec "$BIN_DIR/brisk-demo" "$@"
