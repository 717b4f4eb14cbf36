#!/bin/sh
# PID 1 of the initramfs (static busybox), carried in the per-boot archive. It loads the drivers,
# builds the root from the read-only squashfs plus a tmpfs overlay, carries the per-boot files
# (/src, /vmtest) over, names disks and ports, and hands over to stage 2.
# Under TCG every exec of a dynamically linked program costs tens of milliseconds, so all of
# this runs in busybox with shell builtins, and nothing from the Debian root is started here.
# On any failure it prints why and exits: the kernel then panics and, with panic=-1 and
# -no-reboot, QEMU ends at once, so the host reports the reason instead of waiting for a timeout.
export PATH=/bin
fail() { echo "vmtest-init: FATAL: $*"; exit 1; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r m; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done </lib/modules/load-order

# wait_for LIMIT CMD...: retry CMD every 5 ms, LIMIT times at most.
wait_for() {
    n=$1
    shift
    while ! "$@"; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        usleep 5000
    done
}

# Disks by serial, since virtio-mmio does not fix the vdX order: /dev/vmtest/<serial>.
mkdir -p /dev/vmtest
link_disks() {
    for s in /sys/block/vd*/serial; do
        [ -e "$s" ] || return 1
        read -r serial <"$s"
        d=${s%/serial}
        ln -sf "/dev/${d##*/}" "/dev/vmtest/$serial"
    done
    [ -e /dev/vmtest/vmtest-root ] && [ -e /dev/vmtest/vmtest-modules ]
}
wait_for 1000 link_disks || fail "no disks with serials vmtest-root and vmtest-modules"

mkdir -p /lower /rw /newroot
mount -t squashfs -o ro /dev/vmtest/vmtest-root /lower || fail "mount the squashfs root"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "mount overlay"
cp -a /src /vmtest /newroot/ || fail "copy per-boot files"
# The kernel layer's modules tree is a read-only disk of its own, so one userland serves
# every kernel; mkdir goes to the overlay's tmpfs upper layer.
read -r kver </proc/sys/kernel/osrelease
mkdir -p "/newroot/lib/modules/$kver"
mount -t squashfs -o ro /dev/vmtest/vmtest-modules "/newroot/lib/modules/$kver" \
    || fail "mount the modules of $kver"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mkdir -p /newroot/run/lock /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
read -r hostname </vmtest/hostname && echo "$hostname" >/proc/sys/kernel/hostname

# Ports by name: /dev/vmtest/<name>. They appear once the host side has announced them.
link_ports() {
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] || continue
        read -r name <"$p/name"
        [ -n "$name" ] && ln -sf "/dev/${p##*/}" "/dev/vmtest/$name"
    done
    for want in $ports; do
        [ -e "/dev/vmtest/$want" ] || return 1
    done
}
read -r ports </vmtest/ports
wait_for 2000 link_ports || fail "virtio ports missing: wanted $ports"

for d in dev proc sys; do mount --move "/$d" "/newroot/$d" || fail "move /$d"; done
# A boot whose state is saved (vmtests.vm.resume) has no tree: it parks in the final root, in
# vmtests/guest/park.py, and every boot restored from it resumes there, so none of them runs
# this script again.
if [ -e /vmtest-park/park.py ]; then
    cp -a /vmtest-park /newroot/ || fail "copy the park script"
    exec switch_root /newroot /usr/bin/python3 -I -S /vmtest-park/park.py
fi
exec switch_root /newroot /bin/busybox sh /src/vmtests/guest/stage2.sh
