"""Status lines parse into records; percentages match what lvm2 reports."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.status import (
    NoStatus,
    RawStatus,
    SnapshotFailure,
    SnapshotUsage,
    StatusLine,
    ThinPoolStatus,
    ThinStatus,
    lvs_percent,
    merge_progress,
    parse_snapshot_status,
    parse_status,
    parse_status_line,
)
from snapkit.errors import CommandError, FormatError, OperationError
from snapkit.flow import Flow
from snapkit.methods.base import Host
from snapkit.methods.dm.shared import merge_failed, merge_state, snapshot_state
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.methods.lvm.snapshot import LvmMethod
from snapkit.model import Pending, SnapshotRecord, State
from snapkit.plan import PlanError, apply
from snapkit.run import Completed
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import SIZE, FakeLvm, Lv, World, created, lvm_host, lvm_request, make_world


def test_fresh_snapshot() -> None:
    line = parse_status_line("0 2097152 snapshot 16/204800 16")
    assert line.type_name == "snapshot" and line.length == 2097152
    assert line.status == SnapshotUsage(16, 204800, 16)
    assert isinstance(line.status, SnapshotUsage)
    assert line.status.usage_percent == 0.0
    assert lvs_percent(line.status) == "0.00"


@pytest.mark.parametrize("word", ["Invalid", "Merge failed", "Overflow", "Unknown"])
def test_failure_words(word: str) -> None:
    assert parse_snapshot_status(word) == SnapshotFailure(word)


def test_lvs_percent_rules() -> None:
    assert lvs_percent(SnapshotUsage(24, 204800, 16)) == "0.01"  # tiny, never 0.00
    assert lvs_percent(SnapshotUsage(204799, 204800, 16)) == "99.99"  # never falsely 100
    assert lvs_percent(SnapshotUsage(204800, 204800, 16)) == "100.00"
    assert lvs_percent(SnapshotUsage(102400, 204800, 16)) == "50.00"
    assert lvs_percent(SnapshotUsage(102400, 204800, None)) == "50.00"  # pre-1.8 kernels
    assert lvs_percent(SnapshotFailure.OVERFLOW) == "100.00"
    assert lvs_percent(SnapshotFailure.INVALID) is None


def test_merge_status_and_progress() -> None:
    first = parse_snapshot_status("4016/204800 16")
    assert isinstance(first, SnapshotUsage) and not first.merge_done
    half = SnapshotUsage(2016, 204800, 16)
    done = SnapshotUsage(16, 204800, 16)
    assert merge_progress(first, first) == 0.0
    assert merge_progress(first, half) == 50.0
    assert merge_progress(first, done) == 100.0 and done.merge_done
    assert merge_progress(done, done) == 100.0


def test_origin_linear_and_others() -> None:
    lines = parse_status(
        "0 100 snapshot-origin \n100 100 linear \n200 8 thin 4096 4095\n208 8 thin 0 -\n"
        "216 8 thin Fail\n224 8 crypt whatever\n"
    )
    assert [ln.start for ln in lines] == [0, 100, 200, 208, 216, 224]
    assert lines[0].status == NoStatus() and lines[1].status == NoStatus()
    assert lines[2].status == ThinStatus(4096, 4095)
    assert lines[3].status == ThinStatus(0, None)
    assert lines[4].status == ThinStatus(0, None, failed=True)
    assert lines[5].status == RawStatus("whatever")


def test_thin_pool() -> None:
    text = "0 409600 thin-pool 1 279/4096 1024/3200 - rw discard_passdown queue_if_no_space - 1024"
    status = parse_status_line(text).status
    assert status == ThinPoolStatus(
        1,
        279,
        4096,
        1024,
        3200,
        "rw",
        rest=("discard_passdown", "queue_if_no_space", "-", "1024"),
    )
    assert parse_status_line("0 8 thin-pool Fail").status == ThinPoolStatus(
        0, 0, 0, 0, 0, "fail", failed=True
    )


@pytest.mark.parametrize(
    "text", ["0 8 snapshot 1/2/3", "0 8 snapshot weird", "0 8 thin 1", "0 8 thin-pool 1 2"]
)
def test_malformed_status(text: str) -> None:
    with pytest.raises(FormatError):
        parse_status_line(text)


# -- what snapkit makes of a status: state, and plain words with the next step ---------------


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


def _merge_failed_world(tmp_path: Path) -> tuple[World, DmMethod, SnapshotRecord]:
    """A dm snapshot whose merge the kernel stopped with "Merge failed"."""
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    record = method.mark_pending(created(world), Pending.MERGE)
    apply(method.plan_merge(record))
    merge = (StatusLine(0, SIZE, "snapshot-merge", SnapshotFailure.MERGE_FAILED),)
    world.dm.statuses["data"] = merge
    return world, method, record


def test_dm_status_and_started_after_a_failed_merge(tmp_path: Path) -> None:
    world, method, record = _merge_failed_world(tmp_path)
    status = method.status(record)
    assert status.state is State.INVALID and status.message.startswith("Merge failed")
    assert not method.started(record)  # so that running merge again starts it afresh
    del world.dm.statuses["data"]
    assert method.started(record)  # negative control: a merge under way has started


def test_a_failed_merge_restarts_from_snapshot_origin(tmp_path: Path) -> None:
    """The kernel refuses to reload the same snapshot-merge ("A snapshot is already merging"):
    the restart puts snapshot-origin back first, then loads a fresh snapshot-merge."""
    world, method, record = _merge_failed_world(tmp_path)
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


def _flow(tmp_path: Path) -> tuple[Flow, World]:
    world, _, record = _merge_failed_world(tmp_path)
    flow = Flow(
        world.host, settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir)
    )
    flow.state.save(StateData(snapshots=(record,)))
    return flow, world


def test_flow_merge_wait_stops_and_keeps_everything(tmp_path: Path) -> None:
    flow, world = _flow(tmp_path)
    assert flow.status("s1").message.startswith("Merge failed")
    with pytest.raises(OperationError):  # restarted, and the fake still says it failed
        flow.merge("s1", wait=True)
    assert flow.load().snapshot("s1") is not None  # the record, and the COW, are kept
    assert world.files.files and world.loops.attached
    del world.dm.statuses["data"]  # the device is fixed: the same command now finishes
    assert flow.merge("s1", wait=True).state is State.MERGED  # type: ignore[union-attr]
    assert flow.load().snapshot("s1") is None and not world.files.files


def test_flow_merge_wait_says_merge_failed(tmp_path: Path) -> None:
    flow, _ = _flow(tmp_path)
    with pytest.raises(OperationError, match=r"Merge failed.*snapkit snapshot merge s1 --wait"):
        flow.merge("s1", wait=True)


def test_merge_failed_is_one_line_with_the_next_step_as_its_hint(tmp_path: Path) -> None:
    flow, _ = _flow(tmp_path)
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


@dataclass
class _FailingMergeLvm(FakeLvm):
    """lvm2 whose merge the kernel stops while ``broken``: lvconvert (and a later activation)
    exit 5 saying "Merge failed", as measured, and lv_attr's 5th letter reads ``m``."""

    broken: bool = True
    failed: set[str] = field(default_factory=set)

    def report(self) -> str:
        data = json.loads(super().report())
        for row in data["report"][0]["lv"]:
            if row["lv_name"].strip("[]") in self.failed:
                row["lv_attr"] = row["lv_attr"][:4] + "m" + row["lv_attr"][5:]
        return json.dumps(data)

    def run(self, argv: Sequence[str], **kw: Any) -> Completed:
        args = list(argv)
        if args[:2] == ["lvconvert", "--merge"] and self.broken:
            self.calls.append(args)
            name = args[-1].split("/")[1]
            self.lvs[name].merging = True
            self.failed.add(name)
            raise CommandError(args, 5, LVM_MERGE_FAILED)
        if args[:2] == ["lvchange", "-ay"] and self.failed:
            self.calls.append(args)
            if self.broken:
                raise CommandError(args, 5, LVM_MERGE_FAILED)
            for name in self.failed:
                del self.lvs[name]  # merged this time
            self.failed.clear()
            return Completed(tuple(args), 0, "", "", 0.0)
        return super().run(argv, **kw)


