"""lvm and lvm-thin plans against a fake LVM: a failure at every step leaves LVM as it was.

The fake's lvcreate failure is the worst case: killed after suspending the origin and writing
the snapshot's metadata, so the undo must resume the origin *and* remove the snapshot.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.errors import CommandError, RefusedError, UsageError
from snapkit.flow import Flow
from snapkit.methods.base import Host
from snapkit.methods.lvm.snapshot import LvmMethod
from snapkit.methods.lvm.thin import LvmThinMethod
from snapkit.model import State, Target
from snapkit.plan import PlanError, apply
from snapkit.run import Completed
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import (
    LV_TARGET,
    FakeLvm,
    Lv,
    RunOptions,
    completed,
    lvm_host,
    lvm_request,
    lvm_world,
)


@pytest.mark.parametrize(
    ("method", "thin", "steps"), [(LvmMethod, False, 1), (LvmThinMethod, True, 2)]
)
def test_create_succeeds(method: type[LvmMethod], thin: bool, steps: int) -> None:
    fake = lvm_world(thin)
    plan, record = method(lvm_host(fake)).plan_create(lvm_request())
    assert len(plan.steps) == steps
    apply(plan)
    assert fake.lvs["s1"].origin == "lv" and fake.lvs["s1"].active
    assert record.device == "/dev/mapper/vg-s1" and record.details["origin_lv"] == "lv"
    assert method(lvm_host(fake)).status(record).state is State.ACTIVE


@pytest.mark.parametrize(
    ("method", "thin", "at"),
    [(LvmMethod, False, 0), (LvmThinMethod, True, 0), (LvmThinMethod, True, 1)],
)
def test_a_failure_at_every_step_leaves_lvm_as_it_was(
    method: type[LvmMethod], thin: bool, at: int
) -> None:
    fake = lvm_world(thin, fail_at=at)
    before = fake.state()
    plan, _ = method(lvm_host(fake)).plan_create(lvm_request())
    with pytest.raises(PlanError) as caught:
        apply(plan)
    assert fake.state() == before
    assert not caught.value.undo_failures


def test_negative_control_without_the_undo_the_origin_stays_suspended() -> None:
    fake = lvm_world(fail_at=0)
    plan, _ = LvmMethod(lvm_host(fake)).plan_create(lvm_request())
    with pytest.raises(CommandError):
        plan.steps[0].do()
    assert fake.suspended == {"lv"}  # what the undo is there to fix


def test_thin_origin_is_refused_by_lvm_and_linear_by_thin() -> None:
    assert "lvm-thin" in (LvmMethod(lvm_host(lvm_world(thin=True))).unsuitable(LV_TARGET) or "")
    assert "not a thin LV" in (LvmThinMethod(lvm_host(lvm_world())).unsuitable(LV_TARGET) or "")
    not_lv = Target(Path("/dev/vda"), None, None, (254, 0))
    assert "not an active logical volume" in (
        LvmMethod(lvm_host(lvm_world())).unsuitable(not_lv) or ""
    )


def test_thin_takes_no_size() -> None:
    with pytest.raises(UsageError):
        LvmThinMethod(lvm_host(lvm_world(thin=True))).plan_create(lvm_request(cow_size=1 << 20))


def test_existing_name_is_refused() -> None:
    fake = lvm_world()
    fake.lvs["s1"] = Lv("s1", "lv")
    with pytest.raises(RefusedError, match="exists"):
        LvmMethod(lvm_host(fake)).plan_create(lvm_request())


def test_deferred_merge_then_refresh() -> None:
    fake = lvm_world(is_open=True)
    method = LvmMethod(lvm_host(fake))
    plan, record = method.plan_create(lvm_request())
    apply(plan)
    merge = method.plan_merge(record)
    assert "deferred" in merge.steps[0].description
    assert "lvchange --refresh vg/lv" in merge.steps[0].description
    apply(merge)
    status = method.status(record)
    assert status.state is State.MERGING and "lvchange --refresh vg/lv" in status.message
    with pytest.raises(RefusedError, match="scheduled"):
        method.plan_merge(record)  # still open: says what to do instead of hanging
    with pytest.raises(RefusedError, match="merging"):
        method.plan_discard(record)
    fake.lvs["lv"].is_open = False  # the user unmounted
    finish = method.plan_merge(record)
    assert finish.steps[0].description.startswith("lvchange --refresh vg/lv")
    apply(finish)
    assert "s1" not in fake.lvs


def test_merge_of_a_closed_origin_runs_at_once() -> None:
    fake = lvm_world(is_open=False)
    method = LvmMethod(lvm_host(fake))
    plan, record = method.plan_create(lvm_request())
    apply(plan)
    apply(method.plan_merge(record))
    assert "s1" not in fake.lvs


def test_discard() -> None:
    fake = lvm_world()
    method = LvmMethod(lvm_host(fake))
    plan, record = method.plan_create(lvm_request())
    apply(plan)
    apply(method.plan_discard(record))
    assert "s1" not in fake.lvs
    assert method.status(record).state is State.INVALID
    with pytest.raises(RefusedError):
        method.plan_discard(record)
    assert method.plan_discard(record, force=True).steps == ()


def _flow(fake: FakeLvm, tmp_path: Path) -> Any:
    from snapkit.dm.fake import FakeDm
    from snapkit.flow import Flow
    from snapkit.methods.base import Host
    from snapkit.state import StateData

    flow = Flow(
        Host(dm=FakeDm(faults=Faults()), run=fake, loops=None, files=None),  # type: ignore[arg-type]
        settings=Settings(state_dir=tmp_path / "state", lock_dir=tmp_path),
    )
    plan, record = LvmMethod(flow.host).plan_create(lvm_request())
    apply(plan)
    flow.state.save(StateData(snapshots=(record,)))
    return flow


def test_flow_keeps_a_deferred_merge_until_lvm_has_finished(tmp_path: Path) -> None:
    """Issue 4, item 3: a merge LVM only scheduled is reported as merging, with the next
    step, and the record stays; once LVM has merged, status says merged and drops it."""
    fake = lvm_world(is_open=True)
    flow = _flow(fake, tmp_path)
    status = flow.merge("s1")
    assert status.state is State.MERGING
    assert "umount /mnt/o, then run 'lvchange --refresh vg/lv'" in status.message
    assert [r.name for r in flow.state.load().snapshots] == ["s1"]
    assert flow.status("s1").state is State.MERGING
    with pytest.raises(RefusedError, match="merge of s1 is under way"):
        flow.discard("s1")
    fake.lvs["lv"].is_open = False  # the user unmounts and refreshes
    fake.run(["lvchange", "--refresh", "vg/lv"])
    assert flow.status("s1").state is State.MERGED
    assert flow.state.load().snapshots == ()


def test_flow_merge_again_finishes_a_deferred_merge(tmp_path: Path) -> None:
    fake = lvm_world(is_open=True)
    flow = _flow(fake, tmp_path)
    flow.merge("s1")
    fake.lvs["lv"].is_open = False
    done = flow.merge("s1")  # runs lvchange --refresh itself
    assert done.state is State.MERGED and "s1" not in fake.lvs
    assert flow.state.load().snapshots == ()


def test_flow_merge_of_a_closed_origin_is_done_at_once(tmp_path: Path) -> None:
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    assert flow.merge("s1").state is State.MERGED
    assert flow.state.load().snapshots == ()


def test_flow_saves_the_merge_mark_before_lvconvert_runs(tmp_path: Path) -> None:
    """A power cut while lvconvert merges must find the record marked: without the mark, the
    merged-away snapshot LV reads as gone, i.e. invalid, and discard --force forgets it."""
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    seen: list[str] = []
    run = fake.run

    def spying(argv: Sequence[str], **kw: Any) -> Any:
        if list(argv[:2]) == ["lvconvert", "--merge"]:
            seen.append(flow.state.load().snapshots[0].details.get("pending", ""))
        return run(argv, **kw)

    fake.run = spying  # type: ignore[method-assign]
    assert flow.merge("s1").state is State.MERGED
    assert seen == ["merge"] and flow.state.load().snapshots == ()


def test_flow_merge_refused_by_lvconvert_leaves_the_record_unmarked(tmp_path: Path) -> None:
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    before = flow.state.load()
    fake.faults = Faults(0)  # the next command fails: lvconvert refuses, nothing merges
    with pytest.raises(PlanError, match="everything done before it was undone"):
        flow.merge("s1")
    assert flow.state.load() == before


class _CutInSuspend(FakeLvm):
    """lvcreate killed inside its suspend, as measured in a guest: the origin suspended with
    lvcreate's snapshot-origin table still *inactive* over a -real device with no table."""

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        if args[:2] == ["dmsetup", "info"] and "suspended,tables_loaded" in args:
            self.calls.append(args)
            live = "Both" if "vg-lv" in self.inactive else "Live"
            state = "Suspended" if "lv" in self.suspended else "Active"
            return completed(args, f"{state}:{live}")
        if args[:2] == ["dmsetup", "clear"]:
            self.calls.append(args)
            self.inactive.discard(args[-1])
            return completed(args)
        if args[:2] == ["dmsetup", "resume"] and args[-1] in self.inactive:
            self.broken = True  # the snapshot-origin table swapped in: every I/O fails
        return super().answer(args, opts)


