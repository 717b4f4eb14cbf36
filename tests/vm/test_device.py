"""``device prepare``/``release`` on a partition at an offset, and both raw methods on it.

The MBR is written by hand (no sfdisk needed): one Linux partition at sector 2048.
"""

from __future__ import annotations

import json
import struct

import pytest
from workload import COW_DIR, mount, snapkit, umount

from vmtests.vm.session import Session

START, SECTORS = 2048, 2 * 64 * 1024  # 64 MiB partition at 1 MiB


def _mbr() -> bytes:
    entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", START, SECTORS)
    return bytes(446) + entry + bytes(48) + b"\x55\xaa"


@pytest.mark.parametrize("method", ["dm", "dm-direct"])
def test_a_partition_at_an_offset(vm: Session, method: str) -> None:
    vm.put("/tmp/mbr", _mbr())
    vm.sh(
        f"mkdir -p /mnt/o /mnt/s {COW_DIR}; truncate -s 80M /tmp/disk.img; "
        "dd if=/tmp/mbr of=/tmp/disk.img conv=notrunc 2>/dev/null; "
        "/sbin/losetup -P -f /tmp/disk.img; test -b /dev/loop0p1"
    )
    assert vm.sh("cat /sys/class/block/loop0p1/start").stdout == b"2048\n"
    out = snapkit(vm, "device", "prepare", "/dev/loop0p1", "--name", "part").stdout.decode()
    assert "partition starting at sector 2048" in out and "mount /dev/mapper/part" in out
    table = vm.sh("dmsetup table part").stdout.decode()
    assert table.startswith(f"0 {SECTORS} linear ") and table.endswith(" 0\n")
    vm.sh("/sbin/mkfs.ext4 -q -F /dev/mapper/part")
    mount(vm, "ext4", "/dev/mapper/part", "/mnt/o")
    vm.sh("echo one > /mnt/o/a && sync")
    snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/o",
        "--name",
        "s",
        "--method",
        method,
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "16M",
    )
    vm.sh("echo two > /mnt/o/a && sync")
    umount(vm, "/mnt/o")
    snap = json.loads(snapkit(vm, "snapshot", "merge", "s", "--wait", "--json").stdout)
    assert snap["state"] == "merged"
    mount(vm, "ext4", "/dev/mapper/part", "/mnt/o")
    assert vm.sh("cat /mnt/o/a").stdout == b"one\n"
    assert vm.sh("dmsetup table part").stdout.decode() == table
    refused = snapkit(vm, "device", "release", "part", check=False)
    assert refused.returncode == 1 and b"unmount" in refused.stderr
    umount(vm, "/mnt/o")
    released = json.loads(snapkit(vm, "device", "release", "part", "--json").stdout)
    assert released == {"name": "part", "released": True, "mount_instead": "/dev/loop0p1"}
    assert vm.sh("dmsetup ls").stdout == b"No devices found\n"
    mount(vm, "ext4", "/dev/loop0p1", "/mnt/o")  # the partition itself, unchanged in place
    assert vm.sh("cat /mnt/o/a").stdout == b"one\n"
