"""dm-direct's plans against FakeDm: every injected failure leaves the system as it was
(including the read-only flag of the base device), and the verbs keep snapkit's meaning. The
throwaway layer of an xfs/btrfs mount: built and torn down all-or-nothing, and a mounted one
refuses merge and discard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from snapkit.dm.table import DevNum, Linear, Snapshot, Store, Table
from snapkit.errors import RefusedError
from snapkit.methods.dm import layer
from snapkit.methods.dm.direct import DmDirectMethod
from snapkit.methods.dm.layer import Layer
from snapkit.model import CreateRequest, Pending, SnapshotRecord, Target
from snapkit.plan import Plan, PlanError, apply
from tests.unit.fakes import BASE, ORIGINAL, World, make_world, walk_failures


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
        marked = method.mark_pending(record, Pending(op))
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
def test_a_fs_whose_copy_must_replay_a_log_is_taken(tmp_path: Path, fs: str) -> None:
    """Its copy is mounted through a throwaway layer (snapkit.methods.dm.layer), so create
    accepts it."""
    world = make_world(tmp_path)
    target = Target(Path("/dev/mapper/data"), None, fs, (253, 0))
    assert DmDirectMethod(world.host).unsuitable(target) is None
    plan, record = DmDirectMethod(world.host).plan_create(
        CreateRequest(target, "s1", cow_dir=tmp_path)
    )
    apply(plan)
    assert record.details["fstype"] == fs


# -- the throwaway layer that 'snapshot mount' puts over the view of an xfs/btrfs copy --------


def with_layer(world: World) -> SnapshotRecord:
    record = created(world)
    apply(Plan("layer", tuple(layer.build(world.host, Layer.of(record)))))
    return record


def test_the_layer_is_a_transient_snapshot_of_the_view(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with_layer(world)
    state = world.dm.state()["s1-layer"]
    snap = state.active.lines[0].target
    assert isinstance(snap, Snapshot) and snap.origin == "/dev/mapper/s1"
    assert snap.store is Store.TRANSIENT and not state.read_only
    assert state.uuid == "SNAPKIT-s1-layer"
    assert world.files.files[tmp_path / "s1.layer"] == 512 * 2048  # as big as the view


def test_building_the_layer_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    def build(w: World) -> Plan:
        return Plan("layer", tuple(layer.build(w.host, Layer.of(w.records["s1"]))))

    assert walk_failures(tmp_path, lambda w: created(w), build, DmDirectMethod) >= 5


def _normal(world: World) -> str:
    """The world's state with loop numbers replaced by their backing file: an undo that
    re-attaches a loop gets another number, as the kernel gives it."""
    text = repr(world.state())
    for dev, backing in world.loops.attached.items():
        text = re.sub(rf"{dev}\b", f"<loop of {backing.name}>", text)
    return re.sub(r"DevNum\(major=7, minor=\d+\)", "DevNum(7)", text)


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_a_start_with_a_layer_fails_cleanly_at_every_step(tmp_path: Path, op: str) -> None:
    """The start removes the (unmounted) layer first; a failure anywhere puts it back."""

    def build(w: World) -> Plan:
        method, record = DmDirectMethod(w.host), w.records["s1"]
        return method.plan_merge(record) if op == "merge" else method.plan_discard(record)

    probe = make_world(tmp_path)
    with_layer(probe)
    before = len(probe.faults.calls)
    apply(build(probe))
    total = len(probe.faults.calls) - before
    assert "s1-layer" not in probe.dm.state() and not probe.files.exists(tmp_path / "s1.layer")
    for n in range(total):
        world = make_world(tmp_path)
        with_layer(world)
        expected = _normal(world)
        world.faults.fail_at = len(world.faults.calls) + n
        with pytest.raises(PlanError):
            apply(build(world))
        assert _normal(world) == expected, f"failure at side effect {n} left a change"


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_a_mounted_layer_refuses_merge_and_discard(tmp_path: Path, op: str) -> None:
    world = make_world(tmp_path)
    record = with_layer(world)
    world.dm.open("s1-layer")  # mounted
    before = world.state()
    method = DmDirectMethod(world.host)
    with pytest.raises(RefusedError, match=r"s1 is mounted .*s1-layer") as caught:
        if op == "merge":
            method.plan_merge(record)
        else:
            method.plan_discard(record, force=True)  # not even --force: it cannot be removed
    assert "umount" in (caught.value.hint or "")
    assert world.state() == before


def test_an_unmounted_layer_does_not_count_as_a_user_of_the_view(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    record = with_layer(world)
    world.dm.open("s1")  # but the view itself mounted beside it does
    with pytest.raises(RefusedError, match="in use"):
        DmDirectMethod(world.host).plan_discard(record)
    world.dm.close("s1")
    DmDirectMethod(world.host).plan_discard(record)


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_finish_removes_a_layer_left_behind(tmp_path: Path, op: str) -> None:
    """The mark dropped the record's layer keys; finish still finds the layer by its name."""
    world = make_world(tmp_path)
    method = DmDirectMethod(world.host)
    record = created(world)
    marked = method.mark_pending(record, Pending(op))
    apply(method.plan_merge(record) if op == "merge" else method.plan_discard(record))
    leftover = Layer.of(record)
    world.files.create_sparse(leftover.cow_file, 4096)
    world.loops.attach(leftover.cow_file)
    apply(method.plan_finish(marked))
    assert set(world.dm.state()) == {"data"}
    assert not world.loops.attached and not world.files.files