def test_the_create_undo_drops_lvcreates_inactive_table_before_resuming() -> None:
    fake = _CutInSuspend(Faults(0))
    fake.lvs["lv"] = Lv("lv", is_open=True)
    fake.inactive, fake.broken = {"vg-lv"}, False  # type: ignore[attr-defined]
    plan, _ = LvmMethod(lvm_host(fake)).plan_create(lvm_request())
    with pytest.raises(PlanError):
        apply(plan)
    assert not fake.broken and not fake.suspended  # type: ignore[attr-defined]
    assert set(fake.lvs) == {"lv"}


def test_a_merge_whose_clean_up_was_cut_short_is_merged_and_names_the_leftover(
    tmp_path: Path,
) -> None:
    """Faults run, ext4-lvm-merge-t2068ms: after the reboot the origin was merged and the
    snapshot's name came back as a plain LV holding the COW; snapkit called it active."""
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    record = flow.state.load().snapshots[0]
    flow.state.save(
        flow.state.load().with_snapshot(
            replace(record, details={**record.details, "pending": "merge"})
        )
    )
    fake.lvs["s1"] = Lv("s1")  # no origin: a plain LV now
    status = flow.status("s1")
    assert status.state is State.MERGED and "left vg/s1" in status.message
    assert flow.state.load().snapshots == ()
    unmarked = lvm_world(is_open=False)
    flow = _flow(unmarked, tmp_path / "control")  # the control: no merge mark, no such claim
    unmarked.lvs["s1"] = Lv("s1")
    assert flow.status("s1").state is not State.MERGED


