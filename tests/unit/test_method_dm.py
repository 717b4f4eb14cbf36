"""The dm method's plans against FakeDm: a failure injected at every step leaves the fake
system exactly as it was; the finish plan converges when re-run after any failure."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from snapkit.dm.status import (
    SnapshotFailure,
    SnapshotUsage,
    StatusLine,
)
from snapkit.dm.table import Linear, Table
from snapkit.errors import RefusedError, ValidationError
from snapkit.methods.dm.shared import merge_failed, merge_state, snapshot_state
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import Pending, SnapshotRecord, State, Target
from snapkit.plan import Plan, PlanError, apply
from tests.unit.fakes import (
    BASE,
    ORIGINAL,
    SIZE,
    World,
    created,
    make_world,
    merge_failed_world,
    walk_failures,
)


def test_create_builds_the_lvm_way(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created(world)
    state = world.dm.state()
    assert str(state["data"].active.format()) == "0 2048 snapshot-origin /dev/mapper/data-real\n"
    assert state["data-real"].active == ORIGINAL
    assert state["data-real"].uuid == "SNAPKIT-data-real"
    assert "snapshot /dev/mapper/data-real /dev/loop1 P 8" in state["s1"].active.format()
    assert not any(d.suspended for d in state.values())
    assert world.files.files == {tmp_path / "s1.cow": 512 * SIZE // 4}


def test_create_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    total = walk_failures(
        tmp_path, lambda w: None, lambda w: DmMethod(w.host).plan_create(w.request())[0], DmMethod
    )
    assert total >= 11


def test_second_snapshot_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    walk_failures(
        tmp_path,
        lambda w: created(w, "s1"),
        lambda w: DmMethod(w.host).plan_create(w.request("s2"))[0],
        DmMethod,
    )


def test_merge_start_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    walk_failures(
        tmp_path,
        lambda w: created(w),
        lambda w: DmMethod(w.host).plan_merge(_record(w)),
        DmMethod,
    )


def _record(world: World) -> SnapshotRecord:
    return world.records["s1"]


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_finish_converges_after_a_failure_at_any_step(tmp_path: Path, op: str) -> None:
    for n in range(12):
        world = make_world(tmp_path)
        method = DmMethod(world.host)
        record = created(world)
        apply(method.plan_merge(record) if op == "merge" else method.plan_discard(record))
        world.faults.fail_at = len(world.faults.calls) + n
        try:
            apply(method.plan_finish(record))
        except PlanError:
            world.faults.fail_at = None
            apply(method.plan_finish(record))
        assert set(world.dm.state()) == {"data"}
        assert world.dm.state()["data"].active == ORIGINAL
        assert not world.loops.attached and not world.files.files


def _the_sibling_stays_then_goes(world: World, method: DmMethod, s2: SnapshotRecord) -> None:
    """After the first snapshot's finish, s2 keeps snapshot-origin over -real; after its own
    discard and finish the origin has its plain table again."""
    assert world.dm.state()["data"].active.lines[0].target.type_name == "snapshot-origin"
    assert set(world.dm.state()) == {"data", "data-real", "s2"}
    apply(method.plan_discard(s2))
    apply(method.plan_finish(s2))
    assert world.dm.state()["data"].active == ORIGINAL


def test_a_merge_beside_a_sibling_keeps_the_sibling_tracked(tmp_path: Path) -> None:
    """Issue 17: the kernel keeps a sibling whole through a merge (each merged chunk goes
    through the origin's write path, so the sibling copies it first); the finish then puts
    snapshot-origin back for the sibling, and the sibling's own finish the plain table."""
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    s1, s2 = created(world, "s1"), created(world, "s2")
    apply(method.plan_merge(s1))
    state = world.dm.state()
    assert state["data"].active.lines[0].target.type_name == "snapshot-merge"
    assert "s2" in state and state["s2"].active.lines[0].target.type_name == "snapshot"
    apply(method.plan_finish(s1))
    _the_sibling_stays_then_goes(world, method, s2)


def test_a_merge_beside_a_sibling_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    def two(w: World) -> None:
        created(w, "s1")
        created(w, "s2")

    walk_failures(tmp_path, two, lambda w: DmMethod(w.host).plan_merge(_record(w)), DmMethod)


def test_discard_of_one_of_two_keeps_the_origin_a_snapshot_origin(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    s1, s2 = created(world, "s1"), created(world, "s2")
    apply(method.plan_discard(s1))
    apply(method.plan_finish(s1))
    _the_sibling_stays_then_goes(world, method, s2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cow_size": 8192}, "three"),
        ({"chunk_sectors": 12}, "chunk size"),
    ],
)
def test_bad_requests_are_refused_before_anything(
    tmp_path: Path, kw: dict[str, object], match: str
) -> None:
    world = make_world(tmp_path)
    before = world.state()
    with pytest.raises(ValidationError, match=match):
        DmMethod(world.host).plan_create(world.request(**kw))
    assert world.state() == before


@pytest.mark.parametrize("name", ["a b", "a\nb", "a/b", "x" * 65, "", "-x", "tab\t"])
def test_injecting_names_are_refused(tmp_path: Path, name: str) -> None:
    world = make_world(tmp_path)
    with pytest.raises(ValidationError):
        DmMethod(world.host).plan_create(world.request(name))


def test_a_non_linear_origin_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.dm.create("z")
    world.dm.load("z", Table.single(8, Linear(BASE, 0)))
    from snapkit.dm.table import Zero

    world.dm.load("z", Table.single(8, Zero()))
    world.dm.resume("z")
    target = Target(Path("/dev/mapper/z"), None, None, (253, 1))
    assert "zero table" in (DmMethod(world.host).unsuitable(target) or "")
    plain = Target(Path("/dev/loop0"), None, None, (7, 0))
    assert "device prepare" in (DmMethod(world.host).unsuitable(plain) or "")


def test_a_name_in_use_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with pytest.raises(RefusedError, match="already exists"):
        DmMethod(world.host).plan_create(world.request("data"))


def test_the_fake_catches_a_plan_that_forgets_an_undo(tmp_path: Path) -> None:
    """Negative control: with the COW file's undo removed, the walk must notice the leak."""

    def broken(w: World) -> Plan:
        plan = DmMethod(w.host).plan_create(w.request())[0]
        return replace(plan, steps=(replace(plan.steps[0], undo=None), *plan.steps[1:]))

    with pytest.raises(AssertionError, match="left a change"):
        walk_failures(tmp_path, lambda w: None, broken, DmMethod)


def test_status_reads_usage_and_merge(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    record = created(world)
    assert method.status(record).state.value == "active"
    assert method.status(record).usage_percent == 0.0
    marked = method.mark_pending(record, Pending.MERGE)
    apply(method.plan_merge(record))
    assert method.status(marked).state.value == "merged"  # the fake merges at once


def _snap(status: SnapshotUsage | SnapshotFailure, kind: str = "snapshot") -> tuple[StatusLine]:
    return (StatusLine(0, 2048, kind, status),)


def test_a_live_snapshot_has_no_words() -> None:
    health = snapshot_state(_snap(SnapshotUsage(24, 1024, 16)), "s1")
    assert (health.state, health.message) == (State.ACTIVE, "")
    assert health.usage == SnapshotUsage(24, 1024, 16) and health.percent == 2.34


@pytest.mark.parametrize(
    ("word", "state", "says"),
    [
        (SnapshotFailure.INVALID, State.INVALID, r"^invalid: .*COW filled up, or an I/O error"),
        (SnapshotFailure.OVERFLOW, State.OVERFLOW, r"^overflow: the COW is full"),
    ],
)
def test_a_dropped_snapshot_is_said_in_plain_words(
    word: SnapshotFailure, state: State, says: str
) -> None:
    health = snapshot_state(_snap(word), "s1")
    assert health.state is state and health.usage is None
    assert re.search(says, health.message), health.message
    assert "the origin is intact" in health.message
    assert health.message.endswith("snapkit snapshot discard s1")


def test_a_failed_merge_says_merge_failed_and_what_to_do() -> None:
    lines = _snap(SnapshotFailure.MERGE_FAILED, "snapshot-merge")
    health = merge_state(lines, 400, "s1")
    assert health.state is State.INVALID and health.percent is None
    assert health.message.startswith("Merge failed: ")
    assert "nothing is lost" in health.message
    assert health.message.endswith("run 'snapkit snapshot merge s1 --wait' again")
    assert merge_failed(lines)
    # negative controls: a merge under way, and an invalid COW, are not a failed merge
    assert not merge_failed(_snap(SnapshotUsage(100, 1024, 16), "snapshot-merge"))
    assert not merge_failed(_snap(SnapshotFailure.INVALID, "snapshot-merge"))
    assert merge_state(_snap(SnapshotFailure.INVALID, "snapshot-merge"), 400).message.startswith(
        "invalid: the kernel dropped the COW during the merge"
    )


def test_merge_progress_is_unchanged() -> None:
    health = merge_state(_snap(SnapshotUsage(208, 1024, 16), "snapshot-merge"), 400, "s1")
    assert (health.state, health.percent, health.message) == (State.MERGING, 50.0, "")
    done = merge_state(_snap(SnapshotUsage(16, 1024, 16), "snapshot-merge"), 400, "s1")
    assert (done.state, done.percent) == (State.MERGED, 100.0)


def test_dm_status_and_started_after_a_failed_merge(tmp_path: Path) -> None:
    world, method, record = merge_failed_world(tmp_path)
    status = method.status(record)
    assert status.state is State.INVALID and status.message.startswith("Merge failed")
    assert not method.started(record)  # so that running merge again starts it afresh
    del world.dm.statuses["data"]
    assert method.started(record)  # negative control: a merge under way has started


def test_a_failed_merge_restarts_from_snapshot_origin(tmp_path: Path) -> None:
    """The kernel refuses to reload the same snapshot-merge ("A snapshot is already merging"):
    the restart puts snapshot-origin back first, then loads a fresh snapshot-merge."""
    world, method, record = merge_failed_world(tmp_path)
    plan = method.plan_merge(record)
    loads = [s.description for s in plan.steps if s.description.startswith("dmsetup load data")]
    assert [" snapshot-origin " in t for t in loads] == [True, False], loads
    assert " snapshot-merge " in loads[1]
    del world.dm.statuses["data"]
    before = len(world.faults.calls)
    apply(plan)
    calls = world.faults.calls[before:]
    assert calls.count("dm suspend data") == 2 and calls.count("dm resume data") == 2, calls
    table = world.dm.table("data")
    assert table is not None and table.lines[0].target.type_name == "snapshot-merge"
    assert not any(d.suspended for d in world.dm.state().values())
