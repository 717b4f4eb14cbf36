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
