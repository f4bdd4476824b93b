# Packages from other Debian suites than the machine's own, through a private
# apt state; sourced by scripts/fetch-containerd-versions.sh and
# scripts/build-containerd-from-source.sh. Nothing is installed: packages are
# downloaded and unpacked with dpkg-deb -x.
#
#   source scripts/lib/debian-suites.sh
#   debian_suites_init STATE_DIR SUITE...   # private apt state, apt-get update
#   version=$(debian_unpack DEST PACKAGE SUITE PREFIX)
#
# The mirror is the machine's own: the first `deb` entry of its apt
# configuration (one-line sources.list(.d)/*.list or deb822 *.sources) that
# serves its release codename. BRISK_DEBIAN_MIRROR=URI overrides that.
# The caller defines `log MESSAGE...` (to stderr).

# The machine's release codename (empty if /etc/os-release has none).
debian_codename() {
    [[ -r /etc/os-release ]] || return 0
    (. /etc/os-release && echo "${VERSION_CODENAME:-}")
}

# Print "URI<TAB>SIGNED_BY<TAB>SUITES" for every enabled `deb` entry apt reads.
debian_apt_entries() {
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

# Set DEBIAN_MIRROR and DEBIAN_SIGNED_BY from BRISK_DEBIAN_MIRROR or the
# machine's apt configuration.
debian_find_mirror() {
    local entries line codename
    DEBIAN_MIRROR=${BRISK_DEBIAN_MIRROR:-}
    DEBIAN_SIGNED_BY=
    if [[ -z $DEBIAN_MIRROR ]]; then
        codename=$(debian_codename)
        entries=$(debian_apt_entries)
        # An entry that serves the release itself (not -security/-updates) ...
        line=$(awk -F'\t' -v c="$codename" 'c != "" { n = split($3, s, /[ ,]+/); for (k = 1; k <= n; k++) if (s[k] == c) { print; exit } }' <<<"$entries")
        # ... else any entry whose path ends in /debian.
        [[ -n $line ]] || line=$(awk -F'\t' '$1 ~ /\/debian\/?$/ { print; exit }' <<<"$entries")
        if [[ -z $line ]]; then
            log "no Debian mirror found in the apt configuration; set BRISK_DEBIAN_MIRROR"
            return 1
        fi
        IFS=$'\t' read -r DEBIAN_MIRROR DEBIAN_SIGNED_BY _ <<<"$line"
    fi
    DEBIAN_MIRROR=${DEBIAN_MIRROR%/}
    log "mirror from the apt configuration: $DEBIAN_MIRROR"
}

# debian_suites_init STATE_DIR SUITE...: a private apt state in STATE_DIR
# (sources list, lists, cache) serving SUITE... (main) from the machine's
# mirror, updated; sets DEBIAN_APT_DIR and DEBIAN_APT_OPTS. The machine's apt
# state is not touched. Needs root (apt's sandbox user) and Debian's tools.
debian_suites_init() {
    local dir=$1 s opt="" tool
    shift
    if [[ $(id -u) -ne 0 ]]; then
        log "needs root (apt-get update with a private state directory)"
        return 1
    fi
    for tool in apt-get apt-cache apt-config dpkg dpkg-deb; do
        command -v "$tool" >/dev/null || { log "$tool not found (Debian only)"; return 1; }
    done
    debian_find_mirror || return 1
    DEBIAN_APT_DIR=$dir
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d" "$dir/debs"
    [[ -n $DEBIAN_SIGNED_BY && -r $DEBIAN_SIGNED_BY ]] && opt="[signed-by=$DEBIAN_SIGNED_BY] "
    for s in "$@"; do
        echo "deb $opt$DEBIAN_MIRROR $s main"
    done >"$dir/sources.list"
    DEBIAN_APT_OPTS=(
        -o "Dir::Etc::SourceList=$dir/sources.list"
        -o "Dir::Etc::SourceParts=$dir/sources.list.d"
        -o "Dir::State::Lists=$dir/lists"
        -o "Dir::Cache=$dir/cache"
        -o "Dir::Cache::archives=$dir/cache/archives"
        -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1"
        -o "Acquire::Languages=none"
        -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    )
    log "apt-get update ($*) into $dir"
    apt-get "${DEBIAN_APT_OPTS[@]}" -qq update
}

# debian_pick_version PACKAGE SUITE PREFIX: the newest version of PACKAGE in
# SUITE whose upstream version starts with PREFIX ("any": any version; "1.3"
# matches 1.3.x, "2.1.9" matches 2.1.9 with any Debian suffix).
debian_pick_version() {
    local pkg=$1 suite=$2 prefix=$3 re
    if [[ $prefix == any ]]; then
        re='.'
    else
        re="^(\\d+:)?${prefix//./\\.}"
        [[ $prefix =~ ^[0-9]+\.[0-9]+$ ]] && re+="\\." || re+="([~+-]|$)"
    fi
    apt-cache "${DEBIAN_APT_OPTS[@]}" madison "$pkg" |
        awk -F'|' -v s=" $suite/" 'index($3, s) { gsub(/ /, "", $2); print $2 }' |
        { grep -P "$re" || true; } | sort -V | tail -n1
}

# debian_unpack DEST PACKAGE SUITE PREFIX: download the package (version as
# in debian_pick_version) and dpkg-deb -x it into DEST (added to what is
# there); print its version.
debian_unpack() {
    local dest=$1 pkg=$2 suite=$3 prefix=$4 version dl deb
    version=$(debian_pick_version "$pkg" "$suite" "$prefix")
    if [[ -z $version ]]; then
        log "$suite has no $pkg $prefix; it has:"
        apt-cache "${DEBIAN_APT_OPTS[@]}" madison "$pkg" >&2 || true
        return 1
    fi
    dl=$(mktemp -d "$DEBIAN_APT_DIR/debs/$pkg.XXXXXX")
    log "download $pkg=$version ($suite)"
    (cd "$dl" && apt-get "${DEBIAN_APT_OPTS[@]}" -qq download "$pkg=$version")
    deb=$(echo "$dl"/"${pkg}"_*.deb)
    [[ -f $deb ]] || { log "no .deb for $pkg=$version in $dl"; rm -rf "$dl"; return 1; }
    mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    rm -rf "$dl"
    echo "$version"
}
