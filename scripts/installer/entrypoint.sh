#!/bin/sh
# Entrypoint of the brisk node installer image (scripts/build-installer-image.sh),
# run by the DaemonSet of configs/kubernetes/installer-daemonset.yaml.
#
# On start: checks that the node's containerd can be identified, copies the
# shim and brisk-ctl into the host's bin dir, runs `brisk-ctl enable`
# (BRISK_MODE=handler adds a `brisk` handler, canary makes the default `runc`
# handler run brisk) which restarts containerd through the host and probes.
# Then it sleeps. On SIGTERM (pod deleted, node unlabelled) it rolls back,
# removes what it installed, and exits 0.
#
# A second run on an installed node (a restarted pod) does not edit the
# config again nor restart containerd.
#
# Settings (environment):
#   BRISK_MODE            handler | canary (default handler)
#   BRISK_CONFIG          containerd's config (default /etc/containerd/config.toml);
#                         the host's config dir must be mounted at the same
#                         path, since containerd reads the paths written there
#   BRISK_TOML            brisk's settings (default: brisk.toml beside BRISK_CONFIG)
#   BRISK_BIN_DIR         where the host's bin dir on containerd's PATH is mounted
#                         (default /host/usr/local/bin)
#   BRISK_ADDRESS         containerd's socket (default /run/containerd/containerd.sock)
#   BRISK_HOST_EXEC       prefix that runs a command on the host
#                         (default: nsenter -t 1 -m --; needs hostPID)
#   BRISK_CONTAINERD_BIN  the host's containerd (default containerd, on the host's PATH)
#   BRISK_CTR_BIN         the host's ctr (default ctr)
#   BRISK_RESTART_CMD     how to restart containerd
#                         (default: nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd)
#   BRISK_PROBE_IMAGE     probe image of enable (default: CRI's sandbox image)
#   BRISK_PROBE_CGROUP    ctr's --cgroup for enable's probe (default
#                         /k8s.io/brisk-installer-probe; on a node whose runc
#                         uses systemd cgroups pass e.g. system.slice:brisk:probe).
#                         A cgroupfs path's directories that the probe creates
#                         are removed through BRISK_HOST_EXEC afterwards (the
#                         container sees only its own cgroups)
set -u

log() { echo "brisk-installer: $*"; }
die() {
    echo "brisk-installer: $*" >&2
    exit 2
}

SRC=/opt/brisk/bin
CONFIG=${BRISK_CONFIG:-/etc/containerd/config.toml}
TOML=${BRISK_TOML:-$(dirname "$CONFIG")/brisk.toml}
BIN_DIR=${BRISK_BIN_DIR:-/host/usr/local/bin}
ADDRESS=${BRISK_ADDRESS:-/run/containerd/containerd.sock}
HOST_EXEC=${BRISK_HOST_EXEC:-nsenter -t 1 -m --}
CONTAINERD_BIN=${BRISK_CONTAINERD_BIN:-containerd}
CTR_BIN=${BRISK_CTR_BIN:-ctr}
RESTART_CMD=${BRISK_RESTART_CMD:-nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd}
PROBE_CGROUP=${BRISK_PROBE_CGROUP:-/k8s.io/brisk-installer-probe}
# What this installer did to the node, kept beside the config so that a
# restarted pod knows (and so that a rollback can undo exactly that).
STATE=$CONFIG.brisk-installer
BACKUP=$CONFIG.brisk-backup

MODE=${BRISK_MODE:-handler}
case $MODE in
    handler) ENABLE_ARGS="" ;;
    canary) ENABLE_ARGS="--canary" ;;
    *) die "BRISK_MODE=$MODE: expected handler or canary" ;;
esac

# Wrappers through which brisk-ctl runs the host's containerd and ctr.
WRAP=$(mktemp -d /run/brisk-installer.XXXXXX) || die "mktemp failed"
chmod 0700 "$WRAP"
for tool in containerd ctr; do
    if [ "$tool" = containerd ]; then bin=$CONTAINERD_BIN; else bin=$CTR_BIN; fi
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$HOST_EXEC" "$bin" >"$WRAP/$tool"
    chmod 0700 "$WRAP/$tool"
done

# The host's cgroupfs directories of cgroup path $1 that do not exist (yet).
# shellcheck disable=SC2016 # expanded by the host's sh
HOST_CG_MISSING='for r in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -f "$r/cgroup.procs" ] || continue
    d=$r; IFS=/
    for c in $1; do [ -n "$c" ] && d=$d/$c && { [ -d "$d" ] || echo "$d"; }; done
done'
# shellcheck disable=SC2016
HOST_RMDIRS='for d in "$@"; do rmdir "$d" 2>/dev/null; done; exit 0'

ctl() {
    "$SRC/brisk-ctl" --config "$CONFIG" --brisk-toml "$TOML" --bin-dir "$BIN_DIR" \
        --address "$ADDRESS" --restart-cmd "$RESTART_CMD" \
        --containerd "$WRAP/containerd" --ctr "$WRAP/ctr" "$@"
}

# ---- refuse a node whose containerd cannot be identified -------------------
[ -f "$CONFIG" ] || die "no containerd config at $CONFIG: mount the host's containerd config dir there (refusing to act on this node)"
VERSION=$("$WRAP/containerd" --version 2>&1) || die "cannot run the host's containerd ($HOST_EXEC $CONTAINERD_BIN --version): $VERSION (refusing to act on this node)"
case $VERSION in
    *containerd*) ;;
    *) die "'$CONTAINERD_BIN --version' does not name containerd: $VERSION (refusing to act on this node)" ;;
