#!/usr/bin/env bash
# Install the brisk .deb on this machine, check it, and remove it again:
#   sudo ./scripts/test-deb.sh [DEB]     (default: builds it with build-deb.sh)
# Checks the files, `containerd-shim-brisk-v2 --version`, `brisk-ctl --version`,
# that `brisk-ctl uninstall`/`install` leave the package's shim to apt,
# that a private containerd runs a brisk pod with the installed shim, then
# purges the package and checks that every file is gone. Refuses to run where
# brisk is already installed (it would remove the operator's copy).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "test-deb: needs root (dpkg -i)" >&2
    exit 1
fi

deb=${1:-$("$ROOT/scripts/build-deb.sh" 2>/dev/null)}
[[ -f $deb ]] || { echo "test-deb: no package: $deb" >&2; exit 1; }
pkg=$(dpkg-deb -f "$deb" Package)
version=$(dpkg-deb -f "$deb" Version)

if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    echo "test-deb: $pkg is installed on this machine already; not touching it" >&2
    exit 1
fi
files=()
while IFS= read -r f; do
    files+=("/${f#./}")
done < <(dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$')
for f in "${files[@]}"; do
    if [[ -e $f ]]; then
        echo "test-deb: $f exists already (not from the package); not touching it" >&2
        exit 1
    fi
done

installed=0
fail() {
    echo "test-deb: FAIL: $*" >&2
    exit 1
}
cleanup() {
    local rc=$?
    trap - EXIT
    if ((installed)); then
        dpkg --purge "$pkg" >/dev/null || { echo "test-deb: dpkg --purge $pkg failed" >&2; rc=1; }
    fi
    exit "$rc"
}
trap cleanup EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb"
installed=1

dpkg-query -W -f='${Status} ${Version}\n' "$pkg" | grep -qx "install ok installed $version" ||
    fail "dpkg does not list $pkg $version as installed"
for f in "${files[@]}"; do
    [[ -e $f ]] || fail "$f missing after install"
done
for f in /usr/bin/containerd-shim-brisk-v2 /usr/bin/brisk-ctl \
    /usr/share/doc/brisk/README.md /usr/share/doc/brisk/examples/brisk.toml \
    /usr/share/doc/brisk/examples/containerd/v2-brisk.toml \
    /usr/share/doc/brisk/examples/containerd/v3-brisk.toml \
    /usr/share/doc/brisk/examples/kubernetes/runtimeclass.yaml \
    /usr/share/doc/brisk/examples/prometheus/brisk-alerts.yml \
    /usr/share/doc/brisk/examples/grafana/brisk-node.json \
    /usr/lib/systemd/system/brisk-exporter.service \
    /usr/share/man/man1/brisk-ctl.1.gz \
    /usr/share/bash-completion/completions/brisk-ctl \
    /usr/share/zsh/vendor-completions/_brisk-ctl \
    /usr/share/fish/vendor_completions.d/brisk-ctl.fish; do
    [[ -e $f ]] || fail "$f not installed"
    dpkg -S "$f" >/dev/null 2>&1 || fail "$f not owned by $pkg"
done
[[ -x /usr/bin/containerd-shim-brisk-v2 ]] || fail "shim not executable"
[[ $(command -v containerd-shim-brisk-v2) == /usr/bin/containerd-shim-brisk-v2 ]] ||
    fail "containerd-shim-brisk-v2 on PATH is $(command -v containerd-shim-brisk-v2)"

echo "== containerd-shim-brisk-v2 --version"
out=$(containerd-shim-brisk-v2 --version) || fail "--version failed"
echo "$out"
[[ $out == *"${version%%-*}"* ]] || fail "--version does not show ${version%%-*}"
echo "== brisk-ctl --version"
brisk-ctl --version || fail "brisk-ctl --version failed"

echo "== brisk-ctl's man page and completions"
zcat /usr/share/man/man1/brisk-ctl.1.gz | grep -q '^\.TH brisk-ctl' || fail "brisk-ctl.1.gz is not a man page"
# shellcheck disable=SC1091 # the file under test
out=$(bash -c 'source /usr/share/bash-completion/completions/brisk-ctl && complete -p brisk-ctl') ||
    fail "the bash completion does not register for brisk-ctl"
echo "$out"

echo "== the exporter's unit: installed, disabled, runs the package's brisk-ctl"
unit=/usr/lib/systemd/system/brisk-exporter.service
[[ $(stat -c %a "$unit") == 644 ]] || fail "$unit mode $(stat -c %a "$unit")"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[[ $exec_start == "/usr/bin/brisk-ctl "* ]] || fail "$unit runs $exec_start"
for d in /etc/systemd/system /usr/lib/systemd/system; do
    if compgen -G "$d/*.wants/brisk-exporter.service" >/dev/null; then
        fail "brisk-exporter.service is enabled by the package ($d)"
    fi
done
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
fi
# What the unit runs, on a port of the test's own, answers /metrics.
port=$(shuf -i 20000-60000 -n 1)
# shellcheck disable=SC2086 # ExecStart is split into words as systemd does
set -- ${exec_start/127.0.0.1:9807/127.0.0.1:$port}
"$@" --list-interval 0 2>/dev/null &
exporter=$!
ok=0
for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -q '^brisk_shims '; then
        ok=1
        break
    fi
    sleep 0.1
done
kill "$exporter" 2>/dev/null || true
wait "$exporter" 2>/dev/null || true
((ok)) || fail "the unit's command does not serve /metrics"

echo "== brisk-ctl leaves the package's shim to apt"
shim=/usr/bin/containerd-shim-brisk-v2
out=$(brisk-ctl uninstall 2>&1) && fail "brisk-ctl uninstall succeeded: $out"
echo "$out"
[[ $out == *"apt-get remove $pkg"* ]] || fail "brisk-ctl uninstall does not point to apt: $out"
out=$(brisk-ctl --bin-dir /usr/bin install 2>&1) && fail "brisk-ctl install over $shim succeeded: $out"
[[ $out == *"package $pkg"* ]] || fail "brisk-ctl install does not name the package: $out"
[[ -x $shim ]] || fail "brisk-ctl removed or broke $shim"
dpkg --verify "$pkg" || fail "dpkg --verify $pkg: files changed"

echo "== a brisk pod with the installed shim"
BRISK_SHIM_BIN=/usr/bin/containerd-shim-brisk-v2 \
    cargo test --release --quiet --workspace --test deploy -- --exact brisk_toml_example_runs_a_pod ||
    fail "the installed shim does not run a pod"

echo "== dpkg --purge $pkg"
installed=0
dpkg --purge "$pkg"
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'installed'; then
    fail "$pkg still installed after purge"
fi
for f in "${files[@]}" /usr/share/doc/brisk; do
    [[ ! -e $f ]] || fail "$f left after purge"
done
echo "test-deb: ok ($pkg $version installed, checked, purged)"
