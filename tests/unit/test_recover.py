"""``snapkit recover`` against FakeDm: a "reboot" is a fresh FakeDm and no loop devices, with
the COW files kept. The stack comes back as create left it, a pending merge comes back as
snapshot-merge, a COW no record names is removed, and a second run changes nothing. dm-direct:
its own stack, its inverted pending verbs, and its mount layer gone with the reboot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.table import Linear, Snapshot, SnapshotMerge, SnapshotOrigin, Table
from snapkit.flow import Flow
from snapkit.methods.base import Host
from snapkit.methods.dm.direct import DmDirectMethod
from snapkit.methods.dm.layer import Layer, recorded
from snapkit.methods.dm.recover import DmRecovery
from snapkit.methods.dm.recover_direct import holds_writes
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import CreateRequest, Pending, Target
from snapkit.plan import Plan, PlanError, Step, apply
from snapkit.recover import Recovery
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import BASE, ORIGINAL, FakeLoops, World, make_world


def plan_recover(flow: Flow, data: StateData) -> tuple[Plan, Recovery, StateData]:
    """The dm family's recovery alone: its plan, what it reports, the state it would save."""
    plan, done = DmRecovery(flow.context).plan_recover(data)
    reported = Recovery(tuple(done.actions), tuple(done.dropped), tuple(done.merging))
    return plan, reported, done.kept(data)


def _created(tmp_path: Path) -> tuple[World, StateData]:
    world = make_world(tmp_path)
    plan, record = DmMethod(world.host).plan_create(world.request())
    apply(plan)
    return world, StateData(snapshots=(record,))


def _rebooted(world: World) -> Flow:
    """Kernel memory gone (tables, loops); files on disk kept."""
    dm = FakeDm(faults=Faults())
    dm.add_block_device("/dev/loop0", BASE)
    host = Host(dm=dm, run=world.run, loops=FakeLoops(dm, Faults()), files=world.files)
    return Flow(host, settings=Settings.under(world.cow_dir / "state"))


def _kind(flow: Flow, name: str) -> type:
    table = flow.host.dm.table(name)
    assert table is not None, name
    return type(table.lines[0].target)


def test_a_snapshot_is_reassembled_after_a_reboot(tmp_path: Path) -> None:
    world, data = _created(tmp_path)
    flow = _rebooted(world)
    plan, result, kept = plan_recover(flow, data)
    apply(plan)
    assert kept == data and not result.dropped and not result.merging
    assert _kind(flow, "data") is SnapshotOrigin
    assert flow.host.dm.table("data-real") == ORIGINAL
    assert _kind(flow, "s1") is Snapshot
    # idempotent: a second run finds everything in place
    again, _, _ = plan_recover(flow, data)
    assert again.steps == ()


def test_a_pending_merge_resumes_as_snapshot_merge(tmp_path: Path) -> None:
    world, data = _created(tmp_path)
    record = data.snapshots[0]
    pending = replace(record, details={**record.details, "pending": "merge"})
    flow = _rebooted(world)
    plan, result, _ = plan_recover(flow, StateData(snapshots=(pending,)))
    apply(plan)
    assert result.merging == ("s1",)
    assert _kind(flow, "data") is SnapshotMerge
    assert flow.host.dm.info("s1") is None


@pytest.mark.parametrize("order", ["merging first", "sibling first"])
def test_a_pending_merge_beside_a_sibling_stays_a_merge(tmp_path: Path, order: str) -> None:
    """Whichever record comes first, the origin gets snapshot-merge, and the sibling its own
    snapshot device over -real (the kernel keeps it whole through the merge)."""
    world = make_world(tmp_path)
    made = []
    for name in ("s1", "s2"):
        plan, record = DmMethod(world.host).plan_create(world.request(name))
        apply(plan)
        made.append(record)
    pending = replace(made[0], details={**made[0].details, "pending": "merge"})
    records = (pending, made[1]) if order == "merging first" else (made[1], pending)
    flow = _rebooted(world)
    plan, result, _ = plan_recover(flow, StateData(snapshots=records))
    apply(plan)
    assert result.merging == ("s1",)
    assert _kind(flow, "data") is SnapshotMerge
    assert _kind(flow, "s2") is Snapshot and flow.host.dm.info("s1") is None


def test_a_record_without_its_cow_is_dropped(tmp_path: Path) -> None:
    world, data = _created(tmp_path)
    world.files.files.clear()
    flow = _rebooted(world)
    _, result, kept = plan_recover(flow, data)
    assert result.dropped == ("s1",) and kept.snapshots == ()


