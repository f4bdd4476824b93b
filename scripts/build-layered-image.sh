#!/usr/bin/env bash
# Build an OCI image archive of many layers, for tests of overlay mounts whose
# lowerdir option would not fit in the kernel's one page of mount data:
#   build-layered-image.sh BUSYBOX_TAR LAYERS NAME OUTFILE
# The bottom layer is the busybox layer of BUSYBOX_TAR (from build-images.sh);
# on top of it come LAYERS tiny layers, layer i holding only /layers/i (text
# "layer i"). The archive loads with `ctr images import OUTFILE`.
# Only shell, tar, sha256sum and stat are used; the output is reproducible.
set -euo pipefail

BASE=${1:?usage: build-layered-image.sh BUSYBOX_TAR LAYERS NAME OUTFILE}
LAYERS=${2:?usage: build-layered-image.sh BUSYBOX_TAR LAYERS NAME OUTFILE}
NAME=${3:?usage: build-layered-image.sh BUSYBOX_TAR LAYERS NAME OUTFILE}
OUT=${4:?usage: build-layered-image.sh BUSYBOX_TAR LAYERS NAME OUTFILE}
if [[ ! $LAYERS =~ ^[0-9]+$ || $LAYERS -lt 1 ]]; then
    echo "build-layered-image: LAYERS must be a positive number, got '$LAYERS'" >&2
    exit 1
fi

WORK=$(mktemp -d "$(dirname "$OUT")/.layered.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/base" "$WORK/img/blobs/sha256"
tar -C "$WORK/base" -xf "$BASE"
blob() { echo "$WORK/base/blobs/sha256/${1#sha256:}"; }
# index -> manifest -> the base's (single) layer and its config.
man=$(sed -n 's/.*"manifests":\[{[^}]*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "$WORK/base/index.json")
[[ -n $man ]] || { echo "build-layered-image: no manifest in $BASE" >&2; exit 1; }
layer=$(sed -n 's/.*"layers":\[{[^]]*"digest":"\(sha256:[0-9a-f]*\)","size":\([0-9]*\)}\].*/\1 \2/p' "$(blob "$man")")
cfg=$(sed -n 's/.*"config":{[^}]*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "$(blob "$man")")
read -r base_digest base_size <<<"$layer"
[[ -n $base_digest && -n $cfg ]] || { echo "build-layered-image: unexpected manifest in $BASE" >&2; exit 1; }
base_diff=$(sed -n 's/.*"diff_ids":\["\(sha256:[0-9a-f]*\)"\].*/\1/p' "$(blob "$cfg")")
arch=$(sed -n 's/.*"architecture":"\([^"]*\)".*/\1/p' "$(blob "$cfg")")
cp "$(blob "$base_digest")" "$WORK/img/blobs/sha256/${base_digest#sha256:}"

put_blob() { # FILE -> "<digest> <size>", stored in the image
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$WORK/img/blobs/sha256/$digest"
    echo "$digest $size"
}

diff_ids="\"$base_diff\""
layers="{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$base_digest\",\"size\":$base_size}"
history='{"created":"1970-01-01T00:00:00Z","created_by":"busybox"}'
for ((i = 0; i < LAYERS; i++)); do
    mkdir -p "$WORK/l/layers"
    printf 'layer %d\n' "$i" >"$WORK/l/layers/$i"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=ustar \
        -C "$WORK/l" -cf "$WORK/layer.tar" layers
    rm -rf "$WORK/l"
    read -r d s < <(put_blob "$WORK/layer.tar")
    diff_ids+=",\"sha256:$d\""
    layers+=",{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$s}"
    history+=",{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"layer $i\"}"
done

printf '%s' "{\"architecture\":\"$arch\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"sh\"],\"WorkingDir\":\"/\"},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diff_ids]},\"history\":[$history]}" >"$WORK/config.json"
read -r cfg_digest cfg_size < <(put_blob "$WORK/config.json")
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cfg_digest\",\"size\":$cfg_size},\"layers\":[$layers]}" >"$WORK/manifest.json"
read -r man_digest man_size < <(put_blob "$WORK/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' >"$WORK/img/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$man_digest\",\"size\":$man_size,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$NAME\",\"org.opencontainers.image.ref.name\":\"latest\"}}]}" >"$WORK/img/index.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$WORK/img" -cf "$OUT.tmp" oci-layout index.json blobs
mv "$OUT.tmp" "$OUT"
echo "build-layered-image: $NAME ($((LAYERS + 1)) layers) -> $OUT"
