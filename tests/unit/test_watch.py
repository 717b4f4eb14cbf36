"""``snapshot watch`` against fakes: the dm extend grows the COW file, refreshes the loop and
reloads the snapshot device only (the origin is never suspended); watch extends at the
threshold, not below it, and reports an overflowed snapshot in plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.dm.status import SnapshotFailure, SnapshotUsage, StatusLine
from snapkit.errors import OperationError, RefusedError
from snapkit.flow import Flow
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.plan import apply
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import SIZE, World, created, make_world

COW_SECTORS = 1024  # a 512 KiB COW


def _usage(world: World, allocated: int) -> None:
    usage = SnapshotUsage(allocated, COW_SECTORS, 16)
    world.dm.statuses["s1"] = (StatusLine(0, SIZE, "snapshot", usage),)


def test_extend_grows_the_file_refreshes_the_loop_and_reloads_only_the_snapshot(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    record = created(world)
    _usage(world, 600)
    before = len(world.faults.calls)
    apply(DmMethod(world.host).plan_extend(record, 1 << 20))
    calls = world.faults.calls[before:]
    assert world.files.files[tmp_path / "s1.cow"] == COW_SECTORS * 512 + (1 << 20)
    assert any(c.startswith("losetup refresh") for c in calls), calls
    assert "dm suspend s1" in calls and "dm resume s1" in calls
    assert not any(c.endswith(" data") for c in calls if c.startswith("dm suspend")), calls
    state = world.dm.state()
    assert not any(d.suspended for d in state.values())
    assert state["s1"].active is not None and state["s1"].active.lines[0].target.type_name == (
        "snapshot"
    )


def _flow(world: World) -> Flow:
    flow = Flow(
        world.host, settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir)
    )
    flow.state.save(StateData(snapshots=(world.records["s1"],)))
    return flow


def test_watch_extends_at_the_threshold_and_not_below(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created(world)
    flow = _flow(world)
    said: list[str] = []
    _usage(world, 400)  # 39 %
    flow.watch("s1", extend_at=50, extend_by=1 << 20, once=True, report=said.append)
    assert said == [] and world.files.files[tmp_path / "s1.cow"] == 512 * SIZE // 4
    _usage(world, 600)  # 58 %
    flow.watch("s1", extend_at=50, extend_by=1 << 20, once=True, report=said.append)
    assert len(said) == 1 and "grew it by 1048576 bytes" in said[0]
    assert world.files.files[tmp_path / "s1.cow"] == COW_SECTORS * 512 + (1 << 20)


def test_a_long_watch_says_once_that_it_is_on_guard(tmp_path: Path) -> None:
    """Scripts wait for this line before writing; a --once look says nothing of the kind."""
    world = make_world(tmp_path)
    created(world)
    flow = _flow(world)
    said: list[str] = []
    _usage(world, 400)  # 39 %
    kept = flow.load()
    looks = iter([kept, kept, StateData(snapshots=())])  # the record, one look, then gone
    flow.load = lambda: next(looks)  # type: ignore[method-assign]
    flow.watch("s1", extend_at=50, extend_by=1 << 20, interval=0, report=said.append)
    assert said == [
        "watching s1: COW 39.06% full; grows by 1048576 bytes at 50%, looked at every 0 s"
    ]


@pytest.mark.parametrize("failure", [SnapshotFailure.INVALID, SnapshotFailure.OVERFLOW])
def test_watch_reports_an_overflowed_snapshot_in_plain_words(
    tmp_path: Path, failure: SnapshotFailure
) -> None:
    world = make_world(tmp_path)
    created(world)
    flow = _flow(world)
    world.dm.statuses["s1"] = (StatusLine(0, SIZE, "snapshot", failure),)
    with pytest.raises(OperationError) as caught:
        flow.watch("s1", extend_at=50, extend_by=1 << 20, once=True)
    words = str(caught.value)
    assert "the origin is intact" in words and "discard" in words and "--cow-size" in words
    # an overflowed (PO) copy still reads: only an invalid one is called lost
    assert ("copy is lost" in words) == (failure is SnapshotFailure.INVALID), words


def test_watch_refuses_a_method_without_a_cow(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created(world)
    flow = _flow(world)
    from dataclasses import replace

    frozen = replace(world.records["s1"], name="f1", method="freeze", device="")
    flow.state.save(flow.state.load().with_snapshot(frozen))
    with pytest.raises(RefusedError, match="no COW snapkit can grow"):
        flow.watch("f1", extend_at=50, extend_by=1 << 20, once=True)


def test_lvm_extends_with_lvextend() -> None:
    from snapkit.methods.lvm.snapshot import LvmMethod
    from tests.unit.fakes import lvm_host, lvm_request, lvm_world

    fake = lvm_world()
    method = LvmMethod(lvm_host(fake))
    plan, record = method.plan_create(lvm_request())
    apply(plan)
    extend = method.plan_extend(record, 32 << 20)
    assert [s.description for s in extend.steps] == ["lvextend -q -L +33554432b vg/s1"]
