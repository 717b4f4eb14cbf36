"""``btrfs`` in a real guest: snapshot a mounted subvolume under a writer, check it, mount it,
roll the origin back by an atomic exchange (after the documented umount), and discard; a merge
power-cut before and after its exchange, settled by ``snapkit recover`` after the reboot."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_method_lvm import assert_writable, marker, snapkit, start_writer, stop_writer

from vmtests.vm.session import Session

DEV = "/dev/loop0"


def setup(vm: Session) -> None:
    vm.sh(
        "truncate -s 400M /tmp/b.img; /sbin/losetup /dev/loop0 /tmp/b.img; mkfs.btrfs -q -f "
        f"{DEV}; mkdir -p /mnt/top /mnt/o /mnt/s; mount {DEV} /mnt/top; "
        "btrfs -q subvolume create /mnt/top/data; umount /mnt/top; "
        f"mount -o subvol=data {DEV} /mnt/o; echo before > /mnt/o/marker; sync"
    )


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
    assert ".snapkit/" not in listing and "snapkit-" not in listing, listing
    assert vm.run(["sh", "-c", "grep -c /run/snapkit /proc/mounts"]).stdout.strip() == b"0"


def test_top_level_origin_refuses_merge(vm: Session) -> None:
    vm.sh(
        f"truncate -s 300M /tmp/b.img; /sbin/losetup /dev/loop0 /tmp/b.img; mkfs.btrfs -q -f "
        f"{DEV}; mkdir -p /mnt/o; mount {DEV} /mnt/o"
    )
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s1", "--method", "btrfs")
    vm.sh("umount /mnt/o")
    refused = vm.run(["snapkit", "snapshot", "merge", "s1"])
    assert refused.returncode == 1 and b"top-level" in refused.stderr


def interrupted_merge(vm: Session, before_step: int) -> tuple[int, str]:
    """``snapshot merge s1`` stopped by SIGINT just before its step ``before_step`` (the test
    pause of snapkit/flow.py): the exit code and the one line on stderr."""
    vm.run(["rm", "-f", "/tmp/err"], check=True)
    proc = vm.spawn(
        [
            "sh",
            "-c",
            f"exec env SNAPKIT_TEST_PAUSE_AT={before_step} snapkit snapshot merge s1 2>/tmp/err",
        ]
    )
    deadline = time.monotonic() + 120
    while vm.run(["grep", "-q", "test pause", "/tmp/err"]).returncode != 0:
        assert time.monotonic() < deadline, vm.get("/tmp/err")
        time.sleep(0.1)
    proc.signal(signal.SIGINT)
    code = proc.wait(120).returncode
    lines = [ln for ln in vm.get("/tmp/err").decode().splitlines() if "test pause" not in ln]
    assert len(lines) == 1, lines
    return code, lines[0]


def origin_marker(vm: Session) -> str:
    vm.sh(f"mount -o subvol=data {DEV} /mnt/o")
    try:
        return marker(vm, "/mnt/o")
    finally:
        vm.sh("umount /mnt/o")


@pytest.mark.slow  # ~35 s under TCG: the unit tests cover every step in CI
def test_a_merge_interrupted_around_the_point_of_no_return(vm: Session) -> None:
    """Step 5 deletes the old origin. Stopped before it, the merge is undone; stopped after it
    (before step 6 deletes the snapshot), the origin keeps the snapshot's content, and the
    error says so and says that discard finishes it. Nothing stays mounted either way."""
    setup(vm)
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s1", "--method", "btrfs")
    vm.sh("echo after > /mnt/o/marker; sync; umount /mnt/o")
    plan = snapkit(vm, "snapshot", "merge", "s1", "--dry-run").stdout.decode()
    assert "5. btrfs subvolume delete" in plan and "(the point of no return)" in plan, plan

    code, line = interrupted_merge(vm, 5)
    assert code == 130 and "everything done before it was undone" in line, line
    assert origin_marker(vm) == "after"
    assert vm.run(["sh", "-c", "grep -c /run/snapkit /proc/mounts"]).stdout.strip() == b"0"

    code, line = interrupted_merge(vm, 6)
    assert code == 130, line
    assert "data already holds the content of .snapkit/s1" in line, line
    assert "snapkit snapshot discard s1" in line, line
    assert origin_marker(vm) == "before"
    assert vm.run(["sh", "-c", "grep -c /run/snapkit /proc/mounts"]).stdout.strip() == b"0"

    snapkit(vm, "snapshot", "discard", "s1")
    vm.sh(f"mount -o subvol=data {DEV} /mnt/o")
    listing = vm.run(["btrfs", "subvolume", "list", "/mnt/o"]).stdout.decode()
    assert listing.count(" path ") == 1 and listing.rstrip().endswith("path data"), listing
    assert marker(vm, "/mnt/o") == "before"
    assert "btrfs-" not in vm.sh("ls -A /run/snapkit").stdout.decode()  # no private mount point


KEEP = "mkdir -p /keep /mnt/o; mount /dev/vmtest/keep /keep"
STATE = {"SNAPKIT_STATE_DIR": "/keep/state"}


def _sh(vm: Session, script: str) -> str:
    result = vm.run(["sh", "-euc", script], env=STATE, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    return result.stdout.decode()


def _cut_merge_before(vm: Session, step: int) -> None:
    """Start ``snapshot merge s1``, let it pause before plan step ``step``, make what it did so
    far durable (``sync`` commits the btrfs transaction: without it the cut could also land
    before the last steps, which the unit tests cover), and pull the plug."""
    vm.spawn(
        [
            "sh",
            "-c",
            f"SNAPKIT_TEST_PAUSE_AT={step} SNAPKIT_STATE_DIR=/keep/state "
            "snapkit snapshot merge s1 2>/tmp/err",
        ]
    )
    deadline = time.monotonic() + 120
    while vm.run(["grep", "-q", "test pause", "/tmp/err"]).returncode != 0:
        assert time.monotonic() < deadline, vm.run(["cat", "/tmp/err"]).stdout
        time.sleep(0.2)
    vm.sh("sync")
    vm.power_cut()


def _recovered(vm: Session) -> tuple[str, str]:
    """After the reboot: ``snapkit recover``'s output, and the origin's marker."""
    out = _sh(vm, f"{KEEP}; snapkit recover")
    assert _sh(vm, "snapkit recover") == "nothing to recover\n", out  # idempotent
    listing = _sh(
        vm, "mount -o subvolid=5 /dev/vmtest/btr /mnt/o; btrfs subvolume list /mnt/o; umount /mnt/o"
    )
    assert "snapkit-" not in listing, listing  # no spare left
    found = _sh(vm, "mount -o subvol=data /dev/vmtest/btr /mnt/o; cat /mnt/o/marker; umount /mnt/o")
    check = vm.run(["btrfs", "check", "--readonly", "/dev/vmtest/btr"], timeout=300)
    assert check.returncode == 0, check.stderr.decode()
    return out, found.strip()


@pytest.mark.slow  # three boots under TCG; the unit tests cut every step in CI
def test_a_power_cut_merge_is_settled_by_recover(
    vm_factory: Callable[..., Any], vm_artifacts: Path
) -> None:
    """Cut before step 4 (the copy is made, not exchanged): recover deletes the copy, the
    origin keeps its content and s1 stays. Cut before step 5 (exchanged, the old origin not
    yet deleted): recover finishes the merge, the origin holds the snapshot's content and s1
    is gone. Either way the origin subvolume exists and btrfs check is clean."""
    from vmtests.vm.machine import make_disk
    from vmtests.vm.qemu import Disk

    folder = vm_artifacts / "disks"
    folder.mkdir(parents=True, exist_ok=True)
    disks = [
        Disk(make_disk(folder / "btr.raw", 256 << 20), "btr"),
        Disk(make_disk(folder / "keep.raw", 32 << 20), "keep"),
    ]
    first = vm_factory(disks=disks, name="created")
    _sh(
        first,
        f"mkfs.ext4 -q -F /dev/vmtest/keep; {KEEP}; mkfs.btrfs -q -f /dev/vmtest/btr; "
        "mount /dev/vmtest/btr /mnt/o; btrfs -q subvolume create /mnt/o/data; umount /mnt/o; "
        "mount -o subvol=data /dev/vmtest/btr /mnt/o; echo before > /mnt/o/marker; "
        "snapkit snapshot create /mnt/o --name s1 --method btrfs; "
        "echo after > /mnt/o/marker; sync; umount /mnt/o",
    )
    plan = _sh(first, "snapkit snapshot merge s1 --dry-run")
    assert re.search(r"4\. exchange .*RENAME_EXCHANGE", plan), plan
    _cut_merge_before(first, 4)

    second = vm_factory(disks=disks, name="cut-before-exchange")
    out, found = _recovered(second)
    assert "s1: deleted data.snapkit-new-s1, a copy made before" in out, out
    assert found == "after"
    assert "s1" in _sh(second, "snapkit snapshot list")
    _cut_merge_before(second, 5)

    third = vm_factory(disks=disks, name="cut-after-exchange")
    out, found = _recovered(third)
    assert "s1: deleted data.snapkit-new-s1, the old origin" in out, out
    assert "forgot s1" in out, out
    assert found == "before"
    assert _sh(third, "snapkit snapshot list") == ""
    third.power_cut()
