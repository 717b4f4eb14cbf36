# The last step of a boot whose state is saved (vmtests.vm.resume), run by busybox sh in the
# final root instead of stage2.sh. park.py says "parked" and the host saves the VM here. Every
# boot restored from that state resumes here: park.py takes in this boot's payload (the tree,
# the command, the environment, the hostname: unpacked into / as init.sh would have copied
# them), sets the clock and re-seeds the entropy pool. Then each per-boot disk is forgotten as
# the saved boot saw it (its placeholder's cached blocks, partition table and serial) and read
# again as this boot's, and stage2.sh starts the job exactly as after a cold boot.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -o pipefail
fail() {
    echo "vmtest-park: FATAL: $*" >/dev/console
    exit 1
}
cd /
python3 -I -S /vmtest-park/park.py 3<>/dev/vmtest/vmtest-ctl 4>/dev/urandom \
    | (rm -rf /src /vmtest && cpio -i -d -m 2>/dev/null) \
    || fail "receive this boot's payload"

for s in /sys/block/vd*/serial; do
    read -r serial <"$s"
    case $serial in vmtest-root | vmtest-modules) continue ;; esac
    d=${s%/serial}
    d=/dev/${d##*/}
    blockdev --flushbufs "$d" && blockdev --rereadpt "$d" || fail "re-read disk $d"
done
for l in /dev/vmtest/*; do
    case $(readlink "$l") in /dev/vd*) rm "$l" ;; esac
done
for s in /sys/block/vd*/serial; do
    read -r serial <"$s"
    d=${s%/serial}
    ln -sf "/dev/${d##*/}" "/dev/vmtest/$serial"
done
read -r hostname </vmtest/hostname && echo "$hostname" >/proc/sys/kernel/hostname
exec /bin/busybox sh /src/vmtests/guest/stage2.sh
