"""Snapshot groups (issue 15) on the fakes: the dm group's one window, all or nothing at every
step, the freeze group's one command, every bad input refused with nothing changed, the
group verbs, and recover making a group cut short gone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from snapkit.dm.fake import Faults
from snapkit.dm.table import DevNum, Linear, Table
from snapkit.errors import RefusedError, SnapkitError
from snapkit.flow import Flow
from snapkit.methods.dm.direct import DmDirectMethod
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.methods.group import create as group_create
from snapkit.methods.lvm.snapshot import LvmMethod
from snapkit.model import CreateRequest, Group, Pending, State, Target
from snapkit.plan import Plan, PlanError, apply
from snapkit.settings import Settings
from snapkit.state import StateFile
from tests.unit.fakes import (
    BASE,
    SIZE,
    FakeLoops,
    FakeLvm,
    Lv,
    World,
    lvm_host,
    lvm_world,
    make_world,
    walk_failures,
)

A = Target(Path("/dev/mapper/data"), Path("/mnt/a"), "ext4", (253, 0))
B = Target(Path("/dev/mapper/data2"), Path("/mnt/b"), "ext4", (253, 1))


def second_origin(world: World) -> None:
    """A second prepared origin, ``data2`` over ``/dev/loop9``, beside make_world's ``data``."""
    faults, world.dm.faults = world.dm.faults, type(world.dm.faults)()
    world.dm.add_block_device("/dev/loop9", DevNum(7, 9))
    world.dm.create("data2", uuid="SNAPKIT-data2-origin")
    world.dm.load("data2", Table.single(SIZE, Linear(DevNum(7, 9), 0)))
    world.dm.resume("data2")
    world.dm.faults = faults


@pytest.fixture(autouse=True)
def _no_cow_dir_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake mount points are not real filesystems; check_cow_dir has its own tests.
    monkeypatch.setattr("snapkit.methods.dm.snapshot.check_cow_dir", lambda *_a: None)
    monkeypatch.setattr("snapkit.methods.dm.direct.check_cow_dir", lambda *_a: None)


def _build(world: World) -> Plan:
    requests = [CreateRequest(t, f"g-{t.mountpoint.name}", cow_dir=world.cow_dir) for t in (A, B)]  # type: ignore[union-attr]
    impl = DmMethod(world.host)
    plan, _records = group_create.plan_block("g", "dm", [(impl, r) for r in requests])
    return plan


