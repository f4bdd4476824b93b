# Shared setup for the scripts: source it. Puts cargo on PATH, installs the
# Debian packages, builds the image archives.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

"$ROOT/scripts/install-deps.sh"

export BRISK_IMAGES_DIR=${BRISK_IMAGES_DIR:-$ROOT/target/images}
"$ROOT/scripts/build-images.sh" "$BRISK_IMAGES_DIR" >/dev/null
# The workspace builds for an explicit target (.cargo/config.toml), so
# release binaries land in target/<host tuple>/release.
HOST_TUPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$ROOT/target/$HOST_TUPLE/release"
export BRISK_SHIM_BIN=${BRISK_SHIM_BIN:-$BIN_DIR/containerd-shim-brisk-v2}

# Leftovers of earlier test instances that could not clean up after themselves
# (their process was SIGKILLed): name them; the harness sweeps them on start.
leftover_instances() {
    local d pid
    for d in "${TMPDIR:-/tmp}"/brisk-it-*; do
        [[ -e $d ]] || continue
        pid=${d##*/brisk-it-}
        pid=${pid%%-*}
        [[ -d /proc/$pid ]] || echo "$d"
    done
}
