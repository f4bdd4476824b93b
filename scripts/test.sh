#!/usr/bin/env bash
# The one test command: `sudo ./scripts/test.sh [extra cargo test args]`.
# Installs what is missing, builds the test images and the workspace, runs the
# unit and integration tests (integration tests need root), and checks that
# no test instance was left behind.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: not root: integration tests will be skipped" >&2
fi

echo "== cargo build --release --workspace"
cargo build --release --workspace

echo "== cargo test --workspace --release"
status=0
cargo test --workspace --release --no-fail-fast "$@" || status=$?

left=$(leftover_instances)
if [[ -n $left ]]; then
    echo "test.sh: test instances left behind:" >&2
    echo "$left" >&2
    status=1
fi
for r in /run/containerd/runc /run/containerd/brisk; do
    for d in "$r"/brisk-it-*; do
        [[ -e $d ]] && { echo "test.sh: runc root left behind: $d" >&2; status=1; }
    done
done
if [[ -d /sys/fs/cgroup ]]; then
    for d in /sys/fs/cgroup/*/brisk-it-*; do
        [[ -e $d ]] && { echo "test.sh: cgroup left behind: $d" >&2; status=1; }
    done
fi
exit "$status"
