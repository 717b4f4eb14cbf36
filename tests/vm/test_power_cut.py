"""Power cuts during create and merge (issue 6, item 1): QEMU is SIGKILLed at a plan step or a
seeded delay, the guest reboots on the same disks, ``snapkit recover`` runs, and the oracle
(vmtests/guest/faults.py) must find no acknowledged write lost, clean fsck, a snapshot that is
active and a correct point-in-time copy or cleanly absent, a merge finished, nothing suspended.

The negative control is the same judge on a cut whose recovery is skipped on purpose: a dm
snapshot recorded in the state file but not re-assembled must be reported, not passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmtests.faults import Cut, run_cut

# The CI slice: the riskiest points, one per kind. Cutting inside the suspend window of a dm
# create (step 10: the origin is suspended, the snapshot not yet resumed), mid-merge (the
# kernel is copying), and inside lvcreate.
SLICE = [
    Cut("ext4", "dm", "create", 1, 10),
    Cut("ext4", "dm", "merge", 1, 4),
]


@pytest.mark.parametrize("cut", SLICE, ids=lambda c: c.id)
def test_power_cut_leaves_a_known_state(
    cut: Cut, vm_factory: Callable[..., Any], vm_artifacts: Path
) -> None:
    result = run_cut(cut, vm_factory, vm_artifacts / "disks")
    assert result["ok"], result["problems"]
    assert result["acked_lost"] == 0 and not result["suspended"]


# Issue 4, item 1: the cut lands after the merge start's last step (snapshot-merge resumed:
# the kernel is merging) and before anything else -- the window in which the "merge under
# way" mark used to be still unsaved, so recover rebuilt a plain snapshot over a half
# rolled-back origin. Step 1 is the other end: the mark saved, the kernel never started.
MERGE_MARK = [
    Cut("ext4", "dm", "merge", 1, 5),
    Cut("ext4", "dm", "merge", 1, 1),
]


@pytest.mark.parametrize("cut", MERGE_MARK, ids=lambda c: c.id)
def test_power_cut_around_the_merge_start(
    cut: Cut, vm_factory: Callable[..., Any], vm_artifacts: Path
) -> None:
    result = run_cut(cut, vm_factory, vm_artifacts / "disks")
    assert result["ok"], result["problems"]
    assert result["acked_lost"] == 0 and not result["suspended"]


# Issue 4, item 5: disks trade places across the reboot (another disk ahead of them, their
# order swapped), so the major:minor recorded for the prepared device's disk now names
# another disk. recover must find the origin's disk by its serial.
STABLE_SETUP = """
mkfs.ext4 -q -F /dev/vmtest/keep; mkdir -p /keep /mnt/o /mnt/s; mount /dev/vmtest/keep /keep
export SNAPKIT_STATE_DIR=/keep/state
snapkit device prepare /dev/vmtest/origin --name data
mkfs.ext4 -q -F /dev/mapper/data; mount /dev/mapper/data /mnt/o
echo before > /mnt/o/marker; sync
snapkit snapshot create /mnt/o --name s1 --method dm --cow-size 16M
echo after > /mnt/o/marker; sync
"""


def _devnum(vm: Any, path: str) -> str:
    return str(vm.sh(f"stat -L -c %t:%T {path}").stdout.decode().strip())


def test_recover_finds_the_disk_by_serial_after_a_reorder(
    vm_factory: Callable[..., Any], vm_artifacts: Path
) -> None:
    from vmtests.machine import make_disk
    from vmtests.qemu import Disk

    folder = vm_artifacts / "disks"
    folder.mkdir(parents=True, exist_ok=True)
    origin = Disk(make_disk(folder / "origin.raw", 96 << 20), "origin")
    keep = Disk(make_disk(folder / "keep.raw", 96 << 20), "keep")
    extra = Disk(make_disk(folder / "extra.raw", 96 << 20), "extra")
    first = vm_factory(disks=[origin, keep], name="before")
    first.sh(STABLE_SETUP)
    was = _devnum(first, "/dev/vmtest/origin")
    first.power_cut()
    second = vm_factory(disks=[extra, keep, origin], name="after")
    now = _devnum(second, "/dev/vmtest/origin")
    assert now != was, "the reorder did not move the disk: the test proves nothing"
    second.sh("mkdir -p /keep /mnt/o /mnt/s; mount /dev/vmtest/keep /keep")
    env = {"SNAPKIT_STATE_DIR": "/keep/state"}
    done = second.run(["snapkit", "recover"], env=env)
    assert done.returncode == 0, done.stderr.decode()
    real = second.sh("dmsetup table data-real").stdout.decode()
    major, minor = (int(x, 16) for x in now.split(":"))
    assert f" {major}:{minor} " in real, real
    second.run(["snapkit", "snapshot", "mount", "s1", "/mnt/s"], env=env, check=True)
    assert second.sh("cat /mnt/s/marker").stdout == b"before\n"
    second.sh("mount /dev/mapper/data /mnt/o")
    assert second.sh("cat /mnt/o/marker").stdout == b"after\n"
    second.power_cut()