def test_a_cow_no_record_names_is_removed(tmp_path: Path) -> None:
    """A create cut short before the state file was written leaves only its COW file."""
    world, _ = _created(tmp_path)
    flow = _rebooted(world)
    orphan = flow.state.directory / "cow" / "half.cow"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"")
    world.files.files[orphan] = 0
    plan, result, _ = plan_recover(flow, StateData())
    apply(plan)
    assert result.dropped == ("half.cow",)
    assert not world.files.exists(orphan)


def test_a_mark_whose_merge_never_started_merges_the_whole_cow(tmp_path: Path) -> None:
    """The mark is saved before the merge starts; a reboot right after it leaves a whole COW
    and a marked record. recover loads snapshot-merge: the merge runs from the beginning."""
    world, data = _created(tmp_path)
    record = data.snapshots[0]
    marked = DmMethod(world.host).mark_pending(record, Pending.MERGE)
    flow = _rebooted(world)
    plan, result, kept = plan_recover(flow, StateData(snapshots=(marked,)))
    apply(plan)
    assert result.merging == ("s1",) and kept.snapshots == (marked,)
    assert _kind(flow, "data") is SnapshotMerge


def test_a_mark_without_a_reboot_is_left_to_the_flow_to_restart(tmp_path: Path) -> None:
    """No reboot: the snapshot stack is still there and the kernel never started. recover
    changes nothing itself and hands the record to the merge, which starts it."""
    world, data = _created(tmp_path)
    marked = DmMethod(world.host).mark_pending(data.snapshots[0], Pending.MERGE)
    flow = Flow(world.host, settings=Settings.under(world.cow_dir / "state"))
    plan, result, _ = plan_recover(flow, StateData(snapshots=(marked,)))
    assert plan.steps == () and result.merging == ("s1",)
    assert DmMethod(world.host).started(marked) is False


# -- dm-direct: the origin is the snapshot target, its base device the read-only copy ---------


def _direct(tmp_path: Path, pending: str = "") -> tuple[World, StateData]:
    world = make_world(tmp_path)
    method = DmDirectMethod(world.host)
    plan, record = method.plan_create(world.request())
    apply(plan)
    if pending:
        record = method.mark_pending(record, Pending(pending))
        apply(method.plan_merge(record) if pending == "merge" else method.plan_discard(record))
    world.run.read_only.clear()  # blockdev --setro does not survive a reboot
    return world, StateData(snapshots=(record,))


def test_a_dm_direct_snapshot_is_reassembled_after_a_reboot(tmp_path: Path) -> None:
    world, data = _direct(tmp_path)
    flow = _rebooted(world)
    plan, result, kept = plan_recover(flow, data)
    assert any(" snapshot " in a for a in result.actions), result.actions  # said in words
    assert not any("property object" in a for a in result.actions), result.actions
    apply(plan)
    assert not result.dropped and not result.merging and kept == data
    origin = flow.host.dm.table("data")
    assert origin is not None and isinstance(origin.lines[0].target, Snapshot)
    assert origin.lines[0].target.origin == BASE  # the writes since come back from the COW
    assert flow.host.dm.table("s1") == Table.single(2048, Linear(BASE, 0))
    assert flow.host.dm.info("s1").read_only  # type: ignore[union-attr]
    assert world.run.read_only  # the base device is the read-only copy again
    again, _, _ = plan_recover(flow, data)
    assert again.steps == ()


def test_a_dm_direct_reassembly_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    world, data = _direct(tmp_path)
    probe = _rebooted(world)
    total = len(plan_recover(probe, data)[0].steps)
    apply(plan_recover(probe, data)[0])
    for n in range(total):
        world, data = _direct(tmp_path / str(n))
        flow = _rebooted(world)
        faults = Faults()
        flow.host.dm.faults = faults  # type: ignore[attr-defined]
        flow.host.loops.faults = faults  # type: ignore[attr-defined]
        world.run.faults = faults
        plan = plan_recover(flow, data)[0]
        faults.fail_at = n
        with pytest.raises(PlanError):
            apply(plan)
        assert flow.host.dm.list_devices() == {}, n
        assert not flow.host.loops.attached and not world.run.read_only  # type: ignore[attr-defined]


