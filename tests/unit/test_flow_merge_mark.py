"""The "merge under way" mark is on disk before the kernel can start merging.

A power cut is simulated by running only the first N steps of the merge's start plan and then
stopping with nothing undone (as a dead process undoes nothing). Whatever N, the saved record
must say a merge is pending; running the merge again must then roll the origin back, never
finish a merge that did not happen. A failure the plan rolls back must leave no mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.flow import Flow
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import State
from snapkit.plan import Plan, PlanError
from snapkit.settings import Settings
from snapkit.state import StateData, StateFile
from tests.unit.fakes import ORIGINAL, World, created, make_world


class PowerCut(BaseException):
    """The process is gone: no rollback, no save."""


def _flow(world: World) -> Flow:
    flow = Flow(
        world.host, settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir)
    )
    flow.state.save(StateData(snapshots=(world.records["s1"],)))
    return flow


def _start_steps(tmp_path: Path) -> int:
    world = make_world(tmp_path)
    return len(DmMethod(world.host).plan_merge(created(world)).steps)


def _cut_after(flow: Flow, n: int) -> None:
    def apply_plan(plan: Plan, timeout: float | None = None) -> None:
        for step in plan.steps[:n]:
            step.do()
        raise PowerCut

    flow.apply_plan = apply_plan  # type: ignore[method-assign]


@pytest.mark.parametrize("n", range(5))
def test_a_cut_at_any_step_of_the_merge_start_leaves_the_mark(tmp_path: Path, n: int) -> None:
    assert _start_steps(tmp_path) == 4
    world = make_world(tmp_path)
    created(world)
    flow = _flow(world)
    _cut_after(flow, n)
    with pytest.raises(PowerCut):
        flow.merge("s1")
    saved = StateFile(flow.state.directory).load().snapshot("s1")
    assert saved is not None and saved.details["pending"] == "merge", f"cut after {n} steps"
    # the same process (no reboot): the merge runs again and really rolls back
    again = Flow(
        world.host, settings=Settings(state_dir=flow.state.directory, lock_dir=world.cow_dir)
    )
    if n < 4:  # the kernel never started: the status must not claim a merge to finish
        assert again.status("s1").state is State.ACTIVE
    seen: list[str] = []
    real_apply = again.apply_plan

    def spy(plan: Plan, timeout: float | None = None) -> None:
        seen.extend(step.description for step in plan.steps)
        real_apply(plan, timeout)

    again.apply_plan = spy  # type: ignore[method-assign]
    again.merge("s1", wait=True)
    assert any("snapshot-merge" in d for d in seen) == (n < 4), seen
    assert world.dm.state()["data"].active == ORIGINAL
    assert not world.dm.state()["data"].suspended
    assert StateFile(flow.state.directory).load().snapshots == ()


@pytest.mark.parametrize("n", range(8))
def test_a_failure_rolled_back_leaves_no_mark(tmp_path: Path, n: int) -> None:
    world = make_world(tmp_path)
    created(world)
    flow = _flow(world)
    before = world.state()
    world.faults.fail_at = len(world.faults.calls) + n
    with pytest.raises(PlanError) as failed:
        flow.merge("s1")
    saved = StateFile(flow.state.directory).load().snapshot("s1")
    assert saved is not None
    if str(failed.value).startswith("merge dm snapshot"):
        assert saved.details["pending"] == "", f"failure at {n}"
        assert world.state() == before
    else:  # the start ran and the finish failed: the kernel merged, the mark stays
        assert str(failed.value).startswith("finish s1")
        assert saved.details["pending"] == "merge"
