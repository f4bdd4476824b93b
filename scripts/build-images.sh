#!/usr/bin/env bash
# Build two OCI image archives from Debian's busybox-static, for tests with no
# registry:
#   OUTDIR/busybox.tar  -> localhost/brisk/busybox:latest  (cmd: sh)
#   OUTDIR/pause.tar    -> localhost/brisk/pause:latest    (long-running, exits on TERM)
# Both load with `ctr -a SOCK -n k8s.io images import FILE`.
# Only shell, tar, gzip and sha256sum are used. Outputs are reproducible and the
# script does nothing when both archives already exist.
set -euo pipefail

OUTDIR=${1:?usage: build-images.sh OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

if [[ -s $OUTDIR/busybox.tar && -s $OUTDIR/pause.tar ]]; then
    echo "build-images: $OUTDIR/busybox.tar and pause.tar exist, skipping"
    exit 0
fi

BUSYBOX=${BUSYBOX:-/bin/busybox}
if [[ ! -x $BUSYBOX ]]; then
    echo "build-images: $BUSYBOX missing (apt-get install busybox-static)" >&2
    exit 1
fi
APPLETS=$("$BUSYBOX" --list) || true
if [[ $'\n'$APPLETS$'\n' != *$'\nsh\n'* || $'\n'$APPLETS$'\n' != *$'\nsleep\n'* ]]; then
    echo "build-images: $BUSYBOX --list lacks sh/sleep; is it busybox-static?" >&2
    exit 1
fi

case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64) ARCH=arm64 ;;
    armv7l) ARCH=arm ;;
    ppc64le) ARCH=ppc64le ;;
    s390x) ARCH=s390x ;;
    riscv64) ARCH=riscv64 ;;
    *) ARCH=$(uname -m) ;;
esac

WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- root filesystem -------------------------------------------------------
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,dev,etc,proc,sys,tmp,root,var/tmp}
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
chmod 700 "$ROOT/root"
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 755 "$ROOT/bin/busybox"
for applet in $APPLETS; do
    case $applet in
        busybox | */* | "") continue ;;
    esac
    ln -sf busybox "$ROOT/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
: >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"

BLOBS=$WORK/blobs/sha256
mkdir -p "$BLOBS"

# Store stdin as a blob; print "<digest> <size>".
put_blob() {
    local tmp=$WORK/blob.tmp digest size
    cat >"$tmp"
    digest=$(sha256sum "$tmp" | cut -d' ' -f1)
    size=$(stat -c %s "$tmp")
    mv "$tmp" "$BLOBS/$digest"
    echo "$digest $size"
}

# One layer, shared by both images.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$ROOT" -cf "$WORK/layer.tar" .
DIFF_ID=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
read -r LAYER_DIGEST LAYER_SIZE < <(gzip -n -9 -c "$WORK/layer.tar" | put_blob)

json_array() { # json_array a b c -> ["a","b","c"]
    local out="" s
    for s in "$@"; do
        s=${s//\\/\\\\}
        s=${s//\"/\\\"}
        out+="${out:+,}\"$s\""
    done
    echo "[$out]"
}

# build_image NAME OUTFILE ENTRYPOINT_JSON CMD_JSON
build_image() {
    local name=$1 out=$2 entrypoint=$3 cmd=$4 cfg_digest cfg_size man_digest man_size
    local ep_field=""
    [[ $entrypoint != null ]] && ep_field="\"Entrypoint\":$entrypoint,"
    read -r cfg_digest cfg_size < <(printf '%s' \
        "{\"architecture\":\"$ARCH\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],${ep_field}\"Cmd\":$cmd,\"WorkingDir\":\"/\"},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$DIFF_ID\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"brisk scripts/build-images.sh\"}]}" |
        put_blob)
    read -r man_digest man_size < <(printf '%s' \
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cfg_digest\",\"size\":$cfg_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$LAYER_DIGEST\",\"size\":$LAYER_SIZE}]}" |
        put_blob)
    local dir=$WORK/img-$(basename "$out" .tar)
    mkdir -p "$dir/blobs/sha256"
    for d in "$LAYER_DIGEST" "$cfg_digest" "$man_digest"; do
        cp "$BLOBS/$d" "$dir/blobs/sha256/$d"
    done
    printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
    printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$man_digest\",\"size\":$man_size,\"platform\":{\"architecture\":\"$ARCH\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"latest\"}}]}" >"$dir/index.json"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$dir" -cf "$out.tmp" oci-layout index.json blobs
    mv "$out.tmp" "$out"
    echo "build-images: $name -> $out"
}

build_image localhost/brisk/busybox:latest "$OUTDIR/busybox.tar" null "$(json_array sh)"
# PID 1 of a container ignores signals it has no handler for, so trap TERM.
build_image localhost/brisk/pause:latest "$OUTDIR/pause.tar" \
    "$(json_array /bin/sh -c 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait; done')" "null"
