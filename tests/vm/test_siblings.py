"""Issue 17: several snapshots of one origin at once, for dm and lvm -- create two, write
between and after, read each one's status, merge the first while the second exists, then
discard the second. The ledger here is a tree digest taken at each snapshot's point in
time: after the merge the origin holds exactly the first one's tree, and the sibling still
holds exactly its own (the kernel copies each merged chunk through the origin's write path,
so the sibling copies it first), fscks clean, and goes cleanly."""

from __future__ import annotations

import json

import pytest
from workload import COW_DIR, fsck, setup_origin, snapkit

from vmtests.vm.session import Session

TREE = "cd {d} && find . -path ./lost+found -prune -o -type f -print0 | sort -z | xargs -0 md5sum"


def _tree(vm: Session, directory: str) -> str:
    return vm.sh(TREE.format(d=directory)).stdout.decode()


def _stage(vm: Session, tag: str) -> None:
    """New files, and half of the earlier ones rewritten: both kinds move chunks to COWs."""
    vm.sh(
        f"for i in $(seq 1 24); do dd if=/dev/urandom of=/mnt/o/{tag}$i bs=16k count=4 "
        "2>/dev/null; done; for f in $(ls /mnt/o | grep -v lost | head -12); do "
        f"echo {tag} >> /mnt/o/$f; done; sync"
    )


def _origin(vm: Session, method: str) -> tuple[str, list[str]]:
    if method == "dm":
        setup_origin(vm, "ext4", size="256M")
        return "/dev/mapper/data", ["--cow-dir", COW_DIR]
    vm.sh(
        "truncate -s 800M /tmp/pv.img; L=$(/sbin/losetup --show -f /tmp/pv.img); "
        "pvcreate -q $L; vgcreate -q vg $L; lvcreate -q -L 256M -n lv vg; "
        "mkfs.ext4 -q /dev/vg/lv; mkdir -p /mnt/o /mnt/s; mount /dev/vg/lv /mnt/o"
    )
    return "/dev/vg/lv", []


@pytest.mark.parametrize("method", ["dm", "lvm"])
def test_merge_one_of_two_snapshots_keeps_the_other_whole(vm: Session, method: str) -> None:
    device, where = _origin(vm, method)
    create = ["snapshot", "create", "/mnt/o", "--method", method, "--cow-size", "64M", *where]
    _stage(vm, "a")
    first = _tree(vm, "/mnt/o")
    snapkit(vm, *create, "--name", "s1")
    _stage(vm, "b")
    second = _tree(vm, "/mnt/o")
    snapkit(vm, *create, "--name", "s2")
    _stage(vm, "c")
    assert first != second != _tree(vm, "/mnt/o")
    for name in ("s1", "s2"):
        status = json.loads(snapkit(vm, "snapshot", "status", name, "--json").stdout)
        assert status["state"] == "active", status
    vm.sh("umount /mnt/o")
    snapkit(vm, "snapshot", "merge", "s1", "--wait")
    vm.sh(f"mount {device} /mnt/o")
    assert _tree(vm, "/mnt/o") == first, "the merge did not bring back s1's point in time"
    vm.sh("umount /mnt/o")
    status = json.loads(snapkit(vm, "snapshot", "status", "s2", "--json").stdout)
    assert status["state"] == "active", status
    snap_device = status["device"]
    fsck(vm, "ext4", snap_device)
    snapkit(vm, "snapshot", "mount", "s2", "/mnt/s")
    assert _tree(vm, "/mnt/s") == second, "the sibling lost its point in time in the merge"
    snapkit(vm, "snapshot", "umount", "s2")
    snapkit(vm, "snapshot", "discard", "s2")
    listed = json.loads(snapkit(vm, "snapshot", "list", "--json").stdout)
    assert listed == [], listed
    vm.sh(f"mount {device} /mnt/o")
    assert _tree(vm, "/mnt/o") == first
    if method == "dm":
        table = vm.sh("dmsetup table data").stdout.decode()
        assert " linear " in table, table  # back to the plain table
