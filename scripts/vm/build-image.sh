#!/usr/bin/env bash
# Build the cgroup v2 guest of the VM test lane from Debian packages only:
#
#   sudo ./scripts/vm/build-image.sh [VM_DIR]     (default target/vm)
#
# prints the directory that holds the guest:
#
#   VM_DIR/image-<key>/rootfs.img    ext4, Debian 12 minbase: systemd as PID 1
#                                    (cgroup v2, unified hierarchy), containerd
#                                    1.6.20, runc, crun, strace, procps, iproute2,
#                                    util-linux, dbus (runc's systemd driver)
#   VM_DIR/image-<key>/vmlinux       Debian 12's kernel 6.1, uncompressed (under
#                                    QEMU's TCG the kernel's own decompression
#                                    takes minutes)
#   VM_DIR/image-<key>/initrd.img    busybox: loads the virtio, ext4, overlay
#                                    and 9p modules, switch_root to /dev/vda
#   VM_DIR/image-<key>/.complete     written last
#
# <key> is a hash of this script: a second run finds the image and builds
# nothing; a changed script builds a new one (older images are removed).
#
# The guest runs no test by itself: at boot, the unit brisk-vm-job.service
# runs `/results/job.sh` from the 9p share tagged `results` (written by the
# driver, integration/src/vm.rs) and powers the guest off when it ends.
# containerd.service is installed (Debian's unit) but not enabled.
#
# Packages come from the machine's own Debian mirror (its apt configuration,
# scripts/lib/debian-suites.sh; BRISK_DEBIAN_MIRROR=URI overrides it).
# Installs qemu-system-x86, debootstrap, kmod, e2fsprogs and busybox-static
# on the host when missing. Needs root and about 1.5 GB of disk.
set -eEuo pipefail
trap 'echo "vm/build-image: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF="$ROOT/scripts/vm/build-image.sh"
log() { echo "vm/build-image: $*" >&2; }
# shellcheck source=../lib/debian-suites.sh
source "$ROOT/scripts/lib/debian-suites.sh"

VM_DIR=${1:-$ROOT/target/vm}
mkdir -p "$VM_DIR"
VM_DIR=$(cd "$VM_DIR" && pwd)
# The suite and the guest's packages (busybox-static: brisk-bench's floor,
# runc alone on a busybox rootfs, in the bench groups).
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,udev,dbus,kmod,iproute2,procps,util-linux,strace,containerd,runc,crun,ca-certificates,busybox-static
# Modules the initramfs loads (with their dependencies), in this order.
INITRD_MODULES=(crc32c_generic virtio_pci virtio_blk ext4 overlay 9p 9pnet_virtio)
IMAGE_SIZE=2G

key=$(sha256sum "$SELF" "$ROOT/scripts/lib/debian-suites.sh" | sha256sum | cut -c1-16)
OUT=$VM_DIR/image-$key
if [[ -e $OUT/.complete ]]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    log "needs root (debootstrap, mke2fs -d of a root-owned tree)"
    exit 1
fi

# ---- host tools ---------------------------------------------------------------
need=()
for p in qemu-system-x86 debootstrap kmod e2fsprogs busybox-static xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

started=$SECONDS
# Earlier images (another key) and a half-built one are replaced.
for d in "$VM_DIR"/image-*; do
    [[ -e $d ]] || continue
    log "removing $d"
    rm -rf "$d"
done
WORK=$VM_DIR/build-$key
rm -rf "$WORK"
mkdir -p "$WORK"
cleanup() {
    local rc=$?
    # debootstrap may leave its chroot's proc/sys mounted after a failure.
    for m in $(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

debian_find_mirror
DIR=$WORK/rootfs

# ---- the root filesystem ------------------------------------------------------
log "debootstrap --variant=minbase $SUITE (about 2 minutes)"
debootstrap_opts=(--variant=minbase --include="$INCLUDE")
[[ -n $DEBIAN_SIGNED_BY && -r $DEBIAN_SIGNED_BY ]] && debootstrap_opts+=(--keyring="$DEBIAN_SIGNED_BY")
if ! debootstrap "${debootstrap_opts[@]}" "$SUITE" "$DIR" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -r $DIR/debootstrap/debootstrap.log ]] && tail -n 30 "$DIR/debootstrap/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
fi
log "debootstrap done after $((SECONDS - started)) s"

