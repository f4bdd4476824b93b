#!/usr/bin/env bash
# An exiting container under real writeback pressure, nothing injected: the
# stock runc shim against brisk, alternating, in one run on one private
# containerd. A background writer keeps gigabytes of dirty pages on the
# filesystem of containerd's root while a container that wrote a few hundred
# MB into its rootfs exits; prints exit->EXITED, the shim's unmount time and
# ListContainers latency as markdown tables. Takes about 10 minutes.
#
#   sudo ./scripts/bench-pressure.sh [--rounds 5] [--dirty-gb auto] [--container-mb 300]
#        [--no-sysctl] [--no-updates] [--budget-secs 540] [--handlers runc,brisk]
#
# vm.dirty_ratio / vm.dirty_background_ratio are raised to 60/50 for the run
# (unless --no-sysctl). They are restored, and the writer's files removed,
# however the run ends: by the benchmark itself and again by this script.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ $(id -u) -ne 0 ]]; then
    echo "bench-pressure.sh: needs root" >&2
    exit 1
fi
cargo build --release --workspace --quiet

saved=()
for n in dirty_ratio dirty_background_ratio dirty_bytes dirty_background_bytes; do
    saved+=("$n=$(cat "/proc/sys/vm/$n")")
done
# On the filesystem of the harness's temporary directory, which holds
# containerd's root (the benchmark checks that).
work=$(mktemp -d "${TMPDIR:-/tmp}/brisk-pressure.XXXXXX")
pid=

restore() {
    local kv n v
    # Ratios first: writing one zeroes the matching *_bytes, and back.
    for kv in "${saved[@]}"; do
        n=${kv%%=*} v=${kv#*=}
        [[ $n == *_ratio ]] && echo "$v" >"/proc/sys/vm/$n"
    done
    for kv in "${saved[@]}"; do
        n=${kv%%=*} v=${kv#*=}
        [[ $n == *_bytes && $v != 0 ]] && echo "$v" >"/proc/sys/vm/$n"
    done
    return 0
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        # The benchmark unwinds on TERM: pods removed, containerd stopped.
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 600; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    fi
    restore
    rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Pin the shim under test for the whole run: a rebuild of the workspace
# meanwhile must not change the binary that new pods get.
cp "$BRISK_SHIM_BIN" "$work/containerd-shim-brisk-v2"
export BRISK_SHIM_BIN=$work/containerd-shim-brisk-v2

"$BIN_DIR/brisk-pressure" --writer-dir "$work/writer" "$@" &
pid=$!
status=0
wait "$pid" || status=$?
pid=
exit "$status"
