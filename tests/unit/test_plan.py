"""apply(): a failure at any step, or a signal, leaves the system exactly as it was."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapkit.dm.control import resume_unchanged
from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.table import DevNum, Linear, Snapshot, SnapshotOrigin, Store, Table
from snapkit.errors import CommandError
from snapkit.plan import Interrupted, Plan, PlanError, PlanTimeout, Step, apply
from snapkit.run import Completed
from tests.unit.fakes import FakeExecutor, RunOptions, completed

ORIGIN_TABLE = Table.single(2048, Linear(DevNum(7, 0), 0))


class FakeLosetup(FakeExecutor):
    """An Executor that understands `losetup --show -f FILE` and `losetup -d DEV`."""

    def __init__(self, dm: FakeDm, faults: Faults) -> None:
        self.dm, self.faults = dm, faults
        self.attached: dict[str, str] = {}

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        if self.faults.should_fail(" ".join(args)):
            raise CommandError(args, 1, "losetup: injected failure")
        if args[:3] == ["losetup", "--show", "-f"]:
            minor = 1 + len(self.attached)
            dev = f"/dev/loop{minor}"
            self.attached[dev] = args[3]
            self.dm.add_block_device(dev, DevNum(7, minor))
            return completed(args, dev + "\n")
        if args[:2] == ["losetup", "-d"]:
            del self.attached[args[2]]
            del self.dm.block_devices[args[2]]
            return completed(args)
        raise AssertionError(f"unexpected command {args}")


@dataclass
class World:
    dm: FakeDm
    loop: FakeLosetup
    faults: Faults
    dir: Path

    def snapshot(self) -> object:
        files = sorted(p.name for p in self.dir.iterdir())
        return (self.dm.state(), dict(self.dm.block_devices), dict(self.loop.attached), files)


def make_world(tmp_path: Path, fail_at: int | None = None) -> World:
    faults = Faults(fail_at)
    dm = FakeDm(faults=faults)
    dm.add_block_device("/dev/loop0", DevNum(7, 0))
    world = World(dm, FakeLosetup(dm, faults), faults, tmp_path)
    saved, faults.fail_at = faults.fail_at, None  # the setup itself never fails
    dm.create("data")
    dm.load("data", ORIGIN_TABLE)
    dm.resume("data")
    dm.open("data")  # mounted
    faults.fail_at, faults.calls = saved, []
    return world


def dm_snapshot_plan(w: World) -> Plan:
    """What ``lvcreate -s`` builds (snapkit.methods.dm.snapshot: "the LVM way"), as a dm method
    would build it."""
    dm, cow = w.dm, w.dir / "data.cow"
    loop: dict[str, str] = {}

    def make_cow() -> None:
        if w.faults.should_fail("create cow file"):
            raise OSError("injected")
        cow.write_bytes(b"\0" * 4096)

    def attach() -> None:
        loop["dev"] = w.loop.run(["losetup", "--show", "-f", str(cow)]).stdout.strip()

    def real_dev() -> DevNum:
        info = dm.info("data-real")
        assert info is not None
        return info.dev

    return Plan(
        "snapshot data as data-snap",
        (
            Step("create COW file", make_cow, cow.unlink, "delete COW file"),
            Step(
                "attach COW loop",
                attach,
                lambda: w.loop.run(["losetup", "-d", loop["dev"]]),
                "detach COW loop",
            ),
            Step(
                "create data-real",
                lambda: dm.create("data-real"),
                lambda: dm.remove("data-real"),
                "remove data-real",
            ),
            Step("load data-real", lambda: dm.load("data-real", ORIGIN_TABLE)),
            Step("resume data-real", lambda: dm.resume("data-real")),
            Step(
                "create data-snap",
                lambda: dm.create("data-snap"),
                lambda: dm.remove("data-snap"),
                "remove data-snap",
            ),
            Step(
                "load data-snap",
                lambda: dm.load(
                    "data-snap",
                    Table.single(2048, Snapshot(real_dev(), loop["dev"], Store.PERSISTENT, 8)),
                ),
            ),
            Step(
                "load snapshot-origin into data",
                lambda: dm.load("data", Table.single(2048, SnapshotOrigin(real_dev()))),
                lambda: dm.clear("data"),
                "clear data's inactive table",
            ),
            Step(
                "suspend data",
                lambda: dm.suspend("data"),
                lambda: resume_unchanged(dm, "data"),
                "resume data unchanged",
                must_undo=True,
            ),
            Step("resume data-snap", lambda: dm.resume("data-snap")),
            Step(
                "resume data",
                lambda: dm.resume("data"),
                lambda: (dm.load("data", ORIGIN_TABLE), dm.resume("data")),
                "reload data's original table",
                must_undo=True,
            ),
        ),
    )


SIDE_EFFECTS = 11  # one faultable call per step of the plan


def test_every_side_effect_is_counted(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    apply(dm_snapshot_plan(w))
    assert len(w.faults.calls) == SIDE_EFFECTS


def test_the_plan_succeeds(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    applied = apply(dm_snapshot_plan(w))
    assert len(applied.timings) == 11
    state = w.dm.state()
    assert isinstance(state["data"].active.lines[0].target, SnapshotOrigin)  # type: ignore[union-attr]
    assert not state["data"].suspended and not state["data-snap"].suspended
    assert state["data-real"].open_count == 2  # held by the origin and the snapshot
    assert w.loop.attached == {"/dev/loop1": str(tmp_path / "data.cow")}


@pytest.mark.parametrize("fail_at", range(SIDE_EFFECTS))
def test_failure_at_every_call_restores_everything(tmp_path: Path, fail_at: int) -> None:
    w = make_world(tmp_path, fail_at)
    before = w.snapshot()
    with pytest.raises(PlanError) as info:
        apply(dm_snapshot_plan(w))
    assert w.snapshot() == before
    assert info.value.undo_failures == () and info.value.skipped == ()
    assert "everything done before it was undone" in str(info.value)


def test_a_failed_undo_stops_ordinary_undos_but_not_must_run_ones(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    plan = dm_snapshot_plan(w)
    steps = list(plan.steps)
    steps.append(Step("boom", lambda: (_ for _ in ()).throw(RuntimeError("boom"))))
    resumed = []
    broken_remove = Step(
        "create data-snap",
        steps[5].do,
        lambda: (_ for _ in ()).throw(RuntimeError("EBUSY")),
        "remove data-snap",
    )
    steps[5] = broken_remove
    real_undo = steps[8].undo
    assert real_undo is not None

    def counted_resume() -> None:
        resumed.append(1)
        real_undo()

    steps[8] = Step("suspend data", steps[8].do, counted_resume, must_undo=True)
    with pytest.raises(PlanError) as info:
        apply(Plan("p", tuple(steps)))
    err = info.value
    assert [d for d, _ in err.undo_failures] == ["create data-snap"]
    assert err.skipped == ("create data-real", "attach COW loop", "create COW file")
    assert resumed == [1] and not w.dm.state()["data"].suspended
    assert "rollback incomplete" in str(err) and "remove data-snap" not in err.skipped


def test_must_undo_runs_for_the_step_under_way(tmp_path: Path) -> None:
    undone = []

    def suspend_then_fail() -> None:
        raise OSError("ioctl interrupted mid-way")

    plan = Plan(
        "p", (Step("suspend", suspend_then_fail, lambda: undone.append("resume"), must_undo=True),)
    )
    with pytest.raises(PlanError):
        apply(plan)
    assert undone == ["resume"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_plan_rolls_back(tmp_path: Path, signum: int) -> None:
    w = make_world(tmp_path)
    before = w.snapshot()
    steps = list(dm_snapshot_plan(w).steps)
    steps.insert(9, Step("signal", lambda: os.kill(os.getpid(), signum)))
    handler_before = signal.getsignal(signum)
    with pytest.raises(PlanError) as info:
        apply(Plan("p", tuple(steps)))
    assert isinstance(info.value.cause, Interrupted)
    assert info.value.exit_code == 128 + signum
    assert str(info.value).count("undone") == 1, str(info.value)  # one line, said once
    assert w.snapshot() == before
    assert signal.getsignal(signum) is handler_before


def test_signals_during_rollback_are_deferred(tmp_path: Path) -> None:
    done = []

    def undo_b() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        done.append("b")

    plan = Plan(
        "p",
        (
            Step("a", lambda: None, lambda: done.append("a")),
            Step("b", lambda: None, undo_b),
            Step("c", lambda: (_ for _ in ()).throw(RuntimeError("c failed"))),
        ),
    )
    with pytest.raises(PlanError):
        apply(plan)
    assert done == ["b", "a"]


def test_timeout_rolls_back(tmp_path: Path) -> None:
    undone = []
    plan = Plan(
        "p",
        (Step("a", lambda: None, lambda: undone.append("a")), Step("slow", lambda: time.sleep(5))),
    )
    start = time.monotonic()
    with pytest.raises(PlanError) as info:
        apply(plan, timeout=0.2)
    assert time.monotonic() - start < 2
    assert isinstance(info.value.cause, PlanTimeout) and undone == ["a"]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_keyboard_interrupt_from_a_step_rolls_back() -> None:
    undone = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    plan = Plan("p", (Step("a", lambda: None, lambda: undone.append("a")), Step("b", interrupt)))
    with pytest.raises(PlanError) as info:
        apply(plan)
    assert undone == ["a"] and info.value.exit_code == 130


def test_dry_run_renders_the_exact_steps(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    text = dm_snapshot_plan(w).render()
    assert text.splitlines()[:4] == [
        "snapshot data as data-snap:",
        "  1. create COW file",
        "       undo: delete COW file",
        "  2. attach COW loop",
    ]
    assert "  9. suspend data\n       undo (always): resume data unchanged\n" in text
    assert [ln.split(". ", 1)[1] for ln in text.splitlines() if ". " in ln[:5]] == [
        s.description for s in dm_snapshot_plan(w).steps
    ]
    assert w.faults.calls == []  # rendering does nothing