# The kernel: Debian 12's, unpacked into the root filesystem (its modules are
# needed after switch_root too), not installed (no initramfs-tools run).
debian_suites_init "$WORK/apt" "$SUITE"
kpkg=$(apt-cache "${DEBIAN_APT_OPTS[@]}" depends linux-image-amd64 |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
[[ -n $kpkg ]] || { log "no linux-image-<version>-amd64 behind linux-image-amd64 in $SUITE"; exit 1; }
# Unpacked apart: tar would replace the /lib -> usr/lib symlink of the
# merged-/usr tree with a directory.
K=$WORK/kernel
kversion=$(debian_unpack "$K" "$kpkg" "$SUITE" any)
KVER=${kpkg#linux-image-}
log "kernel $kpkg $kversion"
mkdir -p "$DIR/usr/lib/modules"
cp -a "$K/lib/modules/$KVER" "$DIR/usr/lib/modules/"
# Hardware the guest does not have: about 300 MB less to copy into the image.
M=$DIR/usr/lib/modules/$KVER/kernel
rm -rf "$M"/drivers/{gpu,media,infiniband,staging,usb,bluetooth,iio,isdn,hwmon,mtd,net/wireless,net/ethernet,input/touchscreen} \
    "$M"/sound "$M"/net/{wireless,bluetooth,mac80211}
depmod -b "$DIR" "$KVER"

# What the lane needs that debootstrap does not make.
echo brisk-vm >"$DIR/etc/hostname"
printf '127.0.0.1\tlocalhost brisk-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$DIR/etc/hosts"
# CRI copies it into every pod; the guest has no network.
echo 'nameserver 127.0.0.1' >"$DIR/etc/resolv.conf"
od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$DIR/etc/machine-id"
echo >>"$DIR/etc/machine-id"
cat >"$DIR/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,noatime 0 1
results /results 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0
EOF
mkdir -p "$DIR/results"

# The job: whatever the driver put in /results/job.sh; the guest powers off
# when it ends, however it ends.
cat >"$DIR/etc/systemd/system/brisk-vm-job.service" <<'EOF'
[Unit]
Description=brisk VM lane: run /results/job.sh, then power off
After=multi-user.target
RequiresMountsFor=/results
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh /results/job.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/brisk-vm-job.service "$DIR/etc/systemd/system/multi-user.target.wants/brisk-vm-job.service"
# containerd starts only when a test starts it; apt's timers and the
# console login have nothing to do here.
rm -f "$DIR/etc/systemd/system/multi-user.target.wants/containerd.service"
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service; do
    ln -sf /dev/null "$DIR/etc/systemd/system/$u"
done
# Journald to memory only: the root disk is a throw-away snapshot anyway.
mkdir -p "$DIR/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$DIR/etc/systemd/journald.conf.d/volatile.conf"
rm -rf "$DIR/var/cache/apt/archives/"*.deb "$DIR/var/lib/apt/lists/"* 2>/dev/null || true

# ---- the kernel, uncompressed -------------------------------------------------
vmlinuz=$K/boot/vmlinuz-$KVER
[[ -f $vmlinuz ]] || { log "no $vmlinuz in $kpkg"; exit 1; }
# The xz stream inside the bzImage: its magic FD 37 7A 58 5A 00.
off=$(LC_ALL=C grep -obUaP -m1 '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1 | head -n1) || true
[[ -n $off ]] || { log "no xz stream in $vmlinuz"; exit 1; }
tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream >"$WORK/vmlinux" 2>/dev/null || true
[[ $(head -c4 "$WORK/vmlinux" | od -An -c | tr -d ' ') == 177ELF ]] || { log "the xz stream of $vmlinuz is no ELF kernel"; exit 1; }

# ---- the initramfs --------------------------------------------------------------
I=$WORK/initrd
mkdir -p "$I"/{bin,dev,proc,sys,newroot,modules}
cp /bin/busybox "$I/bin/busybox"
: >"$I/modules/order"
for m in "${INITRD_MODULES[@]}"; do
    # "insmod /lib/modules/.../x.ko" lines, dependencies first; "builtin x" for built-ins.
    while read -r kind path _; do
        [[ $kind == insmod ]] || continue
        f=${path#"$DIR"}
        b=$(basename "$f")
        grep -qx "$b" "$I/modules/order" && continue
        case $b in
            *.ko) cp "$DIR$f" "$I/modules/$b" ;;
            *.ko.xz) xz -dc "$DIR$f" >"$I/modules/${b%.xz}"; b=${b%.xz} ;;
            *) log "cannot load $b"; exit 1 ;;
        esac
        grep -qx "$b" "$I/modules/order" || echo "$b" >>"$I/modules/order"
    done < <(modprobe -d "$DIR" -S "$KVER" --show-depends "$m")
done
cat >"$I/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /modules/order); do
    /bin/busybox insmod /modules/$m || echo "initrd: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -le 300 ] || { echo "initrd: no /dev/vda"; /bin/busybox poweroff -f; }
    /bin/busybox sleep 0.1
done
/bin/busybox mount -t ext4 -o rw,noatime /dev/vda /newroot || { echo "initrd: mount /dev/vda failed"; /bin/busybox poweroff -f; }
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
EOF
chmod 0755 "$I/init"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$WORK/initrd.img"

# ---- the disk image -------------------------------------------------------------
log "mke2fs -d ($(du -sm "$DIR" | cut -f1) MB of files)"
mke2fs -q -t ext4 -L brisk-vm -d "$DIR" "$WORK/rootfs.img" "$IMAGE_SIZE"

mkdir -p "$OUT"
mv "$WORK/rootfs.img" "$WORK/vmlinux" "$WORK/initrd.img" "$OUT/"
{
    echo "suite $SUITE"
    echo "kernel $kpkg $kversion"
    dpkg-query --admindir="$DIR/var/lib/dpkg" -W -f='${Package} ${Version}\n' containerd runc systemd strace 2>/dev/null || true
} >"$OUT/manifest"
touch "$OUT/.complete"
log "built $OUT in $((SECONDS - started)) s"
echo "$OUT"
