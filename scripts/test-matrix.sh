#!/usr/bin/env bash
# Compatibility matrix: the containerd releases brisk supports with runc
# 1.1.5 (Debian 12) and runc 1.3 (sid). Each combination (lane) runs the e2e
# tests lifecycle::, exiting:: and features:: (both handlers, brisk and the
# stock runc shim) and the deploy test selected_binaries_serve_the_pods (the
# chosen binaries are the ones serving the pods):
#
#   sudo ./scripts/test-matrix.sh [--full] [--skip-default] [--only CONTAINERD[,RUNC]]
#
#   (default)        the pairwise lanes below: every containerd release with
#                    at least one runc, each runc with 1.x and 2.x releases,
#                    and the current release (2.3) with both
#   --full           every release with every runc (10 lanes)
#   --skip-default   leave out containerd 1.6.20 + runc 1.1 (the main suite
#                    of scripts/test.sh runs exactly that combination)
#   --only 2.3.4,1.3 one combination (containerd release, runc release)
#
# The pairwise set keeps the test command within its time budget: a lane
# takes about 100 s, and what a lane finds depends on the containerd
# release (its Task API client, CRI, config version) or on the runc (its
# CLI and wording), seldom on the pair.
#
# containerd 1.6.20 is Debian 12's; 1.7.24 (trixie), 2.1.9 (sid) and runc 1.3
# (sid) are fetched by scripts/fetch-containerd-versions.sh; 2.2.7 and 2.3.4
# are built from their source tarballs by scripts/build-containerd-from-source.sh
# (where the tarballs are absent, their lanes are reported as skipped, with
# the reason). All go to $BRISK_CONTAINERD_VERSIONS_DIR (default
# target/containerd-versions; cached). Every lane runs with
# BRISK_CONTAINERD_BIN / BRISK_RUNC_BIN set; the harness puts containerd's own
# ctr and containerd-shim-runc-v2 first on its PATH, links runc in front of
# the shims, and writes config version 3 for containerd 2.x.
#
# Any failing test fails the run. Prints a table at the end, with each lane's
# time, and keeps each lane's log in target/test-matrix/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skip_default=0
full=0
only=
while (($#)); do
    case $1 in
        --full) full=1 ;;
        --skip-default) skip_default=1 ;;
        --only) only=${2:?--only CONTAINERD[,RUNC]}; shift ;;
        *) echo "test-matrix: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $(id -u) -ne 0 ]]; then
    echo "test-matrix: needs root (integration tests)" >&2
    exit 1
fi

VERSIONS=${BRISK_CONTAINERD_VERSIONS_DIR:-$ROOT/target/containerd-versions}
"$ROOT/scripts/fetch-containerd-versions.sh" "$VERSIONS"
"$ROOT/scripts/build-containerd-from-source.sh" "$VERSIONS"
export BRISK_CONTAINERD_VERSIONS_DIR=$VERSIONS

declare -A CONTAINERD=(
    [1.6.20]=/usr/bin/containerd
    [1.7.24]=$VERSIONS/containerd-1.7.24/usr/bin/containerd
    [2.1.9]=$VERSIONS/containerd-2.1.9/usr/bin/containerd
    [2.2.7]=$VERSIONS/containerd-2.2.7/usr/bin/containerd
    [2.3.4]=$VERSIONS/containerd-2.3.4/usr/bin/containerd
)
declare -A RUNC=(
    [1.1]=/usr/sbin/runc
    [1.3]=$VERSIONS/runc-1.3/usr/sbin/runc
)
CONTAINERD_ORDER=(1.6.20 1.7.24 2.1.9 2.2.7 2.3.4)
# Built from source only where the tarballs are: a release that is not there
# has its lanes skipped, with the reason (the build script said it too).
declare -A SKIPPED=()
for v in 2.2.7 2.3.4; do
    [[ -e $VERSIONS/containerd-$v/.complete ]] ||
        SKIPPED[$v]="not built: no source tarball containerd-$v.tar.xz in ${BRISK_CONTAINERD_SRC:-../shared/containerd-src}"
done
RUNC_ORDER=(1.1 1.3)
# The default lanes ("containerd,runc"); --full runs every pair.
PAIRWISE=(1.6.20,1.1 1.6.20,1.3 1.7.24,1.1 2.1.9,1.3 2.2.7,1.1 2.3.4,1.1 2.3.4,1.3)
in_pairwise() {
    local p
    for p in "${PAIRWISE[@]}"; do
        [[ $p == "$1" ]] && return 0
    done
    return 1
}

