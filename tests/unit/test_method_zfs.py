"""The zfs method against a fake pool (``FakeZfs``): create, status, merge (refused across later
snapshots unless forced), discard, mount and umount through the flow, names that could inject,
and ``recover`` of every verb a crash cut short."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.table import DevNum
from snapkit.errors import RefusedError, UsageError, ValidationError
from snapkit.flow import Flow
from snapkit.host import target as target_mod
from snapkit.host.target import Mount
from snapkit.methods.auto import AutoMethod
from snapkit.methods.zfs import snapshot as zfs_snapshot
from snapkit.methods.zfs.snapshot import ZfsMethod
from snapkit.model import CreateRequest, Pending, SnapshotRecord, State, Target
from snapkit.plan import PlanError, apply
from snapkit.recover import Recovery
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import FakeZfs

MP = Path("/mnt/z")
TARGET = Target(Path("tank/fs"), MP, "zfs", (0, 55))
USER_MOUNT = Mount(40, DevNum(0, 55), "/", MP, "zfs", "tank/fs", "rw")


@pytest.fixture
def mounted(monkeypatch: pytest.MonkeyPatch) -> list[Mount]:
    """The kernel's mount table as the method reads it (the dataset's own mount only)."""
    table = [USER_MOUNT]
    monkeypatch.setattr(zfs_snapshot, "mounts", lambda: tuple(table))
    return table


def method(fake: FakeZfs) -> ZfsMethod:
    return ZfsMethod(SimpleNamespace(run=fake))  # type: ignore[arg-type]


def created(fake: FakeZfs, name: str = "s1") -> SnapshotRecord:
    plan, record = method(fake).plan_create(CreateRequest(TARGET, name))
    apply(plan)
    return record


def flow_on(fake: FakeZfs, tmp_path: Path, table: list[Mount]) -> Flow:
    flow = Flow(
        SimpleNamespace(run=fake, dm=FakeDm(faults=Faults())),  # type: ignore[arg-type]
        settings=Settings.under(tmp_path / "state"),
    )
    flow.mount_table = lambda: tuple(table)  # type: ignore[method-assign]
    return flow


# --- create ----------------------------------------------------------------------------------


def test_create_takes_a_zfs_snapshot_and_records_how_to_mount_it(mounted: list[Mount]) -> None:
    fake = FakeZfs()
    plan, record = method(fake).plan_create(CreateRequest(TARGET, "s1"))
    assert [s.description for s in plan.steps] == ["zfs snapshot tank/fs@s1"]
    assert fake.snaps == {}  # planning changes nothing
    apply(plan)
    assert fake.snaps["tank/fs@s1"][1] == "live"
    assert (record.method, record.origin, record.device) == ("zfs", "tank/fs", "tank/fs@s1")
    assert record.details["fstype"] == "zfs" and record.details["mount_options"] == "ro"


def test_a_failed_create_leaves_the_pool_as_it_was() -> None:
    fake = FakeZfs(Faults(0))
    before = fake.state()
    plan, _ = method(fake).plan_create(CreateRequest(TARGET, "s1"))
    with pytest.raises(PlanError):
        apply(plan)
    assert fake.state() == before


def test_a_name_in_use_is_refused_before_anything_changes() -> None:
    fake = FakeZfs()
    created(fake)
    before = fake.state()
    with pytest.raises(RefusedError, match="in use on tank/fs") as err:
        method(fake).plan_create(CreateRequest(TARGET, "s1"))
    assert "choose another --name" in (err.value.hint or "")
    assert fake.state() == before


def test_a_missing_dataset_is_refused() -> None:
    gone = Target(Path("tank/nope"), MP, "zfs", (0, 55))
    with pytest.raises(RefusedError, match="tank/nope does not exist"):
        method(FakeZfs()).plan_create(CreateRequest(gone, "s1"))


@pytest.mark.parametrize(
    ("dataset", "name"),
    [
        ("-o", "s1"),  # an option
        ("tank/-R", "s1"),
        ("tank/fs@x", "s1"),  # a snapshot in the dataset's place
        ("tank fs", "s1"),
        ("tank/../fs", "s1"),
        ("1tank", "s1"),  # a pool name starts with a letter
        ("tank/fs", "a+b"),  # dm takes '+', ZFS does not
        ("tank/fs", "a@b"),
        ("tank/fs", "-r"),
    ],
)
def test_names_that_could_inject_are_refused(dataset: str, name: str) -> None:
    fake = FakeZfs()
    with pytest.raises(ValidationError):
        method(fake).plan_create(CreateRequest(Target(Path(dataset), MP, "zfs", (0, 55)), name))
    assert fake.calls == []  # refused before any command


def test_a_non_zfs_mount_is_unsuitable_and_auto_takes_zfs_for_a_zfs_one() -> None:
    fake = FakeZfs()
    ext4 = Target(Path("/dev/vdb"), Path("/mnt/e"), "ext4", (254, 16))
    assert "holds ext4, not a ZFS dataset" in (method(fake).unsuitable(ext4) or "")
    chosen, why = AutoMethod(SimpleNamespace(run=fake)).choose(TARGET)  # type: ignore[arg-type]
    assert chosen.name == "zfs" and "ZFS" in why


# --- status ----------------------------------------------------------------------------------


def test_status_reports_used_and_referenced_and_a_gone_snapshot() -> None:
    fake = FakeZfs()
    record = created(fake)
    status = method(fake).status(record)
    assert status.state is State.ACTIVE
    assert (status.used_bytes, status.referenced_bytes) == (4 * 4096, 4 * 8192)
    del fake.snaps["tank/fs@s1"]
    gone = method(fake).status(record)
    assert gone.state is State.INVALID and "discard s1" in gone.message
    fake.pools.clear()
    assert "not imported" in method(fake).status(record).message


# --- merge -----------------------------------------------------------------------------------


def test_merge_rolls_back_and_the_snapshot_is_gone(mounted: list[Mount]) -> None:
    fake = FakeZfs()
    record = created(fake)
    fake.content["tank/fs"] = "changed"
    plan = method(fake).plan_merge(record)
    assert [s.description for s in plan.steps] == [
        "zfs rollback tank/fs@s1",
        "zfs destroy tank/fs@s1",
    ]
    apply(plan)
    assert fake.content["tank/fs"] == "live" and fake.snaps == {}


def test_merge_across_later_snapshots_is_refused_unless_forced(mounted: list[Mount]) -> None:
    fake = FakeZfs()
    record = created(fake)
    created(fake, "s2")
    created(fake, "s3")
    fake.content["tank/fs"] = "changed"
    before = fake.state()
    with pytest.raises(RefusedError, match=r"destroy the 2 later snapshot\(s\) s2, s3") as err:
        method(fake).plan_merge(record)
    assert "--force" in (err.value.hint or "")
    assert fake.state() == before
    plan = method(fake).plan_forced_merge(record)
    assert plan.steps[0].description == "zfs rollback -r tank/fs@s1"
    apply(plan)
    assert fake.content["tank/fs"] == "live" and fake.snaps == {}


def test_merge_and_discard_are_refused_while_the_snapshot_is_mounted(
    mounted: list[Mount],
) -> None:
    fake = FakeZfs()
    record = created(fake)
    mounted.append(Mount(41, DevNum(0, 56), "/", Path("/mnt/s"), "zfs", "tank/fs@s1", "ro"))
    for plan in (method(fake).plan_merge, method(fake).plan_discard):
        with pytest.raises(RefusedError, match="mounted at /mnt/s") as err:
            plan(record)
        assert "umount s1" in (err.value.hint or "")
    assert method(fake).plan_discard(record, force=True).steps  # force tries anyway


def test_a_merge_whose_destroy_fails_says_it_is_rolled_back(mounted: list[Mount]) -> None:
    fake = FakeZfs(Faults())
    record = created(fake)
    fake.content["tank/fs"] = "changed"
    fake.faults = Faults(1)  # the rollback goes through, the destroy fails
    with pytest.raises(PlanError) as err:
        apply(method(fake).plan_merge(record))
    assert "rolled back to s1" in str(err.value.undo_failures)
    assert fake.content["tank/fs"] == "live"
    apply(method(fake).plan_merge(record))  # run again: finishes
    assert fake.snaps == {}


def test_discard_destroys_and_can_be_run_again(mounted: list[Mount]) -> None:
    fake = FakeZfs()
    record = created(fake)
    apply(method(fake).plan_discard(record))
    assert fake.snaps == {} and fake.content["tank/fs"] == "live"
    apply(method(fake).plan_discard(record))  # nothing left to destroy: no error


# --- through the flow ------------------------------------------------------------------------


def test_the_flow_dry_run_create_shows_the_command_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounted: list[Mount]
) -> None:
    fake = FakeZfs()
    monkeypatch.setattr("snapkit.flow.resolve", lambda spec: TARGET)
    flow = flow_on(fake, tmp_path, mounted)
    text = flow.create(str(MP), name="s1", method="zfs", dry_run=True)
    assert isinstance(text, str) and "zfs snapshot tank/fs@s1" in text
    assert fake.snaps == {} and flow.load().snapshots == ()


def test_the_flow_creates_mounts_umounts_merges_with_force_and_refuses_force_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounted: list[Mount]
) -> None:
    fake = FakeZfs()
    monkeypatch.setattr("snapkit.flow.resolve", lambda spec: TARGET)
    flow = flow_on(fake, tmp_path, mounted)
    flow.create(str(MP), name="s1", method="auto")
    assert flow.record("s1").method == "zfs"
    flow.create(str(MP), name="s2", method="zfs")
    (tmp_path / "m").mkdir()
    mounts_run: list[list[str]] = []
    real = fake.answer

    def answer(args: list[str], opts: Any) -> Any:
        if args[0] in ("mount", "umount"):
            mounts_run.append(args)
            if args[0] == "mount":
                mounted.append(Mount(42, DevNum(0, 57), "/", tmp_path / "m", "zfs", args[-2], "ro"))
            return real(["zpool", "list", "tank"], opts)  # any success
        return real(args, opts)

    fake.answer = answer  # type: ignore[method-assign]
    flow.mount("s1", tmp_path / "m")
    assert mounts_run[-1] == ["mount", "-t", "zfs", "-o", "ro", "tank/fs@s1", str(tmp_path / "m")]
    with pytest.raises(RefusedError, match="read-only"):
        flow.mount("s1", tmp_path / "m", rw=True)
    done = flow.umount("s1")
    assert done.mountpoints == (tmp_path / "m",)
    mounted.pop()
    with pytest.raises(RefusedError, match="later snapshot"):
        flow.merge("s1")
    assert flow.record("s1").pending is None  # the refusal left no mark
    fake.content["tank/fs"] = "changed"
    flow.merge("s1", force=True)
    assert fake.content["tank/fs"] == "live" and fake.snaps == {}
    assert flow.load().snapshot("s1") is None
    assert flow.status("s2").state is State.INVALID  # destroyed by the -r rollback
    flow.discard("s2")  # forgets it
    assert flow.load().snapshots == ()
    dm_record = SnapshotRecord("d1", "dm", "/dev/vdb", "/dev/mapper/d1", 0.0)
    flow.state.save(flow.load().with_snapshot(dm_record))
    with pytest.raises(UsageError, match="nothing to force"):
        flow.merge("d1", force=True)


# --- recover ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "snapshot_there", "content", "left"),
    [
        (Pending.CREATE, True, "changed", "changed"),  # made gone: the origin keeps its writes
        (Pending.CREATE, False, "changed", "changed"),
        (Pending.MERGE, True, "changed", "live"),  # finished: rolled back
        (Pending.MERGE, False, "live", "live"),  # the merge had finished
        (Pending.DISCARD, True, "changed", "changed"),
        (Pending.DISCARD, False, "changed", "changed"),
        (None, False, "changed", "changed"),  # destroyed by hand: cleanly absent
    ],
)
def test_recover_settles_every_verb_cut_short(
    tmp_path: Path,
    mounted: list[Mount],
    pending: Pending | None,
    snapshot_there: bool,
    content: str,
    left: str,
) -> None:
    fake = FakeZfs()
    record = created(fake)
    if not snapshot_there:
        del fake.snaps["tank/fs@s1"]
    fake.content["tank/fs"] = content
    flow = flow_on(fake, tmp_path, mounted)
    flow.state.save(StateData(snapshots=(record.marked(pending) if pending else record,)))
    result = flow.recover()
    assert isinstance(result, Recovery)
    assert fake.snaps == {} and fake.content["tank/fs"] == left
    assert flow.load().snapshots == () and "s1" in result.dropped
    again = flow.recover()  # idempotent
    assert isinstance(again, Recovery) and not again.actions and not again.dropped


def test_recover_keeps_a_live_snapshot_and_leaves_an_unimported_pool_alone(
    tmp_path: Path, mounted: list[Mount]
) -> None:
    fake = FakeZfs()
    record = created(fake)
    flow = flow_on(fake, tmp_path, mounted)
    flow.state.save(StateData(snapshots=(record,)))
    flow.recover()
    assert flow.load().snapshot("s1") is not None and "tank/fs@s1" in fake.snaps
    fake.pools.clear()
    flow.state.save(StateData(snapshots=(record.marked(Pending.CREATE),)))
    result = flow.recover()
    assert isinstance(result, Recovery) and "not imported" in " ".join(result.actions)
    assert flow.load().snapshot("s1") is not None


# --- target resolution -----------------------------------------------------------------------


def test_a_zfs_mount_resolves_to_its_dataset_and_a_snapshot_mount_is_refused(
    tmp_path: Path,
) -> None:
    mp = tmp_path / "z"
    mp.mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(f"40 1 0:55 / {mp} rw,relatime shared:1 - zfs tank/fs rw,xattr,noacl\n")
    assert target_mod.resolve(str(mp), mountinfo=info) == Target(
        Path("tank/fs"), mp, "zfs", (0, 55)
    )
    info.write_text(f"41 1 0:56 / {mp} ro,relatime - zfs tank/fs@s1 ro\n")
    with pytest.raises(RefusedError, match="is the ZFS snapshot tank/fs@s1"):
        target_mod.resolve(str(mp), mountinfo=info)