def test_a_pending_dm_direct_discard_resumes_its_merge_into_the_base(tmp_path: Path) -> None:
    """dm-direct's discard keeps the writes since the snapshot: they are in the COW, and
    snapshot-merge copies them into the base. Dropping the COW, as for dm, would lose them."""
    world, data = _direct(tmp_path, "discard")
    flow = _rebooted(world)
    plan, result, _ = plan_recover(flow, data)
    apply(plan)
    assert result.merging == ("s1",) and not result.dropped
    assert _kind(flow, "data") is SnapshotMerge
    assert flow.host.dm.info("s1") is None and world.files.exists(tmp_path / "s1.cow")


def test_recover_finishes_a_pending_dm_direct_discard(tmp_path: Path) -> None:
    world, data = _direct(tmp_path, "discard")
    flow = _rebooted(world)
    flow.lock_dir = tmp_path / "locks"
    flow.state.save(data)
    done = flow.recover()
    assert not isinstance(done, str) and done.merging == ("s1",)
    assert flow.host.dm.table("data") == ORIGINAL and set(flow.host.dm.list_devices()) == {"data"}
    assert not world.files.files and flow.state.load().snapshots == ()


def test_a_pending_dm_direct_merge_rolls_back_to_the_linear_table(tmp_path: Path) -> None:
    world, data = _direct(tmp_path, "merge")
    flow = _rebooted(world)
    plan, result, _ = plan_recover(flow, data)
    apply(plan)
    assert result.merging == ("s1",)
    assert flow.host.dm.table("data") == ORIGINAL
    assert flow.host.dm.info("s1") is None and not world.run.read_only


def test_a_mount_layer_does_not_survive_a_reboot(tmp_path: Path) -> None:
    """Its loop is gone, its file and the record's keys stay: recover removes both; a layer
    file no record names is removed too."""
    world, data = _direct(tmp_path)
    record = data.snapshots[0]
    layer = Layer.of(record)
    world.files.create_sparse(layer.cow_file, 4096)
    orphan = tmp_path / "state" / "cow" / "gone.layer"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"")
    world.files.files[orphan] = 0
    flow = _rebooted(world)
    plan, _, kept = plan_recover(flow, StateData(snapshots=(recorded(record, layer),)))
    apply(plan)
    assert not world.files.exists(layer.cow_file) and not world.files.exists(orphan)
    assert kept.snapshots == (record,)  # without the layer keys
    assert _kind(flow, "data") is Snapshot


def test_a_dm_direct_origin_at_an_offset_gets_its_range_device_back(tmp_path: Path) -> None:
    """A snapshot target has no offset: the range is its own device (-base), as at create."""
    world = make_world(tmp_path)
    world.dm.faults = Faults()
    world.dm.create("part")
    world.dm.load("part", Table.single(1024, Linear(BASE, 2048)))
    world.dm.resume("part")
    target = Target(Path("/dev/mapper/part"), None, "xfs", (253, 1))
    plan, record = DmDirectMethod(world.host).plan_create(
        CreateRequest(target, "p1", cow_dir=tmp_path)
    )
    apply(plan)
    world.run.read_only.clear()
    flow = _rebooted(world)
    recovered, _, kept = plan_recover(flow, StateData(snapshots=(record,)))
    apply(recovered)
    assert flow.host.dm.table("p1-base") == Table.single(1024, Linear(BASE, 2048))
    origin = flow.host.dm.table("part")
    assert origin is not None and isinstance(origin.lines[0].target, Snapshot)
    assert origin.lines[0].target.origin == "/dev/mapper/p1-base"
    assert flow.host.dm.table("p1") == Table.single(1024, Linear("/dev/mapper/p1-base", 0))
    assert kept.snapshots[0].details["base"] == "/dev/mapper/p1-base"
    assert world.run.read_only == {"/dev/mapper/p1-base"}


# -- a dm-direct create cut short: recorded as 'pending create' before its plan ran -----------


def _cut_create(tmp_path: Path, steps_done: int) -> tuple[World, StateData]:
    """The first ``steps_done`` steps of a dm-direct create ran, then snapkit died."""
    world = make_world(tmp_path)
    plan, record = DmDirectMethod(world.host).plan_create(world.request())
    for step in plan.steps[:steps_done]:
        step.do()
    creating = replace(record, details={**record.details, "pending": "create"})
    return world, StateData(snapshots=(creating,))


def _cow(path: Path, *, loaded: bool, exception: bool) -> None:
    """A COW as the kernel leaves it: zero (never loaded), a header, and maybe one entry."""
    raw = bytearray(3 * 4096)
    if loaded:
        raw[0:16] = (
            (0x70416E53).to_bytes(4, "little")
            + (1).to_bytes(4, "little") * 2
            + (8).to_bytes(4, "little")
        )
    if exception:
        raw[4096 : 4096 + 16] = (5).to_bytes(8, "little") + (2).to_bytes(8, "little")
    path.write_bytes(bytes(raw))


def test_holds_writes_reads_the_first_committed_exception(tmp_path: Path) -> None:
    cow = tmp_path / "c.cow"
    assert holds_writes(cow)  # unreadable: assume it does
    _cow(cow, loaded=False, exception=False)
    assert not holds_writes(cow)
    _cow(cow, loaded=True, exception=False)
    assert not holds_writes(cow)
    _cow(cow, loaded=True, exception=True)
    assert holds_writes(cow)


def test_a_create_cut_after_the_switch_is_kept_after_a_reboot(tmp_path: Path) -> None:
    """Writes acknowledged since the switch are in the COW only: the snapshot must come back."""
    world, data = _cut_create(tmp_path, 8)
    _cow(tmp_path / "s1.cow", loaded=True, exception=True)
    world.run.read_only.clear()
    flow = _rebooted(world)
    plan, result, kept = plan_recover(flow, data)
    apply(plan)
    assert not result.dropped and kept.snapshots[0].details["pending"] == ""
    assert _kind(flow, "data") is Snapshot and flow.host.dm.info("s1") is not None
    assert world.run.read_only and world.files.exists(tmp_path / "s1.cow")


def test_a_create_whose_cow_took_nothing_is_dropped_after_a_reboot(tmp_path: Path) -> None:
    world, data = _cut_create(tmp_path, 8)
    _cow(tmp_path / "s1.cow", loaded=True, exception=False)
    flow = _rebooted(world)
    plan, result, kept = plan_recover(flow, data)
    apply(plan)
    assert result.dropped == ("s1",) and kept.snapshots == ()
    assert flow.host.dm.table("data") == ORIGINAL and set(flow.host.dm.list_devices()) == {"data"}
    assert not world.files.files


def test_a_create_killed_after_the_switch_is_finished_in_place(tmp_path: Path) -> None:
    world, data = _cut_create(tmp_path, 8)  # no reboot: the origin is the snapshot target
    flow = Flow(world.host, settings=Settings.under(tmp_path / "state"))
    plan, result, kept = plan_recover(flow, data)
    apply(plan)
    assert not result.dropped and kept.snapshots[0].details["pending"] == ""
    assert world.run.read_only  # the base is the read-only copy
    assert DmDirectMethod(world.host).status(kept.snapshots[0]).state.value == "active"


def test_a_create_killed_inside_the_switch_is_undone(tmp_path: Path) -> None:
    """Killed between the suspend and the resume: the origin is suspended with the snapshot
    table loaded. It is cleared and resumed as it was; the rest of the create goes."""
    world, data = _cut_create(tmp_path, 7)
    assert world.dm.info("data").suspended  # type: ignore[union-attr]
    flow = Flow(world.host, settings=Settings.under(tmp_path / "state"))
    plan, result, kept = plan_recover(flow, data)
    apply(plan)
    assert result.dropped == ("s1",) and kept.snapshots == ()
    state = world.dm.state()
    assert set(state) == {"data"} and state["data"].active == ORIGINAL
    assert not state["data"].suspended and state["data"].inactive is None
    assert not world.loops.attached and not world.files.files


def test_the_flow_records_a_dm_direct_create_before_its_plan(tmp_path: Path) -> None:
    """So no crash can leave a COW with the origin's newest writes and no record; a clean
    rollback takes the mark away again."""
    world = make_world(tmp_path)
    flow = Flow(world.host, settings=Settings.under(tmp_path / "state"))
    method = DmDirectMethod(world.host)
    plan, record = method.plan_create(world.request())
    seen: list[str] = []
    probe = Step("look", lambda: seen.append(flow.state.load().snapshots[0].details["pending"]))
    flow._apply_create(method, replace(plan, steps=(probe, *plan.steps)), record)
    assert seen == ["create"]
    world = make_world(tmp_path / "2")
    flow = Flow(world.host, settings=Settings.under(tmp_path / "2" / "state"))
    method = DmDirectMethod(world.host)
    plan, record = method.plan_create(world.request())
    world.faults.fail_at = len(world.faults.calls) + 5
    with pytest.raises(PlanError):
        flow._apply_create(method, plan, record)
    assert flow.state.load().snapshots == ()
