#!/usr/bin/env bash
# Fetch the containerd and runc releases of the compatibility matrix from
# Debian's later suites and unpack them (dpkg -x, nothing is installed):
#
#   sudo ./scripts/fetch-containerd-versions.sh DIR
#
#   DIR/containerd-1.7.24/usr/bin/{containerd,ctr,containerd-shim-runc-v2}   (trixie)
#   DIR/containerd-2.1.9/usr/bin/{containerd,ctr,containerd-shim-runc-v2}    (sid)
#   DIR/runc-1.3/usr/sbin/runc                                               (sid)
#
# Each unpacked tree holds `.deb-version` (the exact Debian version) and is
# complete once `.complete` exists; a complete tree is never fetched again, so
# the script is idempotent and a second run is offline.
#
# The mirror is the machine's own (BRISK_DEBIAN_MIRROR=URI overrides it); apt
# runs with a private sources list, lists and cache under DIR/.apt and the
# machine's apt state is not touched (scripts/lib/debian-suites.sh).
#
# Versions (upstream version prefixes) can be overridden:
#   BRISK_CONTAINERD_17=1.7.24 BRISK_CONTAINERD_2=2.1.9 BRISK_RUNC_13=1.3
set -euo pipefail

DIR=${1:?usage: fetch-containerd-versions.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# name  package  suite  upstream-version-prefix
WANT=(
    "containerd-${BRISK_CONTAINERD_17:-1.7.24} containerd trixie ${BRISK_CONTAINERD_17:-1.7.24}"
    "containerd-${BRISK_CONTAINERD_2:-2.1.9} containerd sid ${BRISK_CONTAINERD_2:-2.1.9}"
    "runc-${BRISK_RUNC_13:-1.3} runc sid ${BRISK_RUNC_13:-1.3}"
)

log() { echo "fetch-containerd-versions: $*" >&2; }

missing=()
for w in "${WANT[@]}"; do
    read -r name _ _ _ <<<"$w"
    [[ -e $DIR/$name/.complete ]] || missing+=("$w")
done
if ((${#missing[@]} == 0)); then
    log "all present in $DIR"
    exit 0
fi
# shellcheck source=scripts/lib/debian-suites.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-suites.sh"
codename=$(debian_codename)
debian_suites_init "$DIR/.apt" trixie sid ${codename:+"$codename"}
A=$DEBIAN_APT_DIR

# sid's runc is built against sid's glibc (it needs GLIBC_2.38 for one
# symbol, __isoc23_strtol) and does not load with an older libc. Give it
# sid's own libc and libseccomp: unpack them next to it and point the
# binary's ELF interpreter and RUNPATH at them (patchelf, from the machine's
# own release). runc's code is unchanged; `runc init` re-executes the same
# patched binary, so it gets the same libraries.
give_own_libc() {
    local tree=$1 bin=$1/usr/sbin/runc libs pe
    [[ -n $codename ]] || { log "no VERSION_CODENAME in /etc/os-release: cannot fetch patchelf"; return 1; }
    libs=$tree/.libc
    rm -rf "$libs"
    debian_unpack "$libs" libc6 sid any >/dev/null
    debian_unpack "$libs" libseccomp2 sid any >/dev/null
    pe=$A/patchelf
    if [[ ! -x $pe/usr/bin/patchelf ]]; then
        rm -rf "$pe"
        debian_unpack "$pe" patchelf "$codename" any >/dev/null
    fi
    local ld="" multiarch="" f
    for f in "$libs"/usr/lib/*/ld-linux*.so.* "$libs"/usr/lib64/ld-linux*.so.* "$libs"/lib64/ld-linux*.so.*; do
        [[ -e $f ]] && { ld=$f; break; }
    done
    for f in "$libs"/usr/lib/*/libc.so.6 "$libs"/lib/*/libc.so.6; do
        [[ -e $f ]] && { multiarch=$(dirname "$f"); break; }
    done
    [[ -n $ld && -n $multiarch ]] || { log "no dynamic loader or libc.so.6 in sid's libc6"; return 1; }
    "$pe/usr/bin/patchelf" --set-interpreter "$ld" --set-rpath "$multiarch" "$bin"
    echo "ELF interpreter $ld, RUNPATH $multiarch (sid's libc6 and libseccomp2)" >"$tree/.patched"
    log "patched $bin: $(cat "$tree/.patched")"
}

for w in "${missing[@]}"; do
    read -r name pkg suite prefix <<<"$w"
    rm -rf "${DIR:?}/$name"
    version=$(debian_unpack "$DIR/$name" "$pkg" "$suite" "$prefix")
    echo "$version" >"$DIR/$name/.deb-version"
    # Check that it runs here.
    case $pkg in
        containerd)
            "$DIR/$name/usr/bin/containerd" --version >&2
            for b in ctr containerd-shim-runc-v2; do
                [[ -x $DIR/$name/usr/bin/$b ]] || { log "$name lacks usr/bin/$b"; exit 1; }
            done
            ;;
        runc)
            if ! err=$("$DIR/$name/usr/sbin/runc" --version 2>&1 >/dev/null) && [[ $err == *GLIBC_* ]]; then
                log "$name does not load with this libc: $err"
                give_own_libc "$DIR/$name"
            fi
            # Not `| head -n1`: with pipefail, runc's SIGPIPE would fail the script.
            out=$("$DIR/$name/usr/sbin/runc" --version)
            echo "${out%%$'\n'*}" >&2
            ;;
    esac
    touch "$DIR/$name/.complete"
done
log "done: $(for w in "${WANT[@]}"; do read -r n _ <<<"$w"; printf '%s(%s) ' "$n" "$(cat "$DIR/$n/.deb-version")"; done)"