def _marked(flow: Any) -> Any:
    record = flow.state.load().snapshots[0]
    marked = replace(record, details={**record.details, "pending": "create"})
    flow.state.save(flow.state.load().with_snapshot(marked))
    return marked


def _settle(flow: Any) -> Any:
    from snapkit.methods.lvm.recover import plan_settle

    plan, settled = plan_settle(flow.context, flow.state.load())
    apply(plan)
    flow.state.save(settled.kept(flow.state.load()))
    return settled


def test_flow_saves_the_create_mark_before_lvcreate_runs(tmp_path: Path) -> None:
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)  # s1 exists; take a second snapshot through the flow
    seen: list[object] = []
    run = fake.run

    def spying(argv: Sequence[str], **kw: Any) -> Any:
        if argv[0] == "lvcreate":
            seen.append([r.details.get("pending") for r in flow.state.load().snapshots])
        return run(argv, **kw)

    fake.run = spying  # type: ignore[method-assign]
    from snapkit.flow import Flow

    impl = LvmMethod(flow.host)
    plan, record = impl.plan_create(lvm_request(name="s2"))
    Flow._apply_create(flow, impl, plan, record)
    assert seen == [[None, "create"]]  # s1 as it was, s2 marked before lvcreate ran


def test_recover_keeps_a_create_that_had_finished(tmp_path: Path) -> None:
    """snapkit SIGKILLed after lvcreate returned: the LV is a whole snapshot; keep it."""
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    _marked(flow)
    settled = _settle(flow)
    (record,) = flow.state.load().snapshots
    assert "pending" not in record.details and "s1" in fake.lvs and not settled.gone
    assert _settle(flow).actions == []  # idempotent


