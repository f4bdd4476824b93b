#!/usr/bin/env bash
# Build the containerd releases that Debian does not package (2.2 and 2.3)
# from their source tarballs, offline, for the compatibility matrix:
#
#   sudo ./scripts/build-containerd-from-source.sh DIR
#
#   DIR/containerd-2.2.7/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#   DIR/containerd-2.3.4/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#
# The sources are `git archive` tarballs of the release tags with vendor/:
# $BRISK_CONTAINERD_SRC/containerd-VERSION.tar.xz (default: ../shared/
# containerd-src beside the repository, which CI machines have). Where a
# tarball is absent (a contributor's clone) its release is skipped with a
# message and the script exits 0, except under CI=true, where a missing
# tarball fails the run rather than silently dropping its matrix lanes.
#
# Go is Debian sid's golang-1.26 (apt-get download through the private apt
# state of scripts/lib/debian-suites.sh, unpacked with dpkg-deb -x into
# DIR/.go; nothing is installed). The build is offline: vendored modules
# only, no proxy, no toolchain download, no cgo; the build cache is
# DIR/.go-cache, shared by both releases and kept, so a rebuild is quick.
#
# Each tree holds `.source-version` (tarball, its commit, Go) and is complete
# once `.complete` exists; a complete tree is never rebuilt. Versions:
#   BRISK_CONTAINERD_SOURCE_VERSIONS="2.2.7 2.3.4"  BRISK_GO_VERSION=1.26
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:?usage: build-containerd-from-source.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SRC=${BRISK_CONTAINERD_SRC:-$ROOT/../shared/containerd-src}
read -r -a RELEASES <<<"${BRISK_CONTAINERD_SOURCE_VERSIONS:-2.2.7 2.3.4}"
GO_SERIES=${BRISK_GO_VERSION:-1.26}
GO_TREE=$DIR/.go/golang-$GO_SERIES

log() { echo "build-containerd-from-source: $*" >&2; }

todo=()
for v in "${RELEASES[@]}"; do
    [[ -e $DIR/containerd-$v/.complete ]] && continue
    tarball=$SRC/containerd-$v.tar.xz
    if [[ -f $tarball ]]; then
        todo+=("$v")
    elif [[ ${CI:-} == true ]]; then
        log "no source tarball $tarball: the containerd $v lanes cannot run in CI (BRISK_CONTAINERD_SRC names the directory)"
        exit 1
    else
        log "no source tarball $tarball: the containerd $v lanes of the matrix are skipped (set BRISK_CONTAINERD_SRC to a directory holding containerd-$v.tar.xz, a git archive of v$v with vendor/)"
    fi
done
if ((${#todo[@]} == 0)); then
    log "nothing to build in $DIR"
    exit 0
fi
command -v xz >/dev/null || { log "xz not found (apt-get install xz-utils)"; exit 1; }

# ---- Go from sid --------------------------------------------------------------

if [[ ! -e $GO_TREE/.complete ]]; then
    # shellcheck source=scripts/lib/debian-suites.sh
    source "$ROOT/scripts/lib/debian-suites.sh"
    debian_suites_init "$DIR/.apt" sid
    rm -rf "$GO_TREE"
    go_version=$(debian_unpack "$GO_TREE" "golang-$GO_SERIES-go" sid any)
    src_version=$(debian_unpack "$GO_TREE" "golang-$GO_SERIES-src" sid "${go_version%%-*}")
    echo "golang-$GO_SERIES-go $go_version, golang-$GO_SERIES-src $src_version (sid)" >"$GO_TREE/.deb-version"
    touch "$GO_TREE/.complete"
fi
GOROOT=$GO_TREE/usr/lib/go-$GO_SERIES
[[ -x $GOROOT/bin/go ]] || { log "no $GOROOT/bin/go in the unpacked golang-$GO_SERIES-go"; exit 1; }

# Only what is set here reaches the build: no user go.env, no workspace, no
# network, the toolchain that is here.
go_env=(
    env -u GOFLAGS -u GOPATH -u GOBIN -u GOEXPERIMENT
    GOROOT="$GOROOT" PATH="$GOROOT/bin:$PATH"
    GOENV=off GOWORK=off GOTELEMETRY=off
    GOCACHE="$DIR/.go-cache" GOPATH="$DIR/.go/path"
    GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off GONOSUMDB= GOTOOLCHAIN=local
    CGO_ENABLED=0 GOOS=linux
)
go_have=$("${go_env[@]}" go env GOVERSION)
go_have=${go_have#go}
log "Go $go_have ($(cat "$GO_TREE/.deb-version"))"

# version_ge A B: A >= B for dotted versions.
version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

# The commit a `git archive` tarball was made from (its pax comment), or empty.
archive_commit() {
    { xz -dc "$1" 2>/dev/null || true; } | head -c 4096 | tr '\0' '\n' |
        sed -n 's/^[0-9]* comment=\([0-9a-f]\{40\}\)$/\1/p' | head -n1
}

mkdir -p "$DIR/.build"
for v in "${todo[@]}"; do
    tarball=$SRC/containerd-$v.tar.xz
    work=$(mktemp -d "$DIR/.build/containerd-$v.XXXXXX")
    # Removed on any exit, also a failed build.
    trap 'rm -rf "$work"' EXIT
    tar -xJf "$tarball" -C "$work"
    src=$work/containerd-$v
    [[ -f $src/go.mod && -d $src/vendor ]] || { log "$tarball has no containerd-$v/ with go.mod and vendor/"; exit 1; }
    module=$(awk '$1 == "module" { print $2; exit }' "$src/go.mod")
    [[ -f $src/version/version.go ]] || { log "$tarball: no version/version.go"; exit 1; }
    go_want=$(awk '$1 == "go" { print $2; exit }' "$src/go.mod")
    if ! version_ge "$go_have" "$go_want"; then
        log "containerd $v needs Go >= $go_want (go.mod); golang-$GO_SERIES in sid is $go_have"
        exit 1
    fi
    commit=$(archive_commit "$tarball")
    ldflags="-X $module/version.Version=$v"
    [[ -n $commit ]] && ldflags+=" -X $module/version.Revision=$commit"
    out=$work/out
    log "building containerd $v ($module${commit:+, commit $commit}) with Go $go_have"
    started=$SECONDS
    # CPU time besides the wall time: on a shared machine the wall time
    # says little about a quiet one.
    TIMEFORMAT="build-containerd-from-source: go build of containerd $v: %0R s wall, %0U s user, %0S s sys"
    time (cd "$src" && "${go_env[@]}" go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "$ldflags" -o "$out/usr/bin/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2)
    secs=$((SECONDS - started))
    for b in containerd ctr containerd-shim-runc-v2; do
        [[ -x $out/usr/bin/$b ]] || { log "containerd $v: no $b built"; exit 1; }
    done
    said=$("$out/usr/bin/containerd" --version)
    [[ $said == *" $v" || $said == *" $v "* ]] || { log "containerd $v says: $said"; exit 1; }
    log "built containerd $v in ${secs}s: $said"
    echo "$v from $(basename "$tarball")${commit:+ (commit $commit)}, Go $go_have, built in ${secs}s" >"$out/.source-version"
    touch "$out/.complete"
    rm -rf "${DIR:?}/containerd-$v"
    mv "$out" "$DIR/containerd-$v"
    rm -rf "$work"
    trap - EXIT
done
log "done: $(for v in "${RELEASES[@]}"; do [[ -e $DIR/containerd-$v/.complete ]] && printf 'containerd-%s ' "$v"; done)"
