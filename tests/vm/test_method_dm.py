"""dm and dm-direct on ext4, xfs and btrfs, in a real guest, while a writer runs.

xfs: a frozen xfs keeps a dirty log (measured on 6.1), so its snapshot is checked after the
log is replayed (the read-only mount of the writable dm snapshot replays it). dm-direct's copy
is the read-only base device, which cannot take a replay (xfs's log, btrfs's tree-log): its
``snapshot mount`` goes through a throwaway writable layer (snapkit/methods/dm/layer.py), which
merge and discard refuse to pull from under a mount and otherwise remove.

Each case: 1. create while a writer fsyncs files; 2. fsck the snapshot: clean; 3. mount the
snapshot: every write acknowledged before create is there, none acknowledged after it; 4. merge:
the origin gets the snapshot's content back; 5. a second snapshot, discarded: the origin keeps
its content and its original linear table is back, with no loop device or COW file left.
"""

from __future__ import annotations

import json

import pytest
from workload import (  # tests/vm is on sys.path (rootdir-relative, no package)
    COW_DIR,
    check_files,
    fingerprint,
    fsck,
    ledger,
    manifest,
    mount,
    setup_origin,
    snapkit,
    start_writer,
    stop_writer,
    umount,
    wait_ledger,
)

from vmtests.vm.session import Session


def _mounted(vm: Session, point: str) -> bool:
    return vm.run(["grep", "-q", f" {point} ", "/proc/mounts"]).returncode == 0


# dm-direct on xfs/btrfs (60-130 s each under TCG) is left to make test-slow; the quick suite
# has its cheaper cut, tests/vm/test_method_dm_direct.py::test_layer_mount_and_discard.
CASES = [
    pytest.param(method, fs, id=f"{method}-{fs}", marks=[pytest.mark.slow] if slow else [])
    for method in ("dm", "dm-direct")
    for fs in ("ext4", "xfs", "btrfs")
    for slow in [method == "dm-direct" and fs != "ext4"]
]


@pytest.mark.parametrize(("method", "fs"), CASES)
def test_lifecycle(vm: Session, method: str, fs: str) -> None:
    origin = setup_origin(vm, fs)
    layered = method == "dm-direct" and fs in ("xfs", "btrfs")
    clean = fingerprint(vm)
    vm.sh("echo seed > /mnt/o/seed && sync")

    # 1. create while the writer runs
    writer = start_writer(vm)
    before = ledger(vm)
    created = snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/o",
        "--name",
        "s1",
        "--method",
        method,
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "128M",
        "--json",
    )
    after = ledger(vm)
    assert json.loads(created.stdout)["state"] == "active"
    wait_ledger(vm, after + 5)
    stop_writer(vm, writer)
    vm.sh("echo changed > /mnt/o/seed && sync")
    status = json.loads(snapkit(vm, "snapshot", "status", "s1", "--json").stdout)
    assert status["state"] == "active" and status["usage_percent"] > 0
    assert status["device"] == "/dev/mapper/s1" and status["merge_progress"] is None

    # 2. fsck the snapshot (xfs: after its log is replayed, below)
    if fs != "xfs":
        fsck(vm, fs, "/dev/mapper/s1")

    # 3. mount it: the data from before (btrfs on 6.1 cannot mount a same-fsid copy alongside)
    if fs == "btrfs":
        umount(vm, "/mnt/o")
    snapkit(vm, "snapshot", "mount", "s1", "/mnt/s")
    newest = check_files(vm, "/mnt/s/w", before)
    assert before <= newest <= after + 1, (before, newest, after)
    assert vm.sh("cat /mnt/s/seed").stdout == b"seed\n"
    snap = manifest(vm, "/mnt/s")
    if layered:  # the layer is mounted: neither discard nor merge may pull it away
        assert vm.sh("blockdev --getro /dev/mapper/s1").stdout == b"1\n"
        refused = snapkit(vm, "snapshot", "discard", "s1", "--force", check=False)
        assert refused.returncode == 1 and b"s1 is mounted at /mnt/s" in refused.stderr
        assert refused.stderr.count(b"\n") == 1, refused.stderr
        shown = json.loads(snapkit(vm, "snapshot", "status", "s1", "--json").stdout)
        assert shown["details"]["layer"] == "/dev/mapper/s1-layer", shown
    umount(vm, "/mnt/s")
    if fs == "xfs":
        # A read-only mount replays the log but writes no unmount record, so xfs_repair -n can
        # still find it dirty; a read-write mount of the (writable) snapshot leaves it clean, as
        # in test_method_lvm.py. dm-direct: of its writable layer, the copy stays untouched.
        writable = "/dev/mapper/s1-layer" if layered else "/dev/mapper/s1"
        vm.sh(f"mount -o nouuid {writable} /mnt/s && umount /mnt/s")
        fsck(vm, fs, writable)

    # 4. merge: refused while the origin is mounted, then the origin gets the snapshot back
    if not _mounted(vm, "/mnt/o"):
        mount(vm, fs, "/dev/mapper/data", "/mnt/o")
    refused = snapkit(vm, "snapshot", "merge", "s1", "--wait", check=False)
    assert refused.returncode == 1 and b"unmount /mnt/o" in refused.stderr
    assert manifest(vm, "/mnt/o") != snap
    umount(vm, "/mnt/o")
    merged = json.loads(snapkit(vm, "snapshot", "merge", "s1", "--wait", "--json").stdout)
    assert merged["state"] == "merged" and merged["merge_progress"] == 100.0
    assert vm.sh("dmsetup table data").stdout.decode() == origin.table
    mount(vm, fs, "/dev/mapper/data", "/mnt/o")
    assert manifest(vm, "/mnt/o") == snap

    # 5. discard: keeps the current content, the original table is back, nothing leaks
    snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/o",
        "--name",
        "s2",
        "--method",
        method,
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "64M",
    )
    vm.sh("echo kept > /mnt/o/after && sync")
    snapkit(vm, "snapshot", "discard", "s2")
    assert vm.sh("cat /mnt/o/after").stdout == b"kept\n"
    assert vm.sh("dmsetup table data").stdout.decode() == origin.table
    umount(vm, "/mnt/o")
    fsck(vm, fs, "/dev/mapper/data")
    mount(vm, fs, "/dev/mapper/data", "/mnt/o")
    assert fingerprint(vm) == clean
    assert vm.sh("dmsetup ls").stdout.decode().split()[0::2] == ["data"]
    assert vm.sh(f"/sbin/losetup -a | wc -l; ls -A {COW_DIR} | wc -l").stdout == b"1\n0\n"
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []
