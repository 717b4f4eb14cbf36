"""``btrfs`` in a real guest: snapshot a mounted subvolume under a writer, check it, mount it,
roll the origin back by renaming (after the documented umount), and discard."""

from __future__ import annotations

import json
import time

from test_method_lvm import assert_writable, marker, snapkit, start_writer, stop_writer

from vmtests.session import Session

DEV = "/dev/loop0"


def setup(vm: Session) -> None:
    vm.sh("truncate -s 400M /tmp/b.img; /sbin/losetup /dev/loop0 /tmp/b.img; mkfs.btrfs -q -f "
          f"{DEV}; mkdir -p /mnt/top /mnt/o /mnt/s; mount {DEV} /mnt/top; "
          "btrfs -q subvolume create /mnt/top/data; umount /mnt/top; "
          f"mount -o subvol=data {DEV} /mnt/o; echo before > /mnt/o/marker; sync")  # fmt: skip


def test_btrfs_lifecycle(vm: Session) -> None:
    setup(vm)
    writer = start_writer(vm)
    time.sleep(1)
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s1", "--method", "btrfs")
    vm.sh("echo after > /mnt/o/marker; sync")
    stop_writer(writer)
    assert_writable(vm)
    check = vm.run(["btrfs", "check", "--readonly", "--force", DEV], timeout=300)
    assert check.returncode == 0, check.stderr.decode()
    shown = vm.run(["snapkit", "snapshot", "status", "s1", "--json"], check=True).stdout
    assert json.loads(shown)["details"]["subvol"] == ".snapkit/s1"
    snapkit(vm, "snapshot", "mount", "s1", "/mnt/s")  # ro,subvol=.snapkit/s1 on DEV
    assert marker(vm, "/mnt/s") == "before"
    vm.sh("umount /mnt/s")
    refused = vm.run(["snapkit", "snapshot", "merge", "s1"])
    assert refused.returncode == 1 and b"umount /mnt/o" in refused.stderr
    vm.sh("umount /mnt/o")
    snapkit(vm, "snapshot", "merge", "s1")
    vm.sh(f"mount -o subvol=data {DEV} /mnt/o")
    assert marker(vm, "/mnt/o") == "before"
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s2", "--method", "btrfs")
    vm.sh("echo changed > /mnt/o/marker; sync")
    snapkit(vm, "snapshot", "discard", "s2")
    assert marker(vm, "/mnt/o") == "changed"
    listing = vm.run(["btrfs", "subvolume", "list", "/mnt/o"]).stdout.decode()
    assert ".snapkit/" not in listing and "snapkit-old" not in listing, listing
    assert vm.run(["sh", "-c", "grep -c /run/snapkit /proc/mounts"]).stdout.strip() == b"0"


def test_top_level_origin_refuses_merge(vm: Session) -> None:
    vm.sh(f"truncate -s 300M /tmp/b.img; /sbin/losetup /dev/loop0 /tmp/b.img; mkfs.btrfs -q -f "
          f"{DEV}; mkdir -p /mnt/o; mount {DEV} /mnt/o")  # fmt: skip
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s1", "--method", "btrfs")
    vm.sh("umount /mnt/o")
    refused = vm.run(["snapkit", "snapshot", "merge", "s1"])
    assert refused.returncode == 1 and b"top-level" in refused.stderr
