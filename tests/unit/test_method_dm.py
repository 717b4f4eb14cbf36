"""The dm method's plans against FakeDm: a failure injected at every step leaves the fake
system exactly as it was; the finish plan converges when re-run after any failure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from snapkit.dm.table import Linear, Table
from snapkit.errors import RefusedError, ValidationError
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import Pending, SnapshotRecord, Target
from snapkit.plan import Plan, PlanError, apply
from tests.unit.fakes import (
    BASE,
    ORIGINAL,
    SIZE,
    World,
    created,
    make_world,
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


def test_merge_is_refused_while_other_snapshots_exist(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    record = created(world, "s1")
    created(world, "s2")
    with pytest.raises(RefusedError, match="other snapshots"):
        DmMethod(world.host).plan_merge(record)


def test_discard_of_one_of_two_keeps_the_origin_a_snapshot_origin(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    s1, s2 = created(world, "s1"), created(world, "s2")
    apply(method.plan_discard(s1))
    apply(method.plan_finish(s1))
    assert world.dm.state()["data"].active.lines[0].target.type_name == "snapshot-origin"
    assert set(world.dm.state()) == {"data", "data-real", "s2"}
    apply(method.plan_discard(s2))
    apply(method.plan_finish(s2))
    assert world.dm.state()["data"].active == ORIGINAL


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
