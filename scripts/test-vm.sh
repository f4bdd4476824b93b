#!/usr/bin/env bash
# The cgroup v2 + systemd lane: the integration tests in a Debian 12 guest
# (systemd as PID 1, cgroup v2, runc with the systemd cgroup driver) under
# QEMU's TCG, against containerd 1.6.20 (the guest's) and 2.3.4 (built on
# the host by scripts/build-containerd-from-source.sh, when present), and
# the crun lane (lifecycle, features, cgroups with Debian's crun
# under both shims, on 1.6.20: README, "OCI runtimes"):
#
#   sudo ./scripts/test-vm.sh [brisk-vm flags]     e.g. --groups lifecycle --containerd 1.6.20
#
# Builds (and caches in target/vm) the guest image with scripts/vm/build-image.sh,
# builds the test executables, the shim and the .deb on the host, boots the
# guest with the workspace shared read-only by 9p, runs the tests and
# collects their logs in target/vm/results (see integration/src/vm.rs and
# `cargo run -p brisk-integration --bin brisk-vm -- --help`). Exits non-zero
# when any test group fails; qemu never outlives it.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "test-vm: needs root" >&2
    exit 1
fi
# containerd 2.3.4 is built from source (cached) where this tree has the
# script for it.
VERSIONS=${BRISK_CONTAINERD_VERSIONS_DIR:-$ROOT/target/containerd-versions}
export BRISK_CONTAINERD_VERSIONS_DIR=$VERSIONS
if [[ ! -e $VERSIONS/containerd-2.3.4/.complete ]]; then
    if [[ -x $ROOT/scripts/build-containerd-from-source.sh ]]; then
        BRISK_CONTAINERD_SOURCE_VERSIONS=2.3.4 "$ROOT/scripts/build-containerd-from-source.sh" "$VERSIONS"
    else
        echo "test-vm: no scripts/build-containerd-from-source.sh in this tree: containerd 2.3.4 cannot be built, its lane is skipped" >&2
        unset BRISK_REQUIRE_CONTAINERD_VERSIONS
    fi
fi
cargo build --release --quiet --workspace --bin brisk-vm
exec "$BIN_DIR/brisk-vm" "$@"
