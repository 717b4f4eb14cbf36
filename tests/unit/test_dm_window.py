"""The watchdog over a dm create's suspend window (snapkit/methods/dm/window.py and the
``--resume`` mode of snapkit/host/watchdog.py), on the fakes.

What it must do: start before the window, arm just before the suspend, stop after it; on a
death inside the window finish it (snapshot, then origin resumed: a whole snapshot); do
nothing to an origin that is not suspended (before the suspend, after snapkit's resume);
and a window cut short by an error is undone before the watchdog is let go. ``recover``
finishes the window the same way when the watchdog died too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from snapkit.dm.table import Table
from snapkit.flow import real_host
from snapkit.host.watchdog import _Resume
from snapkit.methods.base import Host
from snapkit.methods.dm.direct import DmDirectMethod
from snapkit.methods.dm.recover import finish_window
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.plan import PlanError, apply
from tests.unit.fakes import World, make_world


class Dog:
    def __init__(self, log: list[str], names: Sequence[str], fired: bool = False) -> None:
        self.log, self.names, self.fired = log, list(names), fired

    def start(self) -> None:
        self.log.append(f"start {','.join(self.names)}")

    def arm(self, deadline: float) -> None:
        self.log.append("arm")

    def stop(self) -> bool:
        self.log.append("stop")
        return self.fired

    def abandon(self) -> None:
        self.log.append("abandon")


def _watched(world: World, log: list[str], fired: bool = False) -> World:
    world.host = replace(world.host, resume_watchdog=lambda names: Dog(log, names, fired))
    return world


@pytest.mark.parametrize("method", [DmMethod, DmDirectMethod])
def test_the_watchdog_brackets_the_window(
    tmp_path: Path, method: type[DmMethod] | type[DmDirectMethod]
) -> None:
    log: list[str] = []
    world = _watched(make_world(tmp_path), log)
    plan, _ = method(world.host).plan_create(world.request("s1"))
    said = [step.description for step in plan.steps]
    start = next(i for i, d in enumerate(said) if d.startswith("start the watchdog"))
    suspend = next(i for i, d in enumerate(said) if d.startswith("dmsetup suspend"))
    stop = next(i for i, d in enumerate(said) if d == "stop the watchdog")
    assert start < suspend - 1 and said[suspend - 1].startswith("arm the watchdog")
    assert stop == len(said) - 1 or said[stop + 1].startswith("blockdev --setro")
    apply(plan)
    names = "s1,data" if method is DmMethod else "data"
    assert log == [f"start {names}", "arm", "stop"]


def test_a_window_cut_short_is_undone_before_the_watchdog_goes(tmp_path: Path) -> None:
    log: list[str] = []
    world = _watched(make_world(tmp_path), log)
    plan, _ = DmMethod(world.host).plan_create(world.request("s1"))
    said = [step.description for step in plan.steps]
    world.faults.fail_at = None
    before = world.dm.state()
    resume_snap = said.index("dmsetup resume s1")
    steps = list(plan.steps)
    boom = replace(steps[resume_snap], do=_fail)
    with pytest.raises(PlanError):
        apply(replace(plan, steps=(*steps[:resume_snap], boom, *steps[resume_snap + 1 :])))
    assert log[-1] == "abandon" and "stop" not in log
    assert not any(d.suspended for d in world.dm.state().values())
    assert world.dm.state() == before


def _fail() -> None:
    raise OSError("planted")


def test_a_window_the_watchdog_finished_is_a_whole_snapshot_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    world = _watched(make_world(tmp_path), log, fired=True)
    plan, _ = DmMethod(world.host).plan_create(world.request("s1"))
    with caplog.at_level(logging.WARNING):
        apply(plan)
    assert "the watchdog resumed data" in caplog.text
    assert world.dm.state()["data"].active.lines[0].target.type_name == "snapshot-origin"


def _cut_inside(tmp_path: Path) -> World:
    """A dm create stopped right after its suspend: tables loaded, origin suspended."""
    world = make_world(tmp_path)
    plan, _ = DmMethod(world.host).plan_create(world.request("s1"))
    said = [step.description for step in plan.steps]
    apply(replace(plan, steps=plan.steps[: said.index("dmsetup suspend data") + 1]))
    assert world.dm.state()["data"].suspended
    return world


def test_the_watchdog_finishes_a_window_cut_short(tmp_path: Path) -> None:
    world = _cut_inside(tmp_path)
    assert _Resume(["s1", "data"], dm=world.dm).release() == "resumed"
    state = world.dm.state()
    assert not state["data"].suspended and not state["s1"].suspended
    assert state["data"].active.lines[0].target.type_name == "snapshot-origin"
    assert state["s1"].active.lines[0].target.type_name == "snapshot"


def test_the_watchdog_leaves_an_origin_that_is_not_suspended(tmp_path: Path) -> None:
    """Before the suspend (tables loaded, origin live) a resume would swap tables behind
    snapkit's back: the negative control of the test above."""
    world = make_world(tmp_path)
    plan, _ = DmMethod(world.host).plan_create(world.request("s1"))
    said = [step.description for step in plan.steps]
    apply(replace(plan, steps=plan.steps[: said.index("dmsetup suspend data")]))
    before = world.dm.state()
    assert _Resume(["s1", "data"], dm=world.dm).release() == "idle"
    assert world.dm.state() == before


