"""The btrfs plans against a fake btrfs: a failure at every step of create and discard leaves
the subvolumes and mounts as they were; merge never loses the origin.

The fake keeps the filesystem as ``{subvolume path: content}`` and materialises the top level
as real directories under the private mount point while it is "mounted", so the plan's own
``os.path.lexists`` checks see what the kernel would show. The empty ``/.snapkit`` directory a
create leaves behind is shared by every snapshot and is not counted as a change.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.table import DevNum
from snapkit.errors import CommandError, RefusedError
from snapkit.flow import Flow
from snapkit.host.target import Mount
from snapkit.lock import origin_lock
from snapkit.methods.btrfs import merge as btrfs_merge
from snapkit.methods.btrfs import recover as recover_btrfs
from snapkit.methods.btrfs import snapshot as btrfs
from snapkit.methods.btrfs.snapshot import BtrfsMethod
from snapkit.model import CreateRequest, SnapshotRecord, State, Target
from snapkit.plan import PlanError, apply
from snapkit.recover import Recovery
from snapkit.run import Completed
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import FakeExecutor, RunOptions, completed

DEV = "/dev/vdb"


@dataclass
class FakeBtrfs(FakeExecutor):
    """One btrfs filesystem on DEV: subvolumes by path from the top level, and the private
    top-level mounts snapkit makes (the user's mounts are given to the test separately)."""

    faults: Faults
    subvols: dict[str, str] = field(default_factory=lambda: {"data": "live"})
    tops: set[Path] = field(default_factory=set)
    dirs: set[Path] = field(default_factory=set)
    user: dict[Path, str] = field(default_factory=dict)  # the user's mounts: path -> subvolume
    calls: list[list[str]] = field(default_factory=list)
    late: bool = False  # an injected failure comes after the command took effect
    ids: dict[str, int] = field(default_factory=lambda: {"data": 256})  # subvolume IDs
    parents: dict[str, str] = field(default_factory=dict)  # snapshot -> its source's UUID

    def state(self) -> object:
        return dict(self.subvols), set(self.tops), {d for d in self.dirs if d.exists()}

    def _rel(self, path: str) -> str | None:
        if Path(path) in self.user:
            return self.user[Path(path)]
        for top in self.tops:
            if Path(path).is_relative_to(top):
                return str(Path(path).relative_to(top))
        return None  # not under a mounted top level: the kernel would say ENOENT

    def _materialise(self, top: Path) -> None:
        for sub in self.subvols:
            (top / sub).mkdir(parents=True, exist_ok=True)

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        self.calls.append(args)
        if args[:3] == ["btrfs", "subvolume", "list"]:
            out = "".join(
                f"ID {n + 256} gen 9 top level 5 path {p}\n" for n, p in enumerate(self.subvols)
            )
            return completed(args, out)
        if args[:3] in (["btrfs", "inspect-internal", "rootid"], ["btrfs", "subvolume", "show"]):
            rel = self._rel(args[3])
            if rel not in self.ids:
                raise CommandError(args, 1, "no such subvolume")
            parent = self.parents.get(rel)
            shown = f"\tUUID: \tu{self.ids[rel]}\n\tParent UUID: \t{parent or '-'}\n"
            out = f"{self.ids[rel]}\n" if args[1] == "inspect-internal" else shown
            return completed(args, out)
        injected = self.faults.should_fail(" ".join(args))
        done = self._apply(args) if not injected or self.late else False
        failed = injected or not done
        if failed:
            if opts.check:
                raise CommandError(args, 1, "injected failure")
            return completed(args, returncode=1, err="failed")
        return completed(args)

    def exchange(self, a: Path, b: Path) -> None:
        """renameat2(RENAME_EXCHANGE): both names swap at once, or nothing happens."""
        self.calls.append(["exchange", str(a), str(b)])
        ra, rb = self._rel(str(a)), self._rel(str(b))
        if self.faults.should_fail(f"exchange {a} {b}"):
            raise OSError(5, "injected failure")
        if ra not in self.subvols or rb not in self.subvols:
            raise OSError(2, "No such file or directory")
        assert ra is not None and rb is not None
        for table in (self.subvols, self.ids, self.parents):
            _swap(table, ra, rb)
        a.rename(a.with_name("swap"))
        b.rename(a)
        a.with_name("swap").rename(b)

    def _apply(self, args: list[str]) -> bool:
        """Do what the command does; False where the real command would fail."""
        if args[:2] == ["mkdir", "-p"]:
            Path(args[2]).mkdir(parents=True, exist_ok=True)
            self.dirs.add(Path(args[2]))
        elif args[0] == "mount":
            assert args[-2] == DEV and "subvolid=5" in args, args
            top = Path(args[-1])
            if top in self.tops or not top.is_dir():
                return False
            self.tops.add(top)
            self._materialise(top)
        elif args[0] == "umount":
            top = Path(args[1])
            if top not in self.tops:
                return False
            self.tops.discard(top)
            for child in top.iterdir():
                shutil.rmtree(child)
        elif args[0] == "rmdir":
            if not Path(args[1]).is_dir() or any(Path(args[1]).iterdir()):
                return False
            Path(args[1]).rmdir()
        elif args[:3] == ["btrfs", "subvolume", "snapshot"]:
            src, dst = (self._rel(a) for a in args[-2:])
            if src not in self.subvols or dst is None or dst in self.subvols:
                return False
            self.subvols[dst] = self.subvols[src]
            self.ids[dst] = max(self.ids.values()) + 1
            self.parents[dst] = f"u{self.ids[src]}"
            for top in self.tops:
                self._materialise(top)
        elif args[:3] == ["btrfs", "subvolume", "delete"]:
            path = self._rel(args[3])
            if path not in self.subvols:
                return False
            del self.subvols[path]
            self.ids.pop(path), self.parents.pop(path, None)
            shutil.rmtree(args[3])
        elif args[:2] == ["mv", "-T"]:
            src, dst = (self._rel(a) for a in args[2:])
            if src not in self.subvols or dst is None or dst in self.subvols:
                return False
            self.subvols[dst] = self.subvols.pop(src)
            self.ids[dst] = self.ids.pop(src)
            if src in self.parents:
                self.parents[dst] = self.parents.pop(src)
            Path(args[2]).rename(args[3])
        else:
            raise AssertionError(f"unexpected command {args}")
        return True


def _swap(table: dict[str, Any], a: str, b: str) -> None:
    va, vb = table.pop(a, None), table.pop(b, None)
    table.update({k: v for k, v in ((b, va), (a, vb)) if v is not None})


@dataclass
class World:
    fake: FakeBtrfs
    method: BtrfsMethod
    target: Target
    user_mounts: list[Mount]
    error: PlanError | None = None

    def request(self, name: str = "s1") -> CreateRequest:
        return CreateRequest(self.target, name)

    def state(self) -> object:
        return self.fake.state()


@pytest.fixture
def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    mp = tmp_path / "mnt"
    mp.mkdir()
    monkeypatch.setattr(btrfs, "SUBVOL_ROOT_INODE", mp.stat().st_ino)
    user_mounts = [Mount(1, DevNum(254, 16), "/data", mp, "btrfs", DEV, "rw")]
    monkeypatch.setattr(btrfs, "mounts", lambda: tuple(user_mounts))
    monkeypatch.setattr(btrfs, "block_devnum", lambda path: DevNum(254, 16))
    monkeypatch.setattr(btrfs, "mounts_of", lambda dev: tuple(user_mounts))

    def build(fail_at: int | None = None) -> World:
        fake = FakeBtrfs(Faults(fail_at), user={mp: "data"})
        host = SimpleNamespace(run=fake)
        method = BtrfsMethod(host, top_root=tmp_path / "run", exchange=fake.exchange)  # type: ignore[arg-type]
        return World(fake, method, Target(Path(DEV), mp, "btrfs", (254, 16)), user_mounts)

    return build


def created(world: World) -> SnapshotRecord:
    plan, record = world.method.plan_create(world.request())
    apply(plan)
    world.fake.faults = Faults()
    return record


CREATE_STEPS = 6  # mkdir top, mount, mkdir .snapkit, snapshot -r, umount, rmdir


def test_create_succeeds(make_world: Any) -> None:
    world = make_world()
    plan, record = world.method.plan_create(world.request())
    assert len(plan.steps) == 5  # mkdir, mount, snapshot, umount, rmdir: each undone on its own
    apply(plan)
    assert world.fake.subvols == {"data": "live", ".snapkit/s1": "live"}
    assert world.fake.tops == set() and len(world.fake.faults.calls) == CREATE_STEPS
    assert record.details == {
        "subvol": ".snapkit/s1",
        "origin_subvol": "data",
        "mountpoint": str(world.target.mountpoint),
        "mount_options": "ro,subvol=.snapkit/s1",
    }
    assert world.method.status(record).state is State.ACTIVE


@pytest.mark.parametrize("at", range(CREATE_STEPS))
def test_a_failure_at_every_create_step_leaves_btrfs_as_it_was(make_world: Any, at: int) -> None:
    world = make_world(fail_at=at)
    before = world.state()
    plan, _ = world.method.plan_create(world.request())
    with pytest.raises(PlanError) as caught:
        apply(plan)
    assert world.state() == before
    assert caught.value.hint == "everything done before it was undone"


def test_negative_control_without_the_undo_the_snapshot_stays(make_world: Any) -> None:
    world = make_world(fail_at=4)  # the umount
    plan, _ = world.method.plan_create(world.request())
    with pytest.raises(CommandError):
        for step in plan.steps:
            step.do()
    assert ".snapkit/s1" in world.fake.subvols and world.fake.tops


def test_an_existing_name_is_refused_and_nothing_stays_mounted(make_world: Any) -> None:
    world = make_world()
    created(world)
    before = world.state()
    plan, _ = world.method.plan_create(world.request())
    with pytest.raises(PlanError, match="a snapshot named s1 exists"):
        apply(plan)
    assert world.state() == before


def test_unsuitable_targets(make_world: Any, tmp_path: Path) -> None:
    world = make_world()
    method, target = world.method, world.target
    assert method.unsuitable(target) is None
    ext4 = Target(Path(DEV), target.mountpoint, "ext4", (254, 16))
    assert "holds ext4, not btrfs" in (method.unsuitable(ext4) or "")
    unmounted = Target(Path(DEV), None, "btrfs", (254, 16))
    assert "is not mounted" in (method.unsuitable(unmounted) or "")
    inner = Target(Path(DEV), tmp_path, "btrfs", (254, 16))
    assert "not the root of a btrfs subvolume" in (method.unsuitable(inner) or "")
    with pytest.raises(RefusedError):
        method.plan_create(CreateRequest(ext4, "s1"))


def test_status(make_world: Any) -> None:
    world = make_world()
    record = created(world)
    assert world.method.status(record).state is State.ACTIVE
    del world.fake.subvols[".snapkit/s1"]
    assert world.method.status(record).state is State.INVALID
    world.user_mounts.clear()
    status = world.method.status(record)
    assert status.state is State.ACTIVE and "not checked" in status.message


def test_merge_is_refused_while_the_origin_is_mounted(make_world: Any) -> None:
    world = make_world()
    record = created(world)
    with pytest.raises(RefusedError, match="mounted at") as caught:
        world.method.plan_merge(record)
    assert "umount" in (caught.value.hint or "")


def test_merge_of_the_top_level_is_refused(make_world: Any) -> None:
    world = make_world()
    world.user_mounts[0] = Mount(
        1, DevNum(254, 16), "/", world.target.mountpoint, "btrfs", DEV, "rw"
    )
    record = created(world)
    assert record.details["origin_subvol"] == ""
    with pytest.raises(RefusedError, match="top-level"):
        world.method.plan_merge(record)


MERGE_STEPS = 8  # mkdir, mount, snapshot, exchange, delete old, delete snap, umount, rmdir
POINT_OF_NO_RETURN = 4  # the old origin is deleted by call 4: from then on, only forward


def merged(world: World, at: int | None, *, late: bool = False) -> tuple[SnapshotRecord, object]:
    """Merge s1 into an origin changed since, failing call ``at`` (after it took effect if
    ``late``); returns the record and the state before the merge. PlanError is in
    ``world.error``."""
    record = created(world)
    world.fake.subvols["data"] = "changed"
    world.user_mounts.clear()  # the user unmounted the origin, as the refusal asked
    world.fake.faults = Faults(at)
    world.fake.late = late
    before = world.state()
    plan = world.method.plan_merge(record)
    assert len(plan.steps) == MERGE_STEPS  # one command each
    if at is None:
        apply(plan)
    else:
        with pytest.raises(PlanError) as caught:
            apply(plan)
        world.error = caught.value
    world.fake.late = False
    return record, before


def test_merge_rolls_the_origin_back(make_world: Any) -> None:
    world = make_world()
    merged(world, None)
    assert world.fake.subvols == {"data": "live"} and world.fake.tops == set()
    assert len(world.fake.faults.calls) == MERGE_STEPS


@pytest.mark.parametrize("at", range(POINT_OF_NO_RETURN + 1))
def test_a_merge_failure_before_the_old_origin_is_deleted_changes_nothing(
    make_world: Any, at: int
) -> None:
    world = make_world()
    _, before = merged(world, at)
    assert world.state() == before
    assert world.error.hint == "everything done before it was undone"


def assert_merged_and_told(world: World, record: SnapshotRecord) -> None:
    """The origin holds the snapshot's content, nothing stays mounted, the error says so and
    says what to do, and doing it leaves only the merged origin."""
    assert world.fake.subvols.get("data") == "live", world.fake.subvols
    assert world.fake.tops == set() and not any(d.exists() for d in world.fake.dirs)
    text = str(world.error)
    assert "data already holds the content of .snapkit/s1" in text, text
    assert "finish the merge with 'snapkit snapshot discard s1'" in text, text
    apply(world.method.plan_discard(record))
    assert world.fake.subvols == {"data": "live"}


@pytest.mark.parametrize("at", range(POINT_OF_NO_RETURN + 1, MERGE_STEPS))
def test_a_merge_failure_after_the_point_of_no_return_keeps_the_merged_origin(
    make_world: Any, at: int
) -> None:
    world = make_world()
    record, _ = merged(world, at)
    assert_merged_and_told(world, record)


def test_a_delete_that_took_effect_but_failed_is_past_the_point_of_no_return(
    make_world: Any,
) -> None:
    world = make_world()
    record, _ = merged(world, POINT_OF_NO_RETURN, late=True)
    assert_merged_and_told(world, record)


def test_negative_control_undos_that_trust_the_steps_tell_the_wrong_story(
    make_world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the on-disk check the undo tries to exchange back a deleted old origin: the
    exchange fails as a whole, so the origin survives (the rename-based merge lost it here),
    but the error no longer says that the merge is done and how to finish it."""
    monkeypatch.setattr(btrfs_merge.Swap, "_past_no_return", lambda self: False)
    world = make_world()
    merged(world, POINT_OF_NO_RETURN + 1)
    assert world.fake.subvols["data"] == "live", world.fake.subvols
    assert "already holds the content" not in str(world.error), str(world.error)


def test_merge_is_refused_while_the_snapshot_is_mounted(make_world: Any) -> None:
    world = make_world()
    record = created(world)
    world.user_mounts[0] = Mount(
        1, DevNum(254, 16), "/.snapkit/s1", Path("/mnt/s"), "btrfs", DEV, "ro"
    )
    with pytest.raises(RefusedError, match=r"snapshot \.snapkit/s1 is mounted at /mnt/s"):
        world.method.plan_merge(record)


def test_a_merge_of_a_deleted_snapshot_changes_nothing_and_says_discard(make_world: Any) -> None:
    world = make_world()
    record = created(world)
    world.user_mounts.clear()
    del world.fake.subvols[".snapkit/s1"]
    before = world.state()
    with pytest.raises(PlanError, match="is gone") as caught:
        apply(world.method.plan_merge(record))
    assert world.state() == before and "discard s1" in str(caught.value)
    apply(world.method.plan_discard(record))  # a discard of what is gone just forgets it
    assert world.fake.subvols == {"data": "live"}


def test_discard(make_world: Any) -> None:
    world = make_world()
    record = created(world)
    apply(world.method.plan_discard(record))
    assert world.fake.subvols == {"data": "live"} and world.fake.tops == set()


@pytest.mark.parametrize("at", range(5))  # mkdir, mount, delete, umount, rmdir
def test_a_discard_failure_keeps_the_origin_and_unmounts(make_world: Any, at: int) -> None:
    world = make_world()
    record = created(world)
    world.fake.faults = Faults(at)
    with pytest.raises(PlanError) as caught:
        apply(world.method.plan_discard(record))
    assert world.fake.subvols["data"] == "live" and world.fake.tops == set()
    assert (".snapkit/s1" in world.fake.subvols) == (at < 3)  # gone once the delete ran
    assert ("discard s1' again" in str(caught.value)) == (at >= 3), str(caught.value)


def test_a_merge_is_refused_beside_a_spare_an_earlier_merge_left(make_world: Any) -> None:
    world = make_world()
    record = created(world)
    world.user_mounts.clear()
    world.fake.subvols["data.snapkit-new-s1"] = "live"
    world.fake.ids["data.snapkit-new-s1"] = 300
    before = world.state()
    with pytest.raises(PlanError, match="an earlier merge did not finish") as caught:
        apply(world.method.plan_merge(record))
    assert world.state() == before and "snapkit recover" in str(caught.value)


# --- a crash in the middle of a merge, then 'snapkit recover' --------------------------------


def recovering(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(btrfs, "TOP_ROOT", tmp_path / "run")
    monkeypatch.setattr(recover_btrfs, "block_devnum", lambda path: DevNum(254, 16))


def crashed(world: World, tmp_path: Path, steps_done: int, *, power_cut: bool) -> Flow:
    """A merge of s1 (origin changed since) that ran ``steps_done`` steps and stopped dead, as
    a SIGKILL (the private mount stays) or a power cut (mounts and /run gone) stops it; the
    state file still holds s1, as the flow saves only after the plan. Returns the Flow that
    recover runs with, on the same fake filesystem."""
    record, _ = merged_setup(world)
    for step in world.method.plan_merge(record).steps[:steps_done]:
        step.do()
    if power_cut:
        for top in list(world.fake.tops):
            world.fake._apply(["umount", str(top)])
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
    flow = Flow(
        SimpleNamespace(run=world.fake, dm=FakeDm(faults=Faults())),  # type: ignore[arg-type]
        settings=Settings.under(tmp_path / "state"),
    )
    flow.state.save(StateData(snapshots=(record,)))
    return flow


def merged_setup(world: World) -> tuple[SnapshotRecord, object]:
    record = created(world)
    world.fake.subvols["data"] = "changed"
    world.user_mounts.clear()
    return record, world.state()


def assert_settled(world: World, flow: Flow, tmp_path: Path) -> str:
    """The origin exists and holds either its old content with s1 kept, or s1's content with
    s1 consumed and forgotten; nothing else is left on disk or mounted. Returns which."""
    subvols, recorded = world.fake.subvols, flow.state.load().snapshot("s1") is not None
    assert world.fake.tops == set(), world.fake.tops
    assert not list((tmp_path / "run").glob("*")), list((tmp_path / "run").glob("*"))
    if subvols == {"data": "changed", ".snapkit/s1": "live"} and recorded:
        return "rolled back"
    assert subvols == {"data": "live"} and not recorded, (subvols, recorded)
    return "merged"


@pytest.mark.parametrize("power_cut", [False, True], ids=["sigkill", "power-cut"])
@pytest.mark.parametrize("steps_done", range(MERGE_STEPS + 1))
def test_recover_settles_a_merge_cut_short_at_every_step(
    make_world: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    steps_done: int,
    power_cut: bool,
) -> None:
    """Cut before the exchange (step 4): the merge is undone. From the exchange on: finished."""
    recovering(monkeypatch, tmp_path)
    world = make_world()
    monkeypatch.setattr(recover_btrfs, "mounts", lambda: world_mounts(world))
    flow = crashed(world, tmp_path, steps_done, power_cut=power_cut)
    assert "data" in world.fake.subvols  # the exchange: the origin is never missing
    result = flow.recover()
    assert isinstance(result, Recovery)
    outcome = assert_settled(world, flow, tmp_path)
    assert outcome == ("merged" if steps_done >= 4 else "rolled back"), result
    assert ("s1" in result.dropped) == (outcome == "merged")
    again = flow.recover()  # idempotent
    assert isinstance(again, Recovery) and not again.actions and not again.dropped
    assert assert_settled(world, flow, tmp_path) == outcome


def world_mounts(world: World) -> tuple[Mount, ...]:
    return tuple(Mount(9, DevNum(254, 16), "/", top, "btrfs", DEV, "rw") for top in world.fake.tops)


@pytest.mark.parametrize("steps_done", [3, 4, 5])
def test_a_recover_that_fails_at_any_command_can_be_run_again(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps_done: int
) -> None:
    recovering(monkeypatch, tmp_path)
    at = 0
    while True:
        world = make_world()
        if not world.user_mounts:  # the fixture's list, which the crash before emptied
            world.user_mounts.append(
                Mount(1, DevNum(254, 16), "/data", world.target.mountpoint, "btrfs", DEV, "rw")
            )
        monkeypatch.setattr(recover_btrfs, "mounts", lambda w=world: world_mounts(w))
        flow = crashed(world, tmp_path / str(at), steps_done, power_cut=False)
        world.fake.faults = Faults(at)
        try:
            flow.recover()
        except PlanError:
            assert "data" in world.fake.subvols, world.fake.subvols
            world.fake.faults = Faults()
            flow.recover()
            assert_settled(world, flow, tmp_path / str(at))
            at += 1
            continue
        assert_settled(world, flow, tmp_path / str(at))
        break
    assert at >= 6  # mkdir, mount, a delete or two, umount, rmdir: each one failed once


@pytest.mark.parametrize(("blind", "steps_done"), [("_rootid", 4), ("_show", 5)])
def test_negative_control_a_recover_blind_to_the_merge_keeps_a_record_of_a_merged_origin(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blind: str, steps_done: int
) -> None:
    """Blind to the subvolume IDs (cut after the exchange) or to the Parent UUID (cut after
    the old origin was deleted), recover takes the merge for one that never happened: the
    origin holds the snapshot's content while the record says the snapshot is not merged."""
    recovering(monkeypatch, tmp_path)
    monkeypatch.setattr(recover_btrfs, blind, lambda run, path: 0 if blind == "_rootid" else {})
    world = make_world()
    monkeypatch.setattr(recover_btrfs, "mounts", lambda: world_mounts(world))
    flow = crashed(world, tmp_path, steps_done, power_cut=True)
    flow.recover()
    assert world.fake.subvols["data"] == "live"
    with pytest.raises(AssertionError):
        assert_settled(world, flow, tmp_path)


def _left_by_the_rename_merge(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """A power cut after the old, rename-based merge moved the origin to data.snapkit-old-s1."""
    recovering(monkeypatch, tmp_path)
    world = make_world()
    monkeypatch.setattr(recover_btrfs, "mounts", lambda: world_mounts(world))
    flow = crashed(world, tmp_path, 0, power_cut=True)
    fake = world.fake
    fake.subvols["data.snapkit-old-s1"] = fake.subvols.pop("data")
    fake.ids["data.snapkit-old-s1"] = fake.ids.pop("data")
    return world, flow


def test_recover_puts_back_the_origin_the_rename_based_merge_left_missing(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the merge before the exchange left after a power cut between its rename and its
    snapshot: no origin, its content under ``data.snapkit-old-s1``."""
    world, flow = _left_by_the_rename_merge(make_world, tmp_path, monkeypatch)
    result = flow.recover()
    assert assert_settled(world, flow, tmp_path) == "rolled back"
    assert isinstance(result, Recovery)
    assert "s1: renamed data.snapkit-old-s1 back to data" in result.actions


@pytest.mark.parametrize("made_by", ["merge", "hand"])
def test_recover_finishes_the_rename_based_merge_only_beside_a_copy_of_the_snapshot(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made_by: str
) -> None:
    """Cut after its snapshot: ``data`` is a copy of s1 beside ``data.snapkit-old-s1``. A
    ``data`` made by hand since (no Parent UUID) may hold data too: recover refuses."""
    world, flow = _left_by_the_rename_merge(make_world, tmp_path, monkeypatch)
    fake = world.fake
    fake.subvols["data"], fake.ids["data"] = ("live", 400) if made_by == "merge" else ("new", 401)
    if made_by == "merge":
        fake.parents["data"] = fake.parents[".snapkit/s1"].replace(
            "256", str(fake.ids[".snapkit/s1"])
        )
        flow.recover()
        assert assert_settled(world, flow, tmp_path) == "merged"
        return
    with pytest.raises(PlanError, match="not a copy of s1") as caught:
        flow.recover()
    assert "data.snapkit-old-s1" in fake.subvols and fake.subvols["data"] == "new"
    assert "keep the one you want" in str(caught.value)


def test_recover_leaves_a_merge_that_holds_the_lock_alone(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovering(monkeypatch, tmp_path)
    world = make_world()
    monkeypatch.setattr(recover_btrfs, "mounts", lambda: world_mounts(world))
    flow = crashed(world, tmp_path, 3, power_cut=False)  # a live merge, between its steps
    before = world.state()
    lock = origin_lock(DEV, operation="merge s1", lock_dir=flow.settings.lock_dir)
    with lock, pytest.raises(PlanError, match="busy"):
        flow.recover()
    assert world.state() == before


def test_recover_dry_run_lists_the_settle_step_and_changes_nothing(
    make_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovering(monkeypatch, tmp_path)
    world = make_world()
    flow = crashed(world, tmp_path, 4, power_cut=True)
    before = world.state()
    text = flow.recover(dry_run=True)
    assert isinstance(text, str) and "settle btrfs snapshot s1 of data on /dev/vdb" in text
    assert world.state() == before
