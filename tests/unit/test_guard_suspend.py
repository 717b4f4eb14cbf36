"""guard_suspend: filesystems a dm suspend does not freeze get an explicit freeze around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.host.freezing import guard_suspend
from snapkit.model import Target
from snapkit.plan import Plan, PlanError, Step, apply


class Freezer:
    def __init__(self) -> None:
        self.frozen: set[Path] = set()
        self.log: list[str] = []

    def freeze(self, mountpoint: Path) -> None:
        self.frozen.add(mountpoint)
        self.log.append("freeze")

    def thaw(self, mountpoint: Path) -> bool:
        self.log.append("thaw")
        was = mountpoint in self.frozen
        self.frozen.discard(mountpoint)
        return was


class Watchdog:
    def __init__(self, _: Path) -> None:
        self.running = False

    def start(self) -> None:
        self.running = True

    def arm(self, deadline: float) -> None:
        pass

    def stop(self) -> bool:
        self.running = False
        return False

    def abandon(self) -> None:
        self.running = False


def target(fstype: str) -> Target:
    return Target(Path("/dev/mapper/o"), Path("/mnt/o"), fstype, (253, 0))


def test_a_filesystem_the_suspend_freezes_is_left_alone() -> None:
    inner = (Step("suspend", lambda: None),)
    assert guard_suspend(target("ext4"), inner, 10, freezer=Freezer(), watchdog=Watchdog) == inner


def test_btrfs_is_frozen_around_the_suspend_and_thawed_after() -> None:
    freezer, seen = Freezer(), []
    inner = (Step("suspend", lambda: seen.append(set(freezer.frozen))),)
    steps = guard_suspend(target("btrfs"), inner, 10, freezer=freezer, watchdog=Watchdog)
    apply(Plan("t", steps))
    assert seen == [{Path("/mnt/o")}]  # frozen while the suspend ran
    assert freezer.frozen == set() and freezer.log == ["freeze", "thaw"]


@pytest.mark.parametrize("negative_control", [False, True])
def test_a_failing_suspend_still_thaws(negative_control: bool) -> None:
    freezer = Freezer()

    def fail() -> None:
        raise RuntimeError("suspend failed")

    steps = guard_suspend(
        target("btrfs"), (Step("suspend", fail),), 10, freezer=freezer, watchdog=Watchdog
    )
    if negative_control:  # without the freeze step's undo, the checker must see a frozen fs
        steps = tuple(
            Step(s.description, s.do) if "FIFREEZE" in s.description else s for s in steps
        )
    with pytest.raises(PlanError):
        apply(Plan("t", steps))
    assert (freezer.frozen == set()) is not negative_control