def test_recover_finishes_a_window_whose_watchdog_died(tmp_path: Path) -> None:
    world = _cut_inside(tmp_path)
    apply_all = finish_window(world.dm, "s1", "data")
    assert [s.description for s in apply_all] == ["dmsetup resume s1", "dmsetup resume data"]
    for step in apply_all:
        step.do()
    assert not world.dm.state()["data"].suspended
    assert finish_window(world.dm, "s1", "data") == []  # idempotent: nothing left to do


def test_the_real_host_has_the_resume_watchdog() -> None:
    """Fakes run without it (None): the real host must not."""
    assert Host.__dataclass_fields__["resume_watchdog"].default is None
    assert "resume_watchdog=resume_guard" in inspect.getsource(real_host)


@pytest.mark.parametrize("shown", ["path", "major:minor"])
def test_recover_undoes_a_window_cut_before_the_snapshot_was_resumed(
    tmp_path: Path, shown: str
) -> None:
    """The watchdog died too, before the snapshot device was resumed: no record can be
    adopted for it, its COW is an orphan, so recover makes the snapshot cleanly absent -- the
    origin resumed with its old table, the devices the create made removed. The kernel shows
    the loaded table's origin as major:minor (the VM test found recover blind to that)."""
    from snapkit.flow import Flow
    from snapkit.settings import Settings
    from snapkit.state import StateData
    from tests.unit.fakes import ORIGINAL

    world = make_world(tmp_path)
    flow = Flow(world.host, settings=Settings.under(tmp_path / "state"))
    request = replace(world.request("s1"), cow_dir=flow.context.cow_dir)
    plan, _ = DmMethod(world.host).plan_create(request)
    said = [step.description for step in plan.steps]
    apply(replace(plan, steps=plan.steps[: said.index("dmsetup suspend data") + 1]))
    if shown == "major:minor":
        loaded = world.dm.table("s1", inactive=True)
        assert loaded is not None
        snap = loaded.lines[0].target
        real = world.dm.list_devices()["data-real"]
        world.dm.load("s1", Table.single(loaded.size, replace(snap, origin=real)))
    cow = flow.context.cow_dir / "s1.cow"
    cow.parent.mkdir(parents=True, exist_ok=True)
    cow.write_bytes(b"")  # _orphan_cows looks on disk; the fakes keep its size apart
    from snapkit.methods.dm.recover import plan_recover

    recovery, done = plan_recover(flow.context, StateData())
    apply(recovery)
    state = world.dm.state()
    assert set(state) == {"data"} and not state["data"].suspended
    assert state["data"].active == ORIGINAL and state["data"].inactive is None
    assert done.dropped == ["s1.cow"] and not world.loops.attached


class _Interrupted(Dog):
    def stop(self) -> bool:
        raise KeyboardInterrupt  # a SIGINT at the last step, after the origin's resume


def test_an_interrupt_at_the_watchdogs_stop_undoes_the_whole_create(tmp_path: Path) -> None:
    """The origin's resume is no longer the last step: its swap must carry its undo (the
    original table back), or a signal at the stop leaves snapshot-origin over a -real the
    rollback then cannot remove (the VM signal test found this)."""
    log: list[str] = []
    world = make_world(tmp_path)
    world.host = replace(world.host, resume_watchdog=lambda names: _Interrupted(log, names))
    before = world.dm.state()
    plan, _ = DmMethod(world.host).plan_create(world.request("s1"))
    with pytest.raises((PlanError, KeyboardInterrupt)):
        apply(plan)
    assert world.dm.state() == before and not world.loops.attached