esac
[ -d "$BIN_DIR" ] || die "no bin dir at $BIN_DIR: mount the host's bin dir (on containerd's PATH) there"
log "node: $VERSION; config $CONFIG; mode $MODE"

# ---- undo, on SIGTERM -------------------------------------------------------
teardown() {
    status=0
    if [ -f "$STATE" ] && grep -q '^enabled=1$' "$STATE" && [ -f "$BACKUP" ]; then
        if ctl rollback; then
            log "rolled back: containerd runs its original config"
        else
            echo "brisk-installer: rollback failed" >&2
            status=1
        fi
    fi
    if [ "$status" -eq 0 ]; then
        # uninstall refuses while pods started under brisk still run; they
        # keep their shim and brisk.toml, and the next installer run or a
        # hand `brisk-ctl uninstall` removes them.
        if ctl uninstall; then
            if [ -f "$STATE" ] && grep -q '^created_toml=1$' "$STATE"; then
                rm -f "$TOML"
            fi
            rm -f "$BIN_DIR/brisk-ctl" "$STATE"
            log "removed the shim and brisk-ctl from $BIN_DIR"
        else
            [ ! -f "$STATE" ] || sed -i 's/^enabled=1$/enabled=0/' "$STATE"
            echo "brisk-installer: the shim and brisk.toml stay while brisk pods run" >&2
        fi
    fi
    rm -rf "$WRAP"
    log "done (status $status)"
    exit "$status"
}
# A SIGTERM while installing or enabling is handled once that is done (the
# shell runs a trap only between commands anyway).
term=0
trap 'term=1' TERM INT

already=0
if [ -f "$STATE" ] && grep -q '^enabled=1$' "$STATE" && [ -f "$BACKUP" ]; then
    already=1
elif [ -f "$BACKUP" ]; then
    die "$BACKUP exists but this installer did not write it: brisk was enabled by hand here (refusing; roll that back with brisk-ctl rollback first)"
fi

# ---- install -----------------------------------------------------------------
ctl install --from "$SRC/containerd-shim-brisk-v2" || die "brisk-ctl install failed"
install_ctl() {
    cp "$SRC/brisk-ctl" "$BIN_DIR/.brisk-ctl.new" &&
        chmod 0755 "$BIN_DIR/.brisk-ctl.new" &&
        mv "$BIN_DIR/.brisk-ctl.new" "$BIN_DIR/brisk-ctl"
}
install_ctl || die "cannot install brisk-ctl into $BIN_DIR"

# write_state ENABLED: what this installer did, atomically, mode 0644.
write_state() {
    printf 'mode=%s\ncreated_toml=%s\nenabled=%s\n' "$MODE" "$created" "$1" >"$STATE.tmp" &&
        chmod 0644 "$STATE.tmp" &&
        mv "$STATE.tmp" "$STATE"
}

# ---- enable, once -------------------------------------------------------------
if [ "$already" = 1 ]; then
    grep -qx "mode=$MODE" "$STATE" ||
        log "warning: enabled earlier in another mode ($(grep '^mode=' "$STATE")); delete the pod to switch"
    log "already enabled by an earlier run; config left as it is"
else
    created=0
    [ -e "$TOML" ] || created=1
    # An earlier run's brisk.toml, left for pods that ran under brisk then.
    if [ -f "$STATE" ] && grep -q '^created_toml=1$' "$STATE"; then created=1; fi
    write_state 0 || die "cannot write $STATE"
    probe_dirs=""
    case $PROBE_CGROUP in
        /*) probe_dirs=$($HOST_EXEC sh -c "$HOST_CG_MISSING" sh "$PROBE_CGROUP" | sort -r) ;;
    esac
    set -- --probe-cgroup "$PROBE_CGROUP"
    [ -n "${BRISK_PROBE_IMAGE:-}" ] && set -- "$@" --probe-image "$BRISK_PROBE_IMAGE"
    # shellcheck disable=SC2086 # ENABLE_ARGS is empty or one word
    ctl enable $ENABLE_ARGS "$@"
    enabled=$?
    # shellcheck disable=SC2086 # one path a word
    [ -z "$probe_dirs" ] || $HOST_EXEC sh -c "$HOST_RMDIRS" sh $probe_dirs
    if [ "$enabled" -ne 0 ]; then
        # enable rolled back by itself when its probe failed.
        [ "$created" = 1 ] && rm -f "$TOML"
        rm -f "$STATE"
        ctl uninstall >/dev/null 2>&1 && rm -f "$BIN_DIR/brisk-ctl"
        rm -rf "$WRAP"
        # Exiting would make kubelet start the installer again, and each
        # try restarts containerd: stay, not Ready, until deleted.
        echo "brisk-installer: brisk-ctl enable failed; the node is left as it was (not retrying; delete the pod to try again)" >&2
        trap 'exit 1' TERM INT
        [ "$term" = 0 ] || exit 1
        while :; do
            sleep 3600 &
            wait $!
        done
    fi
    write_state 1 || die "cannot write $STATE"
fi
log "brisk is enabled ($MODE); waiting for SIGTERM to roll back"
trap teardown TERM INT
[ "$term" = 0 ] || teardown

# ---- wait ---------------------------------------------------------------------
while :; do
    sleep 3600 &
    wait $!
done