# Check the pinned versions are what the binaries say.
for v in "${CONTAINERD_ORDER[@]}"; do
    [[ -z ${SKIPPED[$v]:-} ]] || continue
    out=$("${CONTAINERD[$v]}" --version) || { echo "test-matrix: ${CONTAINERD[$v]} does not run" >&2; exit 1; }
    [[ $out == *" $v"* || $out == *" v$v"* ]] || { echo "test-matrix: ${CONTAINERD[$v]} is not $v: $out" >&2; exit 1; }
done
for v in "${RUNC_ORDER[@]}"; do
    out=$("${RUNC[$v]}" --version) || { echo "test-matrix: ${RUNC[$v]} does not run" >&2; exit 1; }
    out=${out%%$'\n'*}
    [[ $out == "runc version $v."* ]] || { echo "test-matrix: ${RUNC[$v]} is not $v: $out" >&2; exit 1; }
done

cargo build --release --workspace --quiet
logs=$ROOT/target/test-matrix
mkdir -p "$logs"
# The e2e and deploy test binaries, built once; every lane runs them
# directly, as cargo would (from the package directory). A cargo invocation
# per lane would check the build again each time, or redo it where a build
# script reruns.
built=$(cargo test --release --workspace --test e2e --test deploy --no-run 2>&1) ||
    { echo "$built" >&2; exit 1; }
declare -A TEST_BIN=()
while read -r name path; do
    TEST_BIN[$name]=$ROOT/$path
done < <(sed -nE 's#^ *Executable tests/(e2e|deploy)(/main)?\.rs \((.*)\)$#\1 \3#p' <<<"$built")
for t in e2e deploy; do
    [[ -x ${TEST_BIN[$t]:-} ]] || { echo "test-matrix: no $t test binary in cargo's output:" >&2; echo "$built" >&2; exit 1; }
done
rows=()
status=0

for c in "${CONTAINERD_ORDER[@]}"; do
    for r in "${RUNC_ORDER[@]}"; do
        if [[ -n $only ]]; then
            oc=${only%%,*} or=${only#*,}
            [[ $only == *,* ]] || or=$r
            [[ $c == "$oc" && $r == "$or" ]] || continue
        elif ((skip_default)) && [[ $c == 1.6.20 && $r == 1.1 ]]; then
            continue
        elif ((!full)) && ! in_pairwise "$c,$r"; then
            continue
        fi
        if [[ -n ${SKIPPED[$c]:-} ]]; then
            echo "== containerd $c + runc $r: skipped (${SKIPPED[$c]})"
            rows+=("| $c | $r | skipped | 0 | 0 | 0s | ${SKIPPED[$c]} |")
            continue
        fi
        log=$logs/containerd-$c-runc-$r.log
        echo "== containerd $c + runc $r (log: $log)"
        started=$SECONDS
        rc=0
        (
            cd "$ROOT/integration"
            export BRISK_CONTAINERD_BIN=${CONTAINERD[$c]} BRISK_RUNC_BIN=${RUNC[$r]}
            rc=0
            echo "+ e2e lifecycle:: exiting:: features::"
            "${TEST_BIN[e2e]}" lifecycle:: exiting:: features:: || rc=1
            echo "+ deploy --exact selected_binaries_serve_the_pods"
            "${TEST_BIN[deploy]}" --exact selected_binaries_serve_the_pods || rc=1
            exit "$rc"
        ) >"$log" 2>&1 || rc=1
        secs=$((SECONDS - started))
        passed=$(sed -nE 's/^test (.*) \.\.\. ok$/\1/p' "$log" | sort)
        failed=$(sed -nE 's/^test (.*) \.\.\. FAILED$/\1/p' "$log" | sort)
        failed_list=${failed//$'\n'/ }
        n_pass=0 n_fail=0
        [[ -z $passed ]] || n_pass=$(wc -l <<<"$passed")
        [[ -z $failed ]] || n_fail=$(wc -l <<<"$failed")
        result=pass
        # A test binary that failed without a failing test (a crash, a
        # harness error) fails the lane too.
        ((rc == 0 && n_fail == 0)) || result=FAIL
        echo "   $result in ${secs}s: $n_pass passed, $n_fail failed${failed:+: $failed_list}"
        if [[ $result == FAIL ]]; then
            status=1
            tail -n 60 "$log"
        fi
        rows+=("| $c | $r | $result | $n_pass | $n_fail | ${secs}s | $failed_list |")
    done
done

echo
echo "| containerd | runc | result | passed | failed | time | failed tests |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$status"