def test_recover_undoes_a_create_cut_inside_lvcreate(tmp_path: Path) -> None:
    """A power cut or SIGKILL inside lvcreate's suspend: a half-made LV, the origin suspended."""
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    _marked(flow)
    fake.lvs["s1"] = Lv("s1")  # half made: not a snapshot
    fake.suspended.add("lv")
    settled = _settle(flow)
    assert settled.gone == ["s1"] and flow.state.load().snapshots == ()
    assert set(fake.lvs) == {"lv"} and not fake.suspended


def test_flow_marks_a_discard_before_lvremove_and_recover_removes_lvms_leftover(
    tmp_path: Path,
) -> None:
    """Faults run, ext4-lvm-discard-t327ms: a power cut inside lvremove brought the snapshot's
    name back as a plain LV holding the COW, and snapkit called it an active snapshot."""
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    seen: list[object] = []
    run = fake.run

    def cut_inside_lvremove(argv: Sequence[str], **kw: Any) -> Any:
        if argv[0] == "lvremove":
            seen.append(flow.state.load().snapshots[0].details.get("pending"))
            fake.lvs["s1"] = Lv("s1")  # what the power cut left: a plain LV, the old COW
            raise KeyboardInterrupt  # stands in for the cut: nothing after it runs
        return run(argv, **kw)

    fake.run = cut_inside_lvremove  # type: ignore[method-assign]
    with pytest.raises((PlanError, KeyboardInterrupt)):
        flow.discard("s1")
    assert seen == ["discard"]
    fake.run = run  # type: ignore[method-assign]
    assert flow.state.load().snapshots[0].details["pending"] == "discard"
    settled = _settle(flow)
    assert settled.gone == ["s1"] and "s1" not in fake.lvs
    assert flow.state.load().snapshots == ()


def test_recover_leaves_a_merge_lvm_is_still_running(tmp_path: Path) -> None:
    fake = lvm_world(is_open=True)  # LVM defers the merge: the snapshot LV stays, merging
    flow = _flow(fake, tmp_path)
    assert flow.merge("s1").state is State.MERGING
    assert _settle(flow).gone == [] and "s1" in fake.lvs
    assert flow.state.load().snapshots[0].details["pending"] == "merge"


def test_a_failed_create_leaves_no_state_file_where_there_was_none(tmp_path: Path) -> None:
    """The mark saved before lvcreate must not outlive a clean rollback, not even as an empty
    file: a refused or failed create changes nothing (the signal tests fingerprint it)."""
    from snapkit.flow import Flow

    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    flow.state.path.unlink()
    impl = LvmMethod(flow.host)
    plan, record = impl.plan_create(lvm_request(name="s2"))
    fake.faults = Faults(0)  # lvcreate, the first command that changes anything, fails
    with pytest.raises(PlanError):
        Flow._apply_create(flow, impl, plan, record)
    assert not flow.state.path.exists() and "s2" not in fake.lvs


def test_recover_clears_a_merge_mark_lvm_never_saw(tmp_path: Path) -> None:
    """snapkit SIGKILLed between saving the merge mark and running lvconvert (the signal
    tests' pause before step 1): the snapshot LV is whole and not merging. The stale mark
    refused every discard; recover clears it, as the flow's SIGINT rollback does, and keeps
    the snapshot untouched. (The control, a merge LVM runs, is the test above.)"""
    fake = lvm_world(is_open=True)
    flow = _flow(fake, tmp_path)
    unmarked = flow.state.load()
    record = unmarked.snapshots[0]
    flow.state.save(
        flow.state.load().with_snapshot(
            replace(record, details={**record.details, "pending": "merge"})
        )
    )
    lvm_before = fake.state()
    with pytest.raises(RefusedError) as refused:
        flow.discard("s1", force=True)
    assert "'snapkit recover' settles it" in str(refused.value)
    settled = _settle(flow)
    assert settled.actions == ["s1: the merge had not started; kept"] and not settled.gone
    assert flow.state.load() == unmarked and fake.state() == lvm_before
    assert _settle(flow).actions == []  # idempotent
    flow.discard("s1")  # no longer refused
    assert "s1" not in fake.lvs and flow.state.load().snapshots == ()


def test_a_verb_refused_for_another_under_way_names_the_way_out(tmp_path: Path) -> None:
    """The refusal is one line (message + hint) naming both ways out: finishing the verb,
    and 'snapkit recover' for a mark a killed snapkit left behind."""
    fake = lvm_world(is_open=False)
    flow = _flow(fake, tmp_path)
    record = flow.state.load().snapshots[0]
    for pending, op, finish in (
        ("merge", "discard", "'snapkit snapshot merge s1 --wait'"),
        ("discard", "merge", "'snapkit snapshot discard s1'"),
        ("create", "discard", "'snapkit recover'"),
    ):
        marked = replace(record, details={**record.details, "pending": pending})
        flow.state.save(flow.state.load().with_snapshot(marked))
        with pytest.raises(RefusedError) as refused:
            flow.merge("s1") if op == "merge" else flow.discard("s1", force=True)
        error = refused.value
        assert error.message == f"a {pending} of s1 is under way, or was cut short", error
        assert error.hint is not None and error.hint.startswith(f"finish it: {finish}"), error
        assert "'snapkit recover'" in error.hint and "\n" not in str(error), error


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

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
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
            return completed(args)
        return super().answer(args, opts)


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

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        if args[0] == "lvcreate":
            time.sleep(0.4)
            result = super().answer(args, opts)
            self.ended = time.monotonic()
            return result
        return super().answer(args, opts)


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


def test_the_default_cow_size_is_whole_sectors() -> None:
    """A fifth of a 96 MiB LV is not a whole number of sectors, and lvcreate refuses such a
    size in bytes (measured: "Size is not a multiple of 512"): it is rounded up."""
    fake = lvm_world()
    fake.lvs["lv"] = Lv("lv")
    method = LvmMethod(lvm_host(fake))
    origin = method._origin(LV_TARGET)
    argv = method._create_argv(lvm_request(), replace(origin, size=96 << 20), "s1")
    size = int(argv[argv.index("-L") + 1].removesuffix("b"))
    assert size % 512 == 0 and 0 <= size - (96 << 20) // 5 < 512


def _thin_flow_after_a_reboot(tmp_path: Path, pending: str | None = None) -> tuple[Any, FakeLvm]:
    """A thin snapshot s1 taken through the flow, then every LV inactive, as after a power cut
    (optionally with s1's record marked ``pending``)."""
    fake = lvm_world(thin=True, is_open=False)
    flow = Flow(
        Host(dm=FakeDm(faults=Faults()), run=fake, loops=None, files=None),  # type: ignore[arg-type]
        settings=Settings(state_dir=tmp_path / "state", lock_dir=tmp_path),
    )
    plan, record = LvmThinMethod(flow.host).plan_create(lvm_request())
    apply(plan)
    if pending:
        record = replace(record, details={**record.details, "pending": pending})
    flow.state.save(StateData(snapshots=(record,)))
    for lv in fake.lvs.values():
        lv.active = False
    return flow, fake


@pytest.mark.parametrize("pending", [None, "create"])
def test_recover_activates_a_kept_thin_snapshot(tmp_path: Path, pending: str | None) -> None:
    """Crash states, lvm-thin: a boot's vgchange -ay skips a thin snapshot (activation-skip
    flag), so recover kept it without a device node; it now activates it with -K, as its
    create did -- also when the create was marked pending and had finished."""
    flow, fake = _thin_flow_after_a_reboot(tmp_path, pending)
    before = len(fake.calls)
    flow.recover()
    assert fake.lvs["s1"].active and fake.lvs["lv"].active
    assert ["lvchange", "-ay", "-K", "vg/s1"] in fake.calls[before:]
    (record,) = flow.state.load().snapshots
    assert "pending" not in record.details
    calls = len(fake.calls)
    flow.recover()  # idempotent: an active snapshot is not activated again
    assert ["lvchange", "-ay", "-K", "vg/s1"] not in fake.calls[calls:]


def test_negative_control_a_boots_activation_alone_leaves_a_thin_snapshot_inactive(
    tmp_path: Path,
) -> None:
    """What recover did before: vgchange -ay only. The snapshot stays without a node."""
    _, fake = _thin_flow_after_a_reboot(tmp_path)
    fake.run(["vgchange", "-ay", "vg"])
    assert fake.lvs["lv"].active and not fake.lvs["s1"].active


def test_recover_leaves_a_thin_snapshot_whose_discard_was_under_way(tmp_path: Path) -> None:
    """A discard mark: the snapshot is going; recover removes it without activating it."""
    flow, fake = _thin_flow_after_a_reboot(tmp_path, "discard")
    before = len(fake.calls)
    flow.recover()
    assert ["lvchange", "-ay", "-K", "vg/s1"] not in fake.calls[before:]
    assert "s1" not in fake.lvs and flow.state.load().snapshots == ()


def test_recover_activates_a_thin_snapshot_whose_merge_never_reached_lvm(tmp_path: Path) -> None:
    """A power cut after the merge mark was saved and before lvconvert ran: the snapshot is
    kept (the merge had not started), so it must be usable too, not only unmarked."""
    flow, fake = _thin_flow_after_a_reboot(tmp_path, "merge")
    before = len(fake.calls)
    flow.recover()
    (record,) = flow.state.load().snapshots
    assert "pending" not in record.details and fake.lvs["s1"].active
    assert ["lvchange", "-ay", "-K", "vg/s1"] in fake.calls[before:]


@pytest.mark.parametrize("in_pool", [False, True])
def test_recover_undoes_a_thin_create_the_pool_never_committed(
    tmp_path: Path, in_pool: bool
) -> None:
    """Crash states, lvm-thin, a FUA point inside create: LVM's metadata names the snapshot
    but the pool's metadata never committed its thin device, so no activation can succeed.
    recover undoes the create (the snapshot is cleanly absent) instead of keeping a record
    nothing can use. The negative control: a snapshot the pool holds is kept and active."""
    flow, fake = _thin_flow_after_a_reboot(tmp_path, "create")
    fake.lvs["s1"].in_pool = in_pool
    flow.recover()
    if in_pool:
        assert fake.lvs["s1"].active and len(flow.state.load().snapshots) == 1
    else:
        assert "s1" not in fake.lvs and flow.state.load().snapshots == ()
        assert ["lvremove", "-f", "-y", "vg/s1"] in fake.calls