def test_every_tables_loaded_then_every_suspend_then_every_resume(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    second_origin(world)
    plan = _build(world)
    kinds = [s.description.split()[1] for s in plan.steps if s.description.startswith("dmsetup")]
    first_suspend = kinds.index("suspend")
    assert kinds[first_suspend : first_suspend + 2] == ["suspend", "suspend"]
    assert "load" not in kinds[first_suspend:] and "create" not in kinds[first_suspend:]
    assert kinds[first_suspend + 2 :] == ["resume"] * 4
    apply(plan)
    for origin, snap in (("data", "g-a"), ("data2", "g-b")):
        table = world.dm.table(origin)
        assert table is not None and table.lines[0].target.type_name == "snapshot-origin"
        info = world.dm.info(snap)
        assert info is not None and not info.suspended


def test_a_failure_at_any_step_of_any_member_leaves_the_world_unchanged(tmp_path: Path) -> None:
    assert walk_failures(tmp_path, second_origin, _build, DmMethod) > 20


def _build_direct(world: World) -> Plan:
    requests = [CreateRequest(t, f"g-{t.mountpoint.name}", cow_dir=world.cow_dir) for t in (A, B)]  # type: ignore[union-attr]
    impl = DmDirectMethod(world.host)
    plan, _records = group_create.plan_block("g", "dm-direct", [(impl, r) for r in requests])
    return plan


def test_dm_direct_group_loads_all_then_suspends_all_then_resumes_all(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    second_origin(world)
    plan = _build_direct(world)
    words = [s.description for s in plan.steps]
    suspends = [i for i, w in enumerate(words) if w.startswith("dmsetup suspend")]
    origin_resumes = [
        i for i, w in enumerate(words) if w in ("dmsetup resume data", "dmsetup resume data2")
    ]
    loads = [i for i, w in enumerate(words) if w.startswith("dmsetup load")]
    assert len(suspends) == len(origin_resumes) == 2
    assert suspends == [suspends[0], suspends[0] + 1] and origin_resumes[0] == suspends[1] + 1
    assert max(loads) < min(suspends)
    assert all(not w.startswith("blockdev") for w in words[suspends[0] : origin_resumes[1]])
    apply(plan)
    for origin in ("data", "data2"):
        table = world.dm.table(origin)
        assert table is not None and table.lines[0].target.type_name == "snapshot"


def test_dm_direct_group_a_failure_anywhere_leaves_the_world_unchanged(tmp_path: Path) -> None:
    assert walk_failures(tmp_path, second_origin, _build_direct, DmDirectMethod) >= 18


# -- through the flow ---------------------------------------------------------------------------


class FakeFreezer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def freeze(self, mountpoint: Path) -> None:
        self.log.append(f"freeze {mountpoint}")

    def thaw(self, mountpoint: Path) -> bool:
        self.log.append(f"thaw {mountpoint}")
        return True


class FakeGuard:
    def __init__(self, log: list[str], mountpoint: Path) -> None:
        self.log, self.mountpoint = log, mountpoint

    def start(self) -> None:
        self.log.append(f"watch {self.mountpoint}")

    def arm(self, deadline: float) -> None:
        self.log.append(f"arm {deadline}")

    def stop(self) -> bool:
        return False

    def abandon(self) -> None:
        self.log.append(f"abandon {self.mountpoint}")


def _flow(world: World, monkeypatch: pytest.MonkeyPatch, targets: dict[str, Target]) -> Flow:
    monkeypatch.setattr("snapkit.flow.resolve", lambda spec: targets[spec])
    log: list[str] = []
    flow = Flow(
        world.host,
        settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir / "locks"),
        mount_table=lambda: (),
        freezer=FakeFreezer(log),
        watchdog=lambda mp, resume=(): FakeGuard(log, mp),
    )
    flow.log = log  # type: ignore[attr-defined]
    flow.load()  # the prepared origins, reconciled into the state file once
    return flow


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = make_world(tmp_path)
    second_origin(world)
    return world


def test_group_create_status_and_discard(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    dry = flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm", dry_run=True)
    assert isinstance(dry, str) and "every origin suspended" in dry
    assert flow.load().groups == ()
    made = flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    assert not isinstance(made, str)
    assert made.state == "active"
    assert [(m.record.name, m.record.details["mountpoint"]) for m in made.members] == [
        ("g-a", "/mnt/a"),
        ("g-b", "/mnt/b"),
    ]
    assert flow.record("g/b").name == "g-b"  # a member by its group's name
    with pytest.raises(RefusedError, match="member of the snapshot group g"):
        flow.discard("g-a")
    gone = flow.discard_group("g")
    assert not isinstance(gone, str) and {m.state for m in gone.members} == {State.MERGED}
    assert flow.load().groups == () and flow.load().snapshots == ()
    assert world.dm.info("g-a") is None and world.dm.info("g-b") is None


def test_group_merge_rolls_every_member_back(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    monkeypatch.setattr("snapkit.methods.dm.snapshot.refuse_if_mounted", lambda *_a: None)
    dry = flow.merge_group("g", dry_run=True)
    assert isinstance(dry, str) and "merge dm snapshot g-a" in dry and "g-b" in dry
    status = flow.merge_group("g", wait=True)  # the fake kernel merges at once
    assert not isinstance(status, str)
    assert [(m.record.name, m.state) for m in status.members] == [
        ("g-a", State.MERGED),
        ("g-b", State.MERGED),
    ]
    for origin in ("data", "data2"):  # each origin back on its own linear table
        table = world.dm.table(origin)
        assert table is not None and table.lines[0].target.type_name == "linear"
    assert flow.load().groups == () and flow.load().snapshots == ()


def test_a_failure_in_the_flow_leaves_no_state(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    before, text = world.state(), flow.state.path.read_text()
    world.faults.fail_at = len(world.faults.calls) + 12
    with pytest.raises(PlanError):
        flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    assert world.state() == before
    assert flow.state.path.read_text() == text


def test_freeze_group_freezes_all_runs_once_thaws_all(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []

    def run(argv: list[str], **kw: object) -> object:
        ran.append(list(argv))
        from tests.unit.fakes import completed

        return completed(argv)

    monkeypatch.setattr(world.run, "run", run)
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    made = flow.create_group(
        ["/mnt/a", "/mnt/b"], name="g", method="freeze", command=("snap", "both")
    )
    assert not isinstance(made, str) and [m.record.method for m in made.members] == ["freeze"] * 2
    log = flow.log  # type: ignore[attr-defined]
    events = [e.split()[0] for e in log]
    assert events == ["watch", "watch", "arm", "freeze", "arm", "freeze", "thaw", "thaw"]
    assert len({e for e in log if e.startswith("arm")}) == 1  # one deadline for both
    assert ran == [["snap", "both"]]


def test_freeze_group_command_failure_thaws_every_member(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(argv: list[str], **kw: object) -> object:
        raise SnapkitError("the snapshot command failed")

    monkeypatch.setattr(world.run, "run", run)
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    with pytest.raises(PlanError):
        flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="freeze", command=("x",))
    log = flow.log  # type: ignore[attr-defined]
    assert {"thaw /mnt/a", "thaw /mnt/b"} <= set(log)
    assert flow.load().groups == ()


# -- lvm: every member frozen, each lvcreate in turn, every member thawed -----------------------

LV_A = Target(Path("/dev/mapper/vg-lv"), Path("/mnt/a"), "ext4", (253, 0))
LV_B = Target(Path("/dev/mapper/vg-lv2"), Path("/mnt/b"), "ext4", (253, 1))


class CountingFreezer(FakeFreezer):
    """A freezer whose freezes are side effects the fault walk can fail."""

    def __init__(self, log: list[str], faults: Faults) -> None:
        super().__init__(log)
        self.faults = faults

    def freeze(self, mountpoint: Path) -> None:
        if self.faults.should_fail(f"freeze {mountpoint}"):
            raise SnapkitError(f"injected failure freezing {mountpoint}")
        super().freeze(mountpoint)


def _lvm_plan(fake: FakeLvm, log: list[str]) -> Plan:
    requests = [CreateRequest(t, f"g-{t.mountpoint.name}") for t in (LV_A, LV_B)]  # type: ignore[union-attr]
    impl = LvmMethod(lvm_host(fake))
    plan, _ = group_create.plan_frozen(
        "g",
        "lvm",
        [(impl, r) for r in requests],
        10.0,
        freezer=CountingFreezer(log, fake.faults),
        watchdog=lambda mp, resume=(): FakeGuard(log, mp),
    )
    return plan


def _two_lvs(fail_at: int | None = None) -> FakeLvm:
    fake = lvm_world(fail_at=fail_at)
    fake.lvs["lv2"] = Lv("lv2", is_open=True)
    return fake


def test_lvm_group_freezes_all_then_each_origin_held_for_its_lvcreate_then_thaws_all() -> None:
    fake, log = _two_lvs(), []
    plan = _lvm_plan(fake, log)
    words = [s.description.split(" (")[0] for s in plan.steps]
    freezes = [i for i, w in enumerate(words) if w.startswith("freeze")]
    creates = [i for i, w in enumerate(words) if w.startswith("lvcreate")]
    thaws = [i for i, w in enumerate(words) if w.startswith("thaw")]
    assert len(freezes) == len(creates) == len(thaws) == 2
    assert max(freezes) < min(creates) and max(creates) < min(thaws)
    for create in creates:  # each lvcreate finds its origin suspended without lockfs
        assert words[create - 1].startswith("dmsetup suspend --nolockfs")
    apply(plan)
    assert {"g-a", "g-b"} <= set(fake.lvs) and not fake.suspended
    assert [e.split()[0] for e in log].count("thaw") == 2


def test_lvm_group_a_failure_anywhere_undoes_every_member_and_thaws_all() -> None:
    before = _two_lvs().state()
    for n in range(100):
        fake, log = _two_lvs(fail_at=n), []
        try:
            apply(_lvm_plan(fake, log))
        except PlanError:
            assert fake.state() == before, f"failure at side effect {n} left a change"
            frozen = {e.split()[1] for e in log if e.startswith("freeze")}
            thawed = {e.split()[1] for e in log if e.startswith("thaw")}
            assert frozen <= thawed, f"failure at side effect {n} left {frozen - thawed} frozen"
            continue
        assert n == 6, "the walk failed each side effect: 2 freezes, 2 suspends, 2 lvcreates"
        return
    raise AssertionError("the plan never succeeded")


def test_lvm_group_through_the_flow(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _two_lvs()
    world.host = replace(world.host, run=fake)
    flow = _flow(world, monkeypatch, {"/mnt/a": LV_A, "/mnt/b": LV_B})
    made = flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="lvm")
    assert not isinstance(made, str)
    assert [m.record.method for m in made.members] == ["lvm", "lvm"]
    assert {"g-a", "g-b"} <= set(fake.lvs) and not fake.suspended


# -- bad inputs: refused, nothing changed -------------------------------------------------------

UNMOUNTED = Target(Path("/dev/mapper/data2"), None, None, (253, 1))
PLAIN = Target(Path("/dev/sdz"), Path("/mnt/z"), "ext4", (8, 0))
BTRFS_A = Target(Path("/dev/sdx"), Path("/mnt/x"), "btrfs", (8, 16))
BTRFS_B = Target(Path("/dev/sdy"), Path("/mnt/y"), "btrfs", (8, 32))


@pytest.mark.parametrize(
    ("specs", "method", "words"),
    [
        (["/mnt/a", "/mnt/a"], "dm", "given twice"),
        (["/mnt/a", "/dev/mapper/data2"], "dm", "is not mounted"),
        (["/mnt/a", "/mnt/z"], "auto", "mixed methods"),
        (["/mnt/x", "/mnt/y"], "auto", "btrfs cannot snapshot several"),
        (["/mnt/x", "/mnt/y"], "btrfs", "btrfs cannot snapshot several"),
        (["/mnt/a", "/mnt/b"], "lvm", "method lvm cannot snapshot /mnt/a"),
        (["/mnt/a", "/mnt/b"], "lvm-thin", "lvm-thin cannot take a group"),
        (["/mnt/a", "/mnt/b"], "remount-ro", "does not take a group"),
        (["/mnt/a", "/mnt/z"], "dm", "method dm cannot snapshot /mnt/z"),
    ],
)
def test_bad_inputs_are_refused_with_nothing_changed(
    world: World, monkeypatch: pytest.MonkeyPatch, specs: list[str], method: str, words: str
) -> None:
    targets = {
        "/mnt/a": A,
        "/mnt/b": B,
        "/dev/mapper/data2": UNMOUNTED,
        "/mnt/z": PLAIN,
        "/mnt/x": BTRFS_A,
        "/mnt/y": BTRFS_B,
    }
    flow = _flow(world, monkeypatch, targets)
    before, text = world.state(), flow.state.path.read_text()
    with pytest.raises(RefusedError, match=words) as caught:
        flow.create_group(specs, name="g", method=method, command=("true",))
    assert caught.value.hint, "a refusal says what to do"
    assert world.state() == before and flow.state.path.read_text() == text


def test_a_name_in_use_and_a_member_of_another_group_are_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    before, text = world.state(), flow.state.path.read_text()
    with pytest.raises(RefusedError, match="already in use"):
        flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    with pytest.raises(RefusedError, match="already a member of the group g"):
        flow.create_group(["/mnt/a", "/mnt/b"], name="h", method="dm")
    assert world.state() == before and flow.state.path.read_text() == text


# -- recover ------------------------------------------------------------------------------------


def test_recover_removes_a_group_cut_short(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan ran (devices made) but the flow died before recording the members: the entry
    still pending, recover makes the group gone -- every member's devices and COW."""
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    before = world.state()
    requests = [
        CreateRequest(t, f"g-{t.mountpoint.name}", cow_dir=flow.context.cow_dir) for t in (A, B)
    ]  # type: ignore[union-attr]
    plan, records = group_create.plan_block(
        "g", "dm", [(DmMethod(world.host), r) for r in requests]
    )
    group = Group("g", "dm", ("g-a", "g-b"), Pending.CREATE, records)
    StateFile(flow.settings.state_dir).save(flow.state.load().with_group(group))
    apply(plan)
    result = flow.recover()
    assert not isinstance(result, str) and "g" in result.dropped
    assert world.state() == before
    assert flow.state.load().groups == () and flow.state.load().snapshots == ()


def test_recover_folds_a_dm_direct_group_cut_short_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dm-direct: once switched, an origin's newest writes live in its COW. A group cut short
    after the switch is made gone the way dm-direct discards (the COW folded back into the
    base), and its members were saved marked ``pending create`` first, as the flow does, so
    no recovery took a COW for a leftover to delete: the origins end linear, the COWs gone."""
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    requests = [
        CreateRequest(t, f"g-{t.mountpoint.name}", cow_dir=flow.context.cow_dir) for t in (A, B)
    ]  # type: ignore[union-attr]
    plan, records = group_create.plan_block(
        "g", "dm-direct", [(DmDirectMethod(world.host), r) for r in requests]
    )
    group = Group("g", "dm-direct", ("g-a", "g-b"), Pending.CREATE, records)
    data = flow.state.load().with_group(group)
    for record in records:
        data = data.with_snapshot(record.marked(Pending.CREATE))
    StateFile(flow.settings.state_dir).save(data)
    apply(plan)
    result = flow.recover()
    assert not isinstance(result, str) and "g" in result.dropped
    for origin in ("data", "data2"):
        table = world.dm.table(origin)
        assert table is not None and table.lines[0].target.type_name == "linear", origin
    assert flow.state.load().groups == () and flow.state.load().snapshots == ()
    assert not list(flow.context.cow_dir.glob("*.cow"))


def _cut_direct_group(world: World, flow: Flow, steps_done: int) -> int:
    """The group's entry and its members saved (``pending create``) as the flow saves them,
    then the first ``steps_done`` steps of the dm-direct group's plan ran, then snapkit died.
    The number of steps in the plan."""
    requests = [
        CreateRequest(t, f"g-{t.mountpoint.name}", cow_dir=flow.context.cow_dir) for t in (A, B)
    ]  # type: ignore[union-attr]
    plan, records = group_create.plan_block(
        "g", "dm-direct", [(DmDirectMethod(world.host), r) for r in requests]
    )
    data = flow.state.load().with_group(
        Group("g", "dm-direct", ("g-a", "g-b"), Pending.CREATE, records)
    )
    for record in records:
        data = data.with_snapshot(record.marked(Pending.CREATE))
    StateFile(flow.settings.state_dir).save(data)
    for step in plan.steps[:steps_done]:
        step.do()
    return len(plan.steps)


def _rebooted(world: World, flow: Flow) -> Flow:
    """Kernel memory gone (tables, loops, read-only flags); the files kept."""
    from snapkit.dm.fake import FakeDm
    from snapkit.methods.base import Host

    dm = FakeDm(faults=Faults())
    dm.add_block_device("/dev/loop0", BASE)
    dm.add_block_device("/dev/loop9", DevNum(7, 9))
    world.run.read_only.clear()
    host = Host(dm=dm, run=world.run, loops=FakeLoops(dm, Faults()), files=world.files)
    return Flow(host, settings=flow.settings, mount_table=lambda: ())


def _found_again(_dev: object, _id: object = None, _ctx: object = None, name: str = "") -> Table:
    """A prepared origin's linear table over its disk, found again after the reboot."""
    return Table.single(SIZE, Linear({"data": BASE, "data2": DevNum(7, 9)}[name], 0))


@pytest.mark.parametrize("reboot", [False, True], ids=["killed", "rebooted"])
def test_recover_settles_a_dm_direct_group_cut_at_any_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reboot: bool
) -> None:
    """Cut the group's create after every step, with or without a reboot: recover exits
    cleanly and the group is gone -- every origin linear again (a member switched before the
    cut folded back into its base first), no member's device, loop or COW left, no record.
    The dm family settles each member's ``pending create`` first (keeps a switched one, drops
    one that never switched), and the group's recovery must take each member from there."""
    probe = make_world(tmp_path / "probe")
    second_origin(probe)
    total = _cut_direct_group(probe, _flow(probe, monkeypatch, {}), 0)
    for n in range(total + 1):
        world = make_world(tmp_path / str(n))
        second_origin(world)
        flow = _flow(world, monkeypatch, {})
        _cut_direct_group(world, flow, n)
        if reboot:
            flow = _rebooted(world, flow)
            monkeypatch.setattr("snapkit.methods.dm.recover._linear_over", _found_again)
        result = flow.recover()
        assert not isinstance(result, str) and "g" in result.dropped, n
        dm = flow.host.dm
        assert set(dm.list_devices()) <= {"data", "data2"}, (n, dm.list_devices())
        for origin in ("data", "data2"):
            table = dm.table(origin)
            assert table is not None and table.lines[0].target.type_name == "linear", (n, origin)
            assert not dm.info(origin).suspended, (n, origin)  # type: ignore[union-attr]
        assert flow.state.load().groups == () and flow.state.load().snapshots == (), n
        assert not [p for p in world.files.files if p.suffix == ".cow"], n
        assert not world.run.read_only, n


def _killed_after(flow: Flow, monkeypatch: pytest.MonkeyPatch, members: int) -> None:
    """snapkit dies once ``members`` members' verbs ran (a KeyboardInterrupt stands in)."""
    real, calls = Flow._end_one, [0]

    def end_one(self: Flow, *args: object, **kw: object) -> object:
        calls[0] += 1
        if calls[0] > members:
            raise KeyboardInterrupt
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Flow, "_end_one", end_one)


@pytest.mark.parametrize("wait", [False, True], ids=["merge", "merge-wait"])
def test_a_group_merge_cut_between_members_is_finished_on_every_member(
    world: World, monkeypatch: pytest.MonkeyPatch, wait: bool
) -> None:
    """The group's verb is saved before its first member's: snapkit killed after one member
    started (or finished) its merge, recover finishes the merge of *every* member -- never
    one origin rolled back and the other not -- and drops the group."""
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    monkeypatch.setattr("snapkit.methods.dm.snapshot.refuse_if_mounted", lambda *_a: None)
    with monkeypatch.context() as m:
        _killed_after(flow, m, 1)
        with pytest.raises(KeyboardInterrupt):
            flow.merge_group("g", wait=wait)
    group = flow.state.load().group("g")
    assert group is not None and group.pending is Pending.MERGE
    result = flow.recover()
    assert not isinstance(result, str) and "g-b" in result.merging
    for origin in ("data", "data2"):
        table = world.dm.table(origin)
        assert table is not None and table.lines[0].target.type_name == "linear", origin
    assert world.dm.info("g-a") is None and world.dm.info("g-b") is None
    assert flow.load().groups == () and flow.load().snapshots == ()


def _group_marked_merging(world: World, monkeypatch: pytest.MonkeyPatch) -> Flow:
    """A dm group ``g`` whose entry says ``pending merge``, as ``_end_group`` saves it before
    any member's verb; no member begun yet."""
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    monkeypatch.setattr("snapkit.methods.dm.snapshot.refuse_if_mounted", lambda *_a: None)
    group = flow.state.load().group("g")
    assert group is not None
    flow.state.save(flow.state.load().with_group(replace(group, pending=Pending.MERGE)))
    return flow


def test_a_group_merge_cut_while_the_first_member_merges_is_finished_on_every_member(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut the crash states of a dm group found: the group marked, the first member's
    kernel merge started (its record marked too), the second not begun. The dm family resumes
    the first member's merge and the group's recovery names it again with the second: each is
    finished once (recover exited 1 on the second finish of the first: 'no snapshot named')."""
    flow = _group_marked_merging(world, monkeypatch)
    impl, first = DmMethod(world.host), flow.record("g-a")
    flow._start(impl, first, impl.plan_merge(first), Pending.MERGE)
    result = flow.recover()
    assert not isinstance(result, str)
    for origin in ("data", "data2"):
        table = world.dm.table(origin)
        assert table is not None and table.lines[0].target.type_name == "linear", origin
    assert flow.load().groups == () and flow.load().snapshots == ()


def test_a_group_merge_left_merging_is_finished_by_merge_wait(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group left marked ``pending merge`` (``merge G`` without --wait, the kernel still
    merging) shows its status; ``merge G --wait`` finishes it (the mark is its own verb's),
    while ``discard G`` is refused until then."""
    flow = _group_marked_merging(world, monkeypatch)
    assert flow.group_status("g").group.pending is Pending.MERGE
    with pytest.raises(RefusedError, match="a merge of group g is under way"):
        flow.discard_group("g")
    status = flow.merge_group("g", wait=True)
    assert not isinstance(status, str) and {m.state for m in status.members} == {State.MERGED}
    assert flow.load().groups == () and flow.load().snapshots == ()


def test_a_group_verb_that_fails_before_any_member_began_is_undone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="dm")
    with monkeypatch.context() as m:
        _killed_after(flow, m, 0)
        with pytest.raises(KeyboardInterrupt):
            flow.discard_group("g")
    group = flow.state.load().group("g")
    assert group is not None and group.pending is None
    assert flow.discard_group("g") and flow.load().groups == ()


# -- the API and the CLI's JSON -----------------------------------------------------------------


def test_api_create_takes_a_list_and_status_json_lists_the_members(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snapkit
    from snapkit.cli.snapshot import group_json

    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    with snapkit.create(["/mnt/a", "/mnt/b"], name="g", method="dm", flow=flow) as group:
        assert isinstance(group, snapkit.SnapshotGroup)
        shown = group_json(group.status())
        assert shown["state"] == "active" and shown["group"] is True
        assert [(m["origin"], m["mountpoint"], m["device"]) for m in shown["members"]] == [
            ("/dev/mapper/data", "/mnt/a", "/dev/mapper/g-a"),
            ("/dev/mapper/data2", "/mnt/b", "/dev/mapper/g-b"),
        ]
        again = snapkit.group("g", flow=flow)
        assert again is not None and again.last_status is not None
        assert snapkit.group("g-a", flow=flow) is None  # a member is not a group
    assert flow.load().groups == ()  # the with block discarded the group it made
    assert world.dm.info("g-a") is None


@pytest.mark.parametrize("method", ["dm", "dm-direct"])
def test_a_dm_group_window_has_one_watchdog_per_member_under_one_deadline(
    world: World, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Issue 15/17: a SIGKILL of snapkit while a group's origins are suspended must not leave
    them so: each member's watchdog (snapkit.methods.dm.window) is started before the first
    suspend, all armed with one deadline, stopped after the last resume."""
    from tests.unit.test_dm_window import Dog

    log: list[str] = []
    world.host = replace(world.host, resume_watchdog=lambda names: Dog(log, names))
    flow = _flow(world, monkeypatch, {"/mnt/a": A, "/mnt/b": B})
    dry = flow.create_group(["/mnt/a", "/mnt/b"], name="g", method=method, dry_run=True)
    assert isinstance(dry, str)
    said = [line.split(". ", 1)[-1] for line in dry.splitlines() if ". " in line]
    first_suspend = next(i for i, d in enumerate(said) if d.startswith("dmsetup suspend"))
    assert said[first_suspend - 1].startswith("arm the watchdogs: ")
    assert sum(d.startswith("start the watchdog") for d in said) == 2
    assert any(d == "stop the watchdogs" for d in said[first_suspend:])
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method=method)
    names = {
        "dm": ["start g-a,data", "start g-b,data2"],
        "dm-direct": ["start data", "start data2"],
    }
    assert log == [*names[method], "arm", "arm", "stop", "stop"]


def test_an_lvm_group_merge_cut_between_members_is_finished_on_every_member(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lvm: the recovery of LVM clears the mark of a merge LVM never started, so only the
    group's own mark can say that the second member must merge too."""
    fake = _two_lvs()
    world.host = replace(world.host, run=fake)
    flow = _flow(world, monkeypatch, {"/mnt/a": LV_A, "/mnt/b": LV_B})
    flow.create_group(["/mnt/a", "/mnt/b"], name="g", method="lvm")
    for lv in fake.lvs.values():  # unmounted, as a merge wants: LVM merges at once
        lv.is_open = False
    with monkeypatch.context() as m:
        _killed_after(flow, m, 1)
        with pytest.raises(KeyboardInterrupt):
            flow.merge_group("g", wait=True)
    assert "g-a" not in fake.lvs and "g-b" in fake.lvs  # the cut: a merged, b not
    monkeypatch.setattr(  # the boot's activation, which the fake does not play
        "snapkit.methods.lvm.recover.LvmRecovery.activate", lambda _self, _data: None
    )
    result = flow.recover()
    assert not isinstance(result, str)
    assert "g-a" not in fake.lvs and "g-b" not in fake.lvs, fake.lvs
    assert flow.load().groups == () and flow.load().snapshots == ()
