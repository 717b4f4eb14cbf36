"""``snapkit cow`` on a real LVM snapshot's COW LV, read as a block device (issue 16).

The offline tools used to size an input by ``fstat().st_size``, which is 0 for a block device,
so ``cow inspect /dev/mapper/VG-SNAP-cow`` read "a COW of 0 sectors". Here the kernel writes
a real COW through an LVM snapshot; inspect and export must see the same store through the
device as through a byte copy of it, and export must give what the snapshot device reads.
"""

from __future__ import annotations

import json

from test_method_lvm import make_vg, snapkit

from vmtests.vm.session import Session

# Origin writes after the snapshot, so the kernel copies these origin chunks into the COW:
# some adjacent (one run), some scattered, one in the LV's last chunk.
WRITES = "0 1 2 3 17 300 301 4095 8191"


def test_inspect_and_export_read_a_cow_lv_as_they_read_its_copy(vm: Session) -> None:
    make_vg(vm)
    vm.sh(
        "lvcreate -q -y -L 32M -n lv vg; "
        "dd if=/dev/urandom of=/dev/vg/lv bs=1M count=32 conv=fsync 2>/dev/null; "
        "lvcreate -q -y -s -L 8M -n snap vg/lv; "
        f"for b in {WRITES}; do "
        "dd if=/dev/urandom of=/dev/vg/lv bs=4k count=1 seek=$b conv=notrunc,fsync 2>/dev/null; "
        "done; sync; "
        "test -b /dev/mapper/vg-snap-cow; "
        "dd if=/dev/mapper/vg-snap-cow of=/tmp/cow.img bs=1M 2>/dev/null; "
        "dd if=/dev/mapper/vg-lv of=/tmp/origin.img bs=1M 2>/dev/null"
    )
    on_device = snapkit(vm, "cow", "inspect", "/dev/mapper/vg-snap-cow", "--json").stdout
    on_file = snapkit(vm, "cow", "inspect", "/tmp/cow.img", "--json").stdout
    assert on_device == on_file
    doc = json.loads(on_device)
    assert doc["valid"] and doc["exceptions"] == len(WRITES.split())
    assert doc["total_sectors"] == 8 * 2048  # the LV's size, from BLKGETSIZE64, not 0
    status = vm.sh("dmsetup status vg-snap").stdout.decode().split()
    assert doc["status"] == " ".join(status[3:5])  # what the kernel itself reports

    snapkit(
        vm,
        "cow",
        "export",
        "--origin",
        "/dev/mapper/vg-lv",
        "--cow",
        "/dev/mapper/vg-snap-cow",
        "--output",
        "/tmp/from-devices.img",
    )
    snapkit(
        vm,
        "cow",
        "export",
        "--origin",
        "/tmp/origin.img",
        "--cow",
        "/tmp/cow.img",
        "--output",
        "/tmp/from-files.img",
        "--no-fsync",
    )
    sums = vm.sh(
        "dd if=/dev/mapper/vg-snap bs=1M 2>/dev/null | sha256sum; "
        "sha256sum < /tmp/from-devices.img; sha256sum < /tmp/from-files.img; "
        "sha256sum < /tmp/origin.img"
    ).stdout.decode()
    snapshot, from_devices, from_files, origin = (line.split()[0] for line in sums.splitlines())
    assert from_devices == from_files == snapshot != origin
