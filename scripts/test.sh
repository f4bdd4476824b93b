#!/usr/bin/env bash
# The one test command: `sudo ./scripts/test.sh [extra cargo test args]`.
# Besides the suite it builds and checks the .deb (scripts/test-deb.sh) and
# runs the containerd/runc compatibility matrix (scripts/test-matrix.sh);
# BRISK_SKIP_DEB=1 and BRISK_SKIP_MATRIX=1 leave those out. Where qemu can
# run (qemu-system-x86 installed or installable, about 2 GB free under
# target/), it also runs the cgroup v2 + systemd lane in a QEMU guest
# (scripts/test-vm.sh); BRISK_SKIP_VM=1 leaves it out.
# Installs what is missing, builds the test images and the workspace, runs the
# unit and integration tests (integration tests need root), and checks that
# no test instance was left behind.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: not root: integration tests will be skipped" >&2
fi

# Why the VM lane cannot run here (printed; status 0), or status 1 when it can.
vm_lane_unavailable() {
    local avail policy
    if ! command -v qemu-system-x86_64 >/dev/null; then
        # Read whole, then matched: `apt-cache ... | grep -q` lets grep end
        # first, and under pipefail the SIGPIPE apt-cache then gets fails
        # the test about one time in two, skipping the lane for nothing.
        policy=$(apt-cache policy qemu-system-x86 2>/dev/null || true)
        if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
            echo "qemu-system-x86 is neither installed nor installable"
            return 0
        fi
    fi
    mkdir -p "$ROOT/target"
    avail=$(df -Pk "$ROOT/target" | awk 'NR == 2 { print $4 }')
    if ! compgen -G "$ROOT/target/vm/image-*/.complete" >/dev/null && ((avail < 2 * 1024 * 1024)); then
        echo "less than 2 GB free under $ROOT/target ($((avail / 1024)) MB)"
        return 0
    fi
    return 1
}

# Each stage's heading says when it began (since the start of the run), so a
# slow CI run shows where its time went.
stage() {
    printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"
}

stage "cargo build --release --workspace"
cargo build --release --workspace

# The containerd/runc releases of the compatibility matrix (cached in
# target/containerd-versions): fetched from Debian's later suites (1.7, 2.1,
# runc 1.3) and built from the source tarballs in ../shared/containerd-src
# (2.2, 2.3; skipped with a message where those are absent). tests/deploy.rs
# loads the config snippets into each. BRISK_SKIP_MATRIX=1 skips them and
# the matrix.
matrix=1
[[ $(id -u) -eq 0 && -z ${BRISK_SKIP_MATRIX:-} && -z ${BRISK_SKIP_INTEGRATION:-} ]] || matrix=0
if ((matrix)); then
    stage "scripts/fetch-containerd-versions.sh"
    export BRISK_CONTAINERD_VERSIONS_DIR=${BRISK_CONTAINERD_VERSIONS_DIR:-$ROOT/target/containerd-versions}
    "$ROOT/scripts/fetch-containerd-versions.sh" "$BRISK_CONTAINERD_VERSIONS_DIR"
    stage "scripts/build-containerd-from-source.sh"
    "$ROOT/scripts/build-containerd-from-source.sh" "$BRISK_CONTAINERD_VERSIONS_DIR"
    export BRISK_REQUIRE_CONTAINERD_VERSIONS=1
fi

stage "cargo test --workspace --release"
status=0
cargo test --workspace --release --no-fail-fast "$@" || status=$?

# With extra arguments (a filtered run) only the suite runs.
if (($# == 0)) && [[ $(id -u) -eq 0 && -z ${BRISK_SKIP_INTEGRATION:-} ]]; then
    # Alone, so that no other test's load decides where its faults land.
    # Every cargo call of the test command selects the whole workspace (a
    # target filter narrows it): `-p brisk-integration` alone resolves the
    # dependencies' features differently and rebuilds half the tree, a
    # minute or two each time.
    stage "short chaos soak, seed 1 (chaos::short_chaos_brisk, alone)"
    cargo test --release --workspace --test e2e -- --ignored --exact chaos::short_chaos_brisk || status=1
    if [[ -z ${BRISK_SKIP_DEB:-} ]]; then
        stage "scripts/test-deb.sh (build, dpkg -i, check, dpkg --purge)"
        "$ROOT/scripts/test-deb.sh" || status=1
    fi
    if ((matrix)); then
        stage "scripts/test-matrix.sh --skip-default (containerd 1.6/1.7/2.1/2.2/2.3 with runc 1.1/1.3, pairwise)"
        "$ROOT/scripts/test-matrix.sh" --skip-default || status=1
    fi
    if [[ -z ${BRISK_SKIP_VM:-} ]]; then
        if why=$(vm_lane_unavailable); then
            stage "VM lane (cgroup v2 + systemd) SKIPPED: $why"
        else
            stage "scripts/test-vm.sh (cgroup v2 + systemd guest, containerd 1.6.20 and 2.3.4)"
            "$ROOT/scripts/test-vm.sh" || status=1
        fi
    fi
fi

left=$(leftover_instances)
if [[ -n $left ]]; then
    echo "test.sh: test instances left behind:" >&2
    echo "$left" >&2
    status=1
fi
# A test instance is named brisk-it-<pid>-<n>; one whose process still runs
# (another suite or a benchmark on the same machine) is not left behind.
owner_alive() {
    local pid=${1##*/brisk-it-}
    pid=${pid%%-*}
    [[ -d /proc/$pid ]]
}
for r in /run/containerd/runc /run/containerd/brisk; do
    for d in "$r"/brisk-it-*; do
        [[ -e $d ]] && ! owner_alive "$d" && { echo "test.sh: runc root left behind: $d" >&2; status=1; }
    done
done
if [[ -d /sys/fs/cgroup ]]; then
    for d in /sys/fs/cgroup/*/brisk-it-*; do
        [[ -e $d ]] && ! owner_alive "$d" && { echo "test.sh: cgroup left behind: $d" >&2; status=1; }
    done
fi
stage "done: status $status"
exit "$status"
