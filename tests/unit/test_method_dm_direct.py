"""dm-direct's plans against FakeDm: every injected failure leaves the system as it was
(including the read-only flag of the base device), and the verbs keep snapkit's meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.dm.table import DevNum, Linear, Snapshot, Table
from snapkit.errors import RefusedError
from snapkit.methods.base import SnapshotRecord, Target
from snapkit.methods.dm_direct import DmDirectMethod
from snapkit.plan import apply
from tests.unit.test_method_dm import BASE, ORIGINAL, World, make_world, walk_failures


def created(world: World, name: str = "s1") -> SnapshotRecord:
    plan, record = DmDirectMethod(world.host).plan_create(world.request(name))
    apply(plan)
    world.records[name] = record
    return record


def test_create_makes_the_origin_a_snapshot_of_its_base(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created(world)
    state = world.dm.state()
    origin = state["data"].active.lines[0].target
    assert isinstance(origin, Snapshot) and origin.origin == BASE
    assert state["s1"].active == Table.single(2048, Linear(BASE, 0))
    assert state["s1"].read_only and state["s1"].uuid == "SNAPKIT-s1-view"
    assert len(world.run.read_only) == 1  # blockdev --setro on the base


def test_create_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    total = walk_failures(
        tmp_path,
        lambda w: None,
        lambda w: DmDirectMethod(w.host).plan_create(w.request())[0],
        DmDirectMethod,
    )
    assert total >= 9


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_start_fails_cleanly_at_every_step(tmp_path: Path, op: str) -> None:
    def build(w: World):  # type: ignore[no-untyped-def]
        method = DmDirectMethod(w.host)
        record = w.records["s1"]
        return method.plan_merge(record) if op == "merge" else method.plan_discard(record)

    walk_failures(tmp_path, lambda w: created(w), build, DmDirectMethod)


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_finish_leaves_the_original_linear_table(tmp_path: Path, op: str) -> None:
    for n in range(10):
        world = make_world(tmp_path)
        method = DmDirectMethod(world.host)
        record = created(world)
        start = method.plan_merge(record) if op == "merge" else method.plan_discard(record)
        apply(start)
        marked = method.mark_pending(record, op)
        assert method.status(marked).state.value == "merged"
        world.faults.fail_at = len(world.faults.calls) + n
        try:
            apply(method.plan_finish(marked))
        except Exception:
            world.faults.fail_at = None
            apply(method.plan_finish(marked))
        assert set(world.dm.state()) == {"data"}
        assert world.dm.state()["data"].active == ORIGINAL
        assert not world.loops.attached and not world.files.files and not world.run.read_only


def test_merge_rolls_back_with_the_linear_table_and_discard_merges_the_cow(tmp_path: Path) -> None:
    """The inversion of the raw recipe's words: snapkit merge loads linear (drops the COW),
    snapkit discard loads snapshot-merge (keeps the current content)."""
    world = make_world(tmp_path)
    method = DmDirectMethod(world.host)
    record = created(world)
    merge_types = [s.description for s in method.plan_merge(record).steps]
    discard_types = [s.description for s in method.plan_discard(record).steps]
    assert any("linear 7:0 0" in d and "load data" in d for d in merge_types)
    assert any("snapshot-merge" in d for d in discard_types)
    assert not any("snapshot-merge" in d for d in merge_types)


def test_an_offset_origin_gets_an_intermediate_device(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.dm.faults.fail_at = None
    world.dm.create("part")
    world.dm.load("part", Table.single(1024, Linear(DevNum(7, 0), 2048)))
    world.dm.resume("part")
    target = Target(Path("/dev/mapper/part"), None, None, (253, 1))
    from snapkit.methods.base import CreateRequest

    plan, _ = DmDirectMethod(world.host).plan_create(CreateRequest(target, "p1", cow_dir=tmp_path))
    apply(plan)
    state = world.dm.state()
    assert state["p1-base"].active == Table.single(1024, Linear(DevNum(7, 0), 2048))
    snap = state["part"].active.lines[0].target
    assert isinstance(snap, Snapshot) and snap.origin == "/dev/mapper/p1-base"


def test_a_second_dm_direct_snapshot_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created(world)
    with pytest.raises(RefusedError, match="snapshot table"):
        DmDirectMethod(world.host).plan_create(world.request("s2"))


@pytest.mark.parametrize("fs", ["xfs", "btrfs"])
def test_a_fs_whose_copy_must_replay_a_log_is_refused(tmp_path: Path, fs: str) -> None:
    world = make_world(tmp_path)
    xfs = Target(Path("/dev/mapper/data"), Path("/mnt/o"), fs, (253, 0))
    assert "replay" in (DmDirectMethod(world.host).unsuitable(xfs) or "")
    from snapkit.methods.base import CreateRequest

    with pytest.raises(RefusedError, match="replay"):
        DmDirectMethod(world.host).plan_create(CreateRequest(xfs, "s1", cow_dir=tmp_path))
