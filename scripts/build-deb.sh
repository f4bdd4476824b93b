#!/usr/bin/env bash
# Build the Debian package of brisk with cargo-deb:
#   ./scripts/build-deb.sh            -> prints the path of target/debian/brisk_*.deb
# Contents ([package.metadata.deb] in shim/Cargo.toml):
#   /usr/bin/containerd-shim-brisk-v2, /usr/bin/brisk-ctl,
#   /usr/share/doc/brisk/{README.md,BENCHMARKS.md},
#   /usr/share/doc/brisk/examples/ (configs/: brisk.toml, containerd snippets,
#   Kubernetes manifests).
# cargo-deb (pinned below) is installed into target/tools when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

CARGO_DEB_VERSION=3.8.0
TOOLS=$ROOT/target/tools
if [[ $("$TOOLS/bin/cargo-deb" --version 2>/dev/null) != *" $CARGO_DEB_VERSION"* ]]; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION into $TOOLS" >&2
    cargo install --quiet --locked --root "$TOOLS" cargo-deb --version "$CARGO_DEB_VERSION" >&2
fi

cargo build --release --workspace --quiet >&2
# The workspace builds for an explicit target (.cargo/config.toml); tell
# cargo-deb, which then reads the assets from target/<tuple>/release.
HOST_TUPLE=$(rustc -vV | sed -n 's/^host: //p')
out=$ROOT/target/debian
mkdir -p "$out"
rm -f "$out"/brisk_*.deb
# The binaries are already built (and stripped by the release profile).
"$TOOLS/bin/cargo-deb" -p brisk-shim --target "$HOST_TUPLE" --no-build --no-strip --output "$out" >&2
deb=$(echo "$out"/brisk_*.deb)
[[ -f $deb ]] || { echo "build-deb: no package in $out" >&2; exit 1; }
dpkg-deb --info "$deb" >&2
dpkg-deb --contents "$deb" >&2
echo "$deb"
