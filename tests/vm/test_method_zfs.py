"""``zfs`` in a real guest (issue 14): ``snapkit snapshot create /mnt/z --method zfs`` under a
writer, status with ZFS's own space figures, a read-only mount, a merge refused across a later
snapshot and forced, and a discard; the refusals of bad input, each changing nothing.

The guest's kernel gets ZFS from the ``vm_zfs`` fixture: zfs.ko built for it by dkms when the
image is prepared, never at boot. The pool sits on a sparse file in /tmp."""

from __future__ import annotations

import json
import time

from test_method_lvm import assert_writable, marker, snapkit, start_writer, stop_writer

from vmtests.vm.session import Session

SETUP = (
    "modprobe zfs && truncate -s 256M /tmp/pool.img && "
    "zpool create -f -m none tank /tmp/pool.img && "
    "zfs create -o mountpoint=legacy tank/z && mkdir -p /mnt/z /mnt/s /mnt/e && "
    "mount -t zfs tank/z /mnt/z && echo before > /mnt/z/marker && sync"
)


def snapshots(vm: Session) -> list[str]:
    out = vm.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name"], check=True).stdout
    return out.decode().split()


def refused(vm: Session, *args: str) -> str:
    """A snapkit command that must refuse (exit 1): its one line on stderr."""
    result = vm.run(["snapkit", *args])
    assert result.returncode == 1, (result.returncode, result.stderr.decode())
    return result.stderr.decode()


def test_zfs_create_status_mount_merge_discard(vm_zfs: Session) -> None:
    vm = vm_zfs
    vm.sh(SETUP)
    writer = start_writer(vm, "/mnt/z")
    time.sleep(1)
    snapkit(vm, "snapshot", "create", "/mnt/z", "--name", "s1", "--method", "zfs")
    vm.sh("echo after > /mnt/z/marker; sync")
    stop_writer(writer)
    assert_writable(vm, "/mnt/z")
    shown = json.loads(snapkit(vm, "snapshot", "status", "s1", "--json").stdout)
    assert shown["state"] == "active" and shown["device"] == "tank/z@s1", shown
    assert shown["referenced"] > 0 and shown["used"] >= 0, shown
    snapkit(vm, "snapshot", "mount", "s1", "/mnt/s")
    assert marker(vm, "/mnt/s") == "before"
    assert "read-only" in refused(vm, "snapshot", "mount", "s1", "/mnt/e", "--rw")
    assert "umount s1" in refused(vm, "snapshot", "discard", "s1")  # mounted
    snapkit(vm, "snapshot", "umount", "s1")

    # a later snapshot: the merge would destroy it, so it is refused unless forced
    snapkit(vm, "snapshot", "create", "/mnt/z", "--name", "s2", "--method", "auto")
    assert json.loads(snapkit(vm, "snapshot", "status", "s2", "--json").stdout)["method"] == "zfs"
    err = refused(vm, "snapshot", "merge", "s1")
    assert "later snapshot(s) s2" in err and "--force" in err, err
    assert snapshots(vm) == ["tank/z@s1", "tank/z@s2"]  # the refusal changed nothing
    dry = snapkit(vm, "snapshot", "merge", "s1", "--force", "--dry-run").stdout.decode()
    assert "zfs rollback -r tank/z@s1" in dry and snapshots(vm) == ["tank/z@s1", "tank/z@s2"]
    snapkit(vm, "snapshot", "merge", "s1", "--force")
    assert marker(vm, "/mnt/z") == "before"  # rolled back while mounted
    assert snapshots(vm) == []  # s1 consumed, s2 destroyed by the rollback
    assert json.loads(snapkit(vm, "snapshot", "status", "s2", "--json").stdout)["state"] == (
        "invalid"
    )
    snapkit(vm, "snapshot", "discard", "s2")  # forgets it

    # discard keeps the origin's current content
    snapkit(vm, "snapshot", "create", "/mnt/z", "--name", "s3", "--method", "zfs")
    vm.sh("echo changed > /mnt/z/marker; sync")
    snapkit(vm, "snapshot", "discard", "s3")
    assert marker(vm, "/mnt/z") == "changed" and snapshots(vm) == []
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []


def test_zfs_refusals_change_nothing(vm_zfs: Session) -> None:
    vm = vm_zfs
    vm.sh(
        SETUP + " && truncate -s 64M /tmp/e.img && mkfs.ext4 -q /tmp/e.img && "
        "mount -o loop /tmp/e.img /mnt/e"
    )
    err = refused(vm, "snapshot", "create", "/mnt/e", "--name", "x", "--method", "zfs")
    assert "not a ZFS dataset" in err, err
    vm.sh("zfs snapshot tank/z@taken")
    err = refused(vm, "snapshot", "create", "/mnt/z", "--name", "taken", "--method", "zfs")
    assert "in use on tank/z" in err, err
    err = refused(vm, "snapshot", "create", "/mnt/z", "--name", "a+b", "--method", "zfs")
    assert "'+'" in err, err
    err = refused(vm, "snapshot", "create", "tank/nope", "--name", "x", "--method", "zfs")
    assert "neither a block device nor a mount point" in err, err
    assert snapshots(vm) == ["tank/z@taken"]
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []
