"""``snapkit recover`` against FakeDm: a "reboot" is a fresh FakeDm and no loop devices, with
the COW files kept. The stack comes back as create left it, a pending merge comes back as
snapshot-merge, a COW no record names is removed, and a second run changes nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.table import Snapshot, SnapshotMerge, SnapshotOrigin
from snapkit.flow import Flow
from snapkit.methods.base import Host
from snapkit.methods.dm import DmMethod
from snapkit.plan import apply
from snapkit.recover import plan_recover
from snapkit.state import StateData, StateFile
from tests.unit.test_method_dm import BASE, ORIGINAL, FakeLoops, World, make_world


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
    return Flow(host, state=StateFile(world.cow_dir / "state"))


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
    marked = DmMethod(world.host).mark_pending(record, "merge")
    flow = _rebooted(world)
    plan, result, kept = plan_recover(flow, StateData(snapshots=(marked,)))
    apply(plan)
    assert result.merging == ("s1",) and kept.snapshots == (marked,)
    assert _kind(flow, "data") is SnapshotMerge


def test_a_mark_without_a_reboot_is_left_to_the_flow_to_restart(tmp_path: Path) -> None:
    """No reboot: the snapshot stack is still there and the kernel never started. recover
    changes nothing itself and hands the record to the merge, which starts it."""
    world, data = _created(tmp_path)
    marked = DmMethod(world.host).mark_pending(data.snapshots[0], "merge")
    flow = Flow(world.host, state=StateFile(world.cow_dir / "state"))
    plan, result, _ = plan_recover(flow, StateData(snapshots=(marked,)))
    assert plan.steps == () and result.merging == ("s1",)
    assert DmMethod(world.host).started(marked) is False
