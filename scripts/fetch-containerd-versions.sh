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
# The mirror is the machine's own: the first `deb` entry of its apt
# configuration (one-line sources.list(.d)/*.list or deb822 *.sources) that
# serves its release codename. BRISK_DEBIAN_MIRROR=URI overrides that.
# apt runs with a private sources list, lists and cache under DIR/.apt; the
# machine's apt state is not touched.
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
if [[ $(id -u) -ne 0 ]]; then
    log "needs root (apt-get update with a private state directory)"
    exit 1
fi
for tool in apt-get apt-cache dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || { log "$tool not found (Debian only)"; exit 1; }
done

# ---- the machine's mirror ---------------------------------------------------

codename=
if [[ -r /etc/os-release ]]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
fi

# Print "URI<TAB>SIGNED_BY<TAB>SUITES" for every enabled `deb` entry apt reads.
apt_entries() {
    local etc list parts f
    etc=$(apt-config shell X Dir::Etc/d | sed -n "s/^X='\(.*\)'$/\1/p")
    list=$(apt-config shell X Dir::Etc::sourcelist/f | sed -n "s/^X='\(.*\)'$/\1/p")
    parts=$(apt-config shell X Dir::Etc::sourceparts/d | sed -n "s/^X='\(.*\)'$/\1/p")
    etc=${etc:-/etc/apt/} list=${list:-${etc}sources.list} parts=${parts:-${etc}sources.list.d/}
    {
        [[ -r $list ]] && echo "L $list"
        for f in "$parts"/*.list; do [[ -r $f ]] && echo "L $f"; done
        for f in "$parts"/*.sources; do [[ -r $f ]] && echo "S $f"; done
    } | while read -r kind f; do
        if [[ $kind == L ]]; then
            # deb [opt=val ...] URI SUITE COMPONENT...
            awk '
                { sub(/#.*/, "") }
                $1 != "deb" { next }
                {
                    signed = ""; i = 2
                    if ($2 ~ /^\[/) {
                        for (; i <= NF; i++) {
                            o = $i; gsub(/[\[\]]/, "", o)
                            if (o ~ /^signed-by=/) { signed = substr(o, 11) }
                            if ($i ~ /\]$/) { i++; break }
                        }
                    }
                    if (i + 1 <= NF) printf "%s\t%s\t%s\n", $i, signed, $(i + 1)
                }' "$f"
        else
            # deb822 stanzas; continuation lines (inline keys) start with a space.
            awk '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "")
                        { n = split(uris, u, " "); for (k = 1; k <= n; k++) printf "%s\t%s\t%s\n", u[k], signed, suites }
                    types = uris = suites = signed = enabled = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]/ { next }
                {
                    key = tolower($0); sub(/:.*/, "", key)
                    val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                    else if (key == "signed-by" && val ~ /^\//) signed = val
                }
                END { flush() }' "$f"
        fi
    done
}

mirror=${BRISK_DEBIAN_MIRROR:-}
signed_by=
if [[ -z $mirror ]]; then
    entries=$(apt_entries)
    # An entry that serves the release itself (not -security/-updates) ...
    line=$(awk -F'\t' -v c="$codename" 'c != "" { n = split($3, s, /[ ,]+/); for (k = 1; k <= n; k++) if (s[k] == c) { print; exit } }' <<<"$entries")
    # ... else any entry whose path ends in /debian.
    [[ -n $line ]] || line=$(awk -F'\t' '$1 ~ /\/debian\/?$/ { print; exit }' <<<"$entries")
    if [[ -z $line ]]; then
        log "no Debian mirror found in the apt configuration; set BRISK_DEBIAN_MIRROR"
        exit 1
    fi
    IFS=$'\t' read -r mirror signed_by _ <<<"$line"
fi
mirror=${mirror%/}
log "mirror from the apt configuration: $mirror"

# ---- private apt state --------------------------------------------------------

A=$DIR/.apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/sources.list.d" "$A/debs"
opt=""
[[ -n $signed_by && -r $signed_by ]] && opt="[signed-by=$signed_by] "
{
    for s in trixie sid ${codename:+"$codename"}; do
        echo "deb $opt$mirror $s main"
    done
} >"$A/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$A/sources.list"
    -o "Dir::Etc::SourceParts=$A/sources.list.d"
    -o "Dir::State::Lists=$A/lists"
    -o "Dir::Cache=$A/cache"
    -o "Dir::Cache::archives=$A/cache/archives"
    -o "APT::Get::List-Cleanup=0"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
)
log "apt-get update (trixie, sid${codename:+, $codename}) into $A"
apt-get "${APT_OPTS[@]}" -qq update

# Newest version of PACKAGE in SUITE whose upstream version starts with
# PREFIX ("any": any version).
pick_version() {
    local pkg=$1 suite=$2 prefix=$3 re
    if [[ $prefix == any ]]; then
        re='.'
    else
        re="^(\\d+:)?${prefix//./\\.}"
        [[ $prefix =~ ^[0-9]+\.[0-9]+$ ]] && re+="\\." || re+="([~+-]|$)"
    fi
    apt-cache "${APT_OPTS[@]}" madison "$pkg" |
        awk -F'|' -v s=" $suite/" 'index($3, s) { gsub(/ /, "", $2); print $2 }' |
        { grep -P "$re" || true; } | sort -V | tail -n1
}

# unpack DEST PACKAGE SUITE PREFIX: download the package and dpkg -x it into
# DEST (added to what is there); print its version.
unpack() {
    local dest=$1 pkg=$2 suite=$3 prefix=$4 version dl deb
    version=$(pick_version "$pkg" "$suite" "$prefix")
    if [[ -z $version ]]; then
        log "$suite has no $pkg $prefix; it has:"
        apt-cache "${APT_OPTS[@]}" madison "$pkg" >&2 || true
        return 1
    fi
    dl=$(mktemp -d "$A/debs/$pkg.XXXXXX")
    log "download $pkg=$version ($suite)"
    (cd "$dl" && apt-get "${APT_OPTS[@]}" -qq download "$pkg=$version")
    deb=$(echo "$dl"/"${pkg}"_*.deb)
    [[ -f $deb ]] || { log "no .deb for $pkg=$version in $dl"; return 1; }
    mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    rm -rf "$dl"
    echo "$version"
}

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
    unpack "$libs" libc6 sid any >/dev/null
    unpack "$libs" libseccomp2 sid any >/dev/null
    pe=$A/patchelf
    if [[ ! -x $pe/usr/bin/patchelf ]]; then
        rm -rf "$pe"
        unpack "$pe" patchelf "$codename" any >/dev/null
    fi
    local ld= multiarch= f
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
    version=$(unpack "$DIR/$name" "$pkg" "$suite" "$prefix")
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
