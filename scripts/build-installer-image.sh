#!/usr/bin/env bash
# Build the node installer image, offline, from busybox-static and the
# release binaries:
#   build-installer-image.sh OUTDIR [BIN_DIR]
# -> OUTDIR/brisk-installer.tar, tagged localhost/brisk/installer:<version>
# (the version of brisk-ctl), loadable with
#   ctr -n k8s.io images import OUTDIR/brisk-installer.tar
# BIN_DIR holds containerd-shim-brisk-v2 and brisk-ctl (default
# target/<host tuple>/release). The image holds busybox and its applets in
# /bin, the two binaries in /opt/brisk/bin (with the shared libraries and the
# loader `ldd` names, when they are not static) and the entrypoint
# /opt/brisk/entrypoint.sh (scripts/installer/entrypoint.sh).
# Only shell, tar, gzip, sha256sum and ldd are used; the output is reproducible.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${1:?usage: build-installer-image.sh OUTDIR [BIN_DIR]}
if [[ -n ${2:-} ]]; then
    BIN_DIR=$2
else
    HOST_TUPLE=$(rustc -vV | sed -n 's/^host: //p')
    BIN_DIR=$ROOT/target/$HOST_TUPLE/release
fi
BUSYBOX=${BUSYBOX:-/bin/busybox}
ENTRYPOINT=$ROOT/scripts/installer/entrypoint.sh

for f in "$BIN_DIR/containerd-shim-brisk-v2" "$BIN_DIR/brisk-ctl"; do
    [[ -x $f ]] || { echo "build-installer-image: $f missing (cargo build --release --workspace)" >&2; exit 1; }
done
[[ -x $BUSYBOX ]] || { echo "build-installer-image: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
APPLETS=$("$BUSYBOX" --list) || true
for a in sh cp mv rm sleep nsenter mktemp; do
    [[ $'\n'$APPLETS$'\n' == *$'\n'$a$'\n'* ]] || { echo "build-installer-image: $BUSYBOX lacks $a; is it busybox-static?" >&2; exit 1; }
done
VERSION=$("$BIN_DIR/brisk-ctl" --version | awk '{ print $2 }')
[[ -n $VERSION ]] || { echo "build-installer-image: no version from brisk-ctl --version" >&2; exit 1; }
NAME=localhost/brisk/installer:$VERSION

case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64) ARCH=arm64 ;;
    *) ARCH=$(uname -m) ;;
esac

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
OUT=$OUTDIR/brisk-installer.tar
WORK=$(mktemp -d "$OUTDIR/.installer.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

R=$WORK/rootfs
mkdir -p "$R"/{bin,dev,etc,proc,sys,tmp,run,root,opt/brisk/bin}
chmod 1777 "$R/tmp"
chmod 700 "$R/root"
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
for applet in $APPLETS; do
    case $applet in busybox | */* | "") continue ;; esac
    ln -sf busybox "$R/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
: >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
for b in containerd-shim-brisk-v2 brisk-ctl; do
    install -m 0755 "$BIN_DIR/$b" "$R/opt/brisk/bin/$b"
    # A dynamically linked build needs its libraries and loader in the image
    # (the default build links glibc statically: .cargo/config.toml).
    if ldd "$BIN_DIR/$b" >/dev/null 2>&1; then
        for lib in $(ldd "$BIN_DIR/$b" | grep -o '/[^ ]*'); do
            mkdir -p "$R$(dirname "$lib")"
            cp -L "$lib" "$R$lib"
            chmod 0755 "$R$lib"
        done
    fi
done
install -m 0755 "$ENTRYPOINT" "$R/opt/brisk/entrypoint.sh"

BLOBS=$WORK/img/blobs/sha256
mkdir -p "$BLOBS"
put_blob() { # FILE -> "<digest> <size>", stored in the image
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$BLOBS/$digest"
    echo "$digest $size"
}
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$R" -cf "$WORK/layer.tar" .
DIFF_ID=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
gzip -n -6 -c "$WORK/layer.tar" >"$WORK/layer.tar.gz"
read -r LAYER_DIGEST LAYER_SIZE < <(put_blob "$WORK/layer.tar.gz")
printf '%s' "{\"architecture\":\"$ARCH\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/opt/brisk/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Entrypoint\":[\"/opt/brisk/entrypoint.sh\"],\"WorkingDir\":\"/\",\"Labels\":{\"org.opencontainers.image.version\":\"$VERSION\"}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$DIFF_ID\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"brisk scripts/build-installer-image.sh\"}]}" >"$WORK/config.json"
read -r CFG_DIGEST CFG_SIZE < <(put_blob "$WORK/config.json")
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$CFG_DIGEST\",\"size\":$CFG_SIZE},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$LAYER_DIGEST\",\"size\":$LAYER_SIZE}]}" >"$WORK/manifest.json"
read -r MAN_DIGEST MAN_SIZE < <(put_blob "$WORK/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' >"$WORK/img/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$MAN_DIGEST\",\"size\":$MAN_SIZE,\"platform\":{\"architecture\":\"$ARCH\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$NAME\",\"org.opencontainers.image.ref.name\":\"$VERSION\"}}]}" >"$WORK/img/index.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$WORK/img" -cf "$OUT.tmp" oci-layout index.json blobs
chmod 0644 "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "build-installer-image: $NAME -> $OUT"