LVM_MERGE_FAILED = (
    "/run/lvm/lvmpolld.socket: connect failed: No such file or directory\n"
    "  WARNING: Failed to connect to lvmpolld. Proceeding with polling without using lvmpolld.\n"
    "  vg/lv: Merge failed. Retry merge or inspect manually.\n"
)


def test_lvm_merge_failed_is_one_line_then_restarts_by_reactivation(tmp_path: Path) -> None:
    """Measured on 6.1: ``lvchange --refresh`` leaves a failed merge failed; ``-an`` then
    ``-ay`` of the origin merges again and waits for it."""
    fake = _FailingMergeLvm(Faults())
    fake.lvs["lv"] = Lv("lv")
    flow = Flow(
        Host(dm=FakeDm(faults=Faults()), run=fake, loops=None, files=None),  # type: ignore[arg-type]
        settings=Settings(state_dir=tmp_path / "state", lock_dir=tmp_path),
    )
    method = LvmMethod(flow.host)
    plan, record = method.plan_create(lvm_request())
    apply(plan)
    flow.state.save(StateData(snapshots=(record,)))
    with pytest.raises(PlanError) as caught:
        flow.merge("s1")
    said = str(caught.value)
    assert "\n" not in said and "Merge failed: " in said, said
    assert "run 'snapkit snapshot merge s1' again" in said and "lvmpolld" not in said
    status = flow.status("s1")
    assert status.state is State.INVALID and status.message.startswith("Merge failed: ")
    # still broken: the restart says the same, and keeps the record
    restart = method.plan_merge(record)
    assert [s.description.split(" (")[0] for s in restart.steps] == [
        "lvchange -an vg/lv",
        "lvchange -ay vg/lv",
    ]
    with pytest.raises(PlanError, match="Merge failed: "):
        flow.merge("s1")
    assert flow.status("s1").state is State.INVALID
    fake.broken = False  # the device is fixed
    assert flow.merge("s1").state is State.MERGED  # type: ignore[union-attr]
    assert "s1" not in fake.lvs and flow.state.load().snapshots == ()
    assert ["lvchange", "--refresh", "vg/lv"] not in fake.calls


class _SlowLvm(FakeLvm):
    """lvcreate that takes a while, as inside its suspend; records when it ended."""

    ended: float = 0.0

    def run(self, argv: Sequence[str], **kw: Any) -> Completed:
        if argv[0] == "lvcreate":
            time.sleep(0.4)
            result = super().run(argv, **kw)
            self.ended = time.monotonic()
            return result
        return super().run(argv, **kw)


def test_sigterm_during_lvcreate_lets_it_finish_then_undoes_it() -> None:
    """Measured on 6.1: killing lvcreate inside its suspend corrupts LVM's metadata. A real
    SIGTERM arrives 0.1 s into a 0.4 s lvcreate: the plan must wait for it, then undo it."""
    fake = _SlowLvm(Faults())
    fake.lvs["lv"] = Lv("lv", is_open=True)
    plan, _ = LvmMethod(lvm_host(fake)).plan_create(lvm_request())
    before = fake.state()
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(PlanError) as caught:
        apply(plan)
    timer.join()
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert fake.ended and [c[0] for c in fake.calls].count("lvremove") == 1  # finished, undone
    assert fake.state() == before
