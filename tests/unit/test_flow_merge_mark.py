"""The "merge under way" mark is on disk before the kernel can start merging.

A power cut is simulated by running only the first N steps of the merge's start plan and then
stopping with nothing undone (as a dead process undoes nothing). Whatever N, the saved record
must say a merge is pending; running the merge again must then roll the origin back, never
finish a merge that did not happen. A failure the plan rolls back must leave no mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.dm.fake import Faults
from snapkit.errors import OperationError
from snapkit.flow import Flow
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import Pending, State
from snapkit.plan import Plan, PlanError, apply
from snapkit.settings import Settings
from snapkit.state import StateData, StateFile
from tests.unit.fakes import (
    ORIGINAL,
    World,
    created,
    make_world,
    merge_failed_world,
)


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


def _merge_failed_flow(tmp_path: Path) -> tuple[Flow, World]:
    world, _, record = merge_failed_world(tmp_path)
    flow = Flow(
        world.host, settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir)
    )
    flow.state.save(StateData(snapshots=(record,)))
    return flow, world


def test_flow_merge_wait_stops_and_keeps_everything(tmp_path: Path) -> None:
    flow, world = _merge_failed_flow(tmp_path)
    assert flow.status("s1").message.startswith("Merge failed")
    with pytest.raises(OperationError):  # restarted, and the fake still says it failed
        flow.merge("s1", wait=True)
    assert flow.load().snapshot("s1") is not None  # the record, and the COW, are kept
    assert world.files.files and world.loops.attached
    del world.dm.statuses["data"]  # the device is fixed: the same command now finishes
    assert flow.merge("s1", wait=True).state is State.MERGED  # type: ignore[union-attr]
    assert flow.load().snapshot("s1") is None and not world.files.files


def test_flow_merge_wait_says_merge_failed(tmp_path: Path) -> None:
    flow, _ = _merge_failed_flow(tmp_path)
    with pytest.raises(OperationError, match=r"Merge failed.*snapkit snapshot merge s1 --wait"):
        flow.merge("s1", wait=True)


def test_merge_failed_is_one_line_with_the_next_step_as_its_hint(tmp_path: Path) -> None:
    flow, _ = _merge_failed_flow(tmp_path)
    with pytest.raises(OperationError) as caught:
        flow.merge("s1", wait=True)
    assert caught.value.message.startswith("Merge failed")
    assert caught.value.hint == "fix the device, then run 'snapkit snapshot merge s1 --wait' again"


class _Unreadable(Faults):
    """A COW the kernel cannot read: every table that names it fails to load."""

    def should_fail(self, what: str) -> bool:
        super().should_fail(what)
        return what in ("dm load data", "dm load s1")


def test_an_unreadable_cow_at_merge_start_leaves_a_merge_to_run_again(tmp_path: Path) -> None:
    """Measured: with the COW's disk failing, ``snapshot-merge`` does not load ("Failed to read
    snapshot metadata"), nor does the snapshot device the rollback rebuilds. No empty device may
    stay: the snapshot is gone, the origin unchanged, and the pending mark says run it again."""
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    record = method.mark_pending(created(world), Pending.MERGE)
    plan = method.plan_merge(record)
    world.dm.faults = _Unreadable()
    with pytest.raises(PlanError) as caught:
        apply(plan)
    assert caught.value.undo_failures  # so the flow keeps the pending mark
    assert world.dm.info("s1") is None
    table = world.dm.table("data")
    assert table is not None and table.lines[0].target.type_name == "snapshot-origin"
    assert not method.started(record)
    assert method.status(record).message.startswith("merge not started yet")
    world.dm.faults = Faults()  # the disk is back
    apply(method.plan_merge(record))
    assert method.status(record).state is State.MERGED


# -- lvm: the same kernel words, read through lv_attr ----------------------------------------
