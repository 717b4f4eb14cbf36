"""The dm method's plans against FakeDm: a failure injected at every step leaves the fake
system exactly as it was; the finish plan converges when re-run after any failure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.table import DevNum, Linear, Table
from snapkit.errors import CommandError, RefusedError, ValidationError
from snapkit.methods.base import Host, Method
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import CreateRequest, Pending, SnapshotRecord, Target
from snapkit.plan import Plan, PlanError, apply
from snapkit.run import Completed

BASE = DevNum(7, 0)
SIZE = 2048
ORIGINAL = Table.single(SIZE, Linear(BASE, 0))


class FakeLoops:
    """Loop devices as the kernel keeps them: by backing file; detach of a busy one is fine."""

    def __init__(self, dm: FakeDm, faults: Faults) -> None:
        self.dm, self.faults = dm, faults
        self.attached: dict[Path, Path] = {}
        self._minor = 0

    def _tick(self, what: str) -> None:
        if self.faults.should_fail(what):
            raise CommandError(["losetup"], 1, f"injected failure of {what}")

    def attach(self, backing: Path) -> Path:
        self._tick(f"losetup attach {backing}")
        self._minor += 1
        dev = Path(f"/dev/loop{self._minor}")
        self.attached[dev] = backing
        self.dm.add_block_device(str(dev), DevNum(7, self._minor))
        return dev

    def detach(self, device: Path) -> None:
        self._tick(f"losetup detach {device}")
        del self.attached[device]
        del self.dm.block_devices[str(device)]

    def find(self, backing: Path) -> tuple[Path, ...]:
        return tuple(d for d, b in self.attached.items() if b == backing)

    def refresh(self, device: Path) -> None:
        self._tick(f"losetup refresh {device}")


class FakeFiles:
    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.files: dict[Path, int] = {}

    def _tick(self, what: str) -> None:
        if self.faults.should_fail(what):
            raise OSError(5, f"injected failure of {what}")

    def create_sparse(self, path: Path, size: int) -> None:
        self._tick(f"create {path}")
        if path in self.files:
            raise FileExistsError(path)
        self.files[path] = size

    def grow(self, path: Path, size: int) -> None:
        self._tick(f"grow {path}")
        self.files[path] = max(size, self.files[path])

    def unlink(self, path: Path) -> None:
        self._tick(f"unlink {path}")
        self.files.pop(path, None)

    def exists(self, path: Path) -> bool:
        return path in self.files


class FakeRun:
    """An executor for ``blockdev --setro/--setrw``: tracks the read-only flag per device."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.read_only: set[str] = set()

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        args = list(argv)
        if args[0] == "blkid":  # a read at plan time, not a side effect: no UUID known
            return Completed(tuple(args), 2, "", "", 0.0)
        if self.faults.should_fail(" ".join(args)):
            raise CommandError(args, 1, "injected failure")
        if args[:2] == ["blockdev", "--setro"]:
            self.read_only.add(args[2])
        elif args[:2] == ["blockdev", "--setrw"]:
            self.read_only.discard(args[2])
        else:
            raise AssertionError(f"unexpected command {args}")
        return Completed(tuple(args), 0, "", "", 0.0)


@dataclass
class World:
    dm: FakeDm
    faults: Faults
    loops: FakeLoops
    files: FakeFiles
    run: FakeRun
    host: Host
    cow_dir: Path
    records: dict[str, SnapshotRecord] = field(default_factory=dict)

    def state(self) -> object:
        """Everything observable. A device that an undo re-creates gets a new minor, as in
        the kernel; snapkit's tables name its own devices by path, so minors are left out."""
        return (
            {name: replace(d, dev=None) for name, d in self.dm.state().items()},
            dict(self.dm.block_devices),
            dict(self.loops.attached),
            dict(self.files.files),
            set(self.run.read_only),
        )

    def target(self) -> Target:
        return Target(Path("/dev/mapper/data"), None, "ext4", (253, 0))

    def request(self, name: str = "s1", **kw: object) -> CreateRequest:
        return CreateRequest(self.target(), name, cow_dir=self.cow_dir, **kw)  # type: ignore[arg-type]


def make_world(tmp_path: Path, fail_at: int | None = None) -> World:
    faults = Faults(fail_at)
    dm = FakeDm(faults=Faults())  # set up without faults, then share the counter
    dm.add_block_device("/dev/loop0", BASE)
    dm.create("data", uuid="SNAPKIT-data-origin")
    dm.load("data", ORIGINAL)
    dm.resume("data")
    dm.faults = faults
    loops, files, run = FakeLoops(dm, faults), FakeFiles(faults), FakeRun(faults)
    host = Host(dm=dm, run=run, loops=loops, files=files)
    return World(dm, faults, loops, files, run, host, tmp_path)


def count_calls(build: Callable[[World], Plan], world: World) -> int:
    before = len(world.faults.calls)
    apply(build(world))
    return len(world.faults.calls) - before


def walk_failures(
    tmp_path: Path,
    setup: Callable[[World], object],
    build: Callable[[World], Plan],
    method: Callable[[Host], Method],
) -> int:
    """Fail the N-th side effect of ``build``'s plan for every N; the world must be unchanged."""
    probe = make_world(tmp_path)
    setup(probe)
    total = count_calls(build, probe)
    assert total > 3
    for n in range(total):
        world = make_world(tmp_path)
        setup(world)
        before = world.state()
        world.faults.fail_at = len(world.faults.calls) + n
        with pytest.raises(PlanError):
            apply(build(world))
        assert world.state() == before, f"failure at side effect {n} left a change"
    return total


def created(world: World, name: str = "s1") -> SnapshotRecord:
    plan, record = DmMethod(world.host).plan_create(world.request(name))
    apply(plan)
    world.records[name] = record
    return record


def test_create_builds_the_lvm_way(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created(world)
    state = world.dm.state()
    assert str(state["data"].active.format()) == "0 2048 snapshot-origin /dev/mapper/data-real\n"
    assert state["data-real"].active == ORIGINAL
    assert state["data-real"].uuid == "SNAPKIT-data-real"
    assert "snapshot /dev/mapper/data-real /dev/loop1 P 8" in state["s1"].active.format()
    assert not any(d.suspended for d in state.values())
    assert world.files.files == {tmp_path / "s1.cow": 512 * SIZE // 4}


def test_create_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    total = walk_failures(
        tmp_path, lambda w: None, lambda w: DmMethod(w.host).plan_create(w.request())[0], DmMethod
    )
    assert total >= 11


def test_second_snapshot_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    walk_failures(
        tmp_path,
        lambda w: created(w, "s1"),
        lambda w: DmMethod(w.host).plan_create(w.request("s2"))[0],
        DmMethod,
    )


def test_merge_start_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    walk_failures(
        tmp_path,
        lambda w: created(w),
        lambda w: DmMethod(w.host).plan_merge(_record(w)),
        DmMethod,
    )


def _record(world: World) -> SnapshotRecord:
    return world.records["s1"]


@pytest.mark.parametrize("op", ["merge", "discard"])
def test_finish_converges_after_a_failure_at_any_step(tmp_path: Path, op: str) -> None:
    for n in range(12):
        world = make_world(tmp_path)
        method = DmMethod(world.host)
        record = created(world)
        apply(method.plan_merge(record) if op == "merge" else method.plan_discard(record))
        world.faults.fail_at = len(world.faults.calls) + n
        try:
            apply(method.plan_finish(record))
        except PlanError:
            world.faults.fail_at = None
            apply(method.plan_finish(record))
        assert set(world.dm.state()) == {"data"}
        assert world.dm.state()["data"].active == ORIGINAL
        assert not world.loops.attached and not world.files.files


def test_merge_is_refused_while_other_snapshots_exist(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    record = created(world, "s1")
    created(world, "s2")
    with pytest.raises(RefusedError, match="other snapshots"):
        DmMethod(world.host).plan_merge(record)


def test_discard_of_one_of_two_keeps_the_origin_a_snapshot_origin(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    s1, s2 = created(world, "s1"), created(world, "s2")
    apply(method.plan_discard(s1))
    apply(method.plan_finish(s1))
    assert world.dm.state()["data"].active.lines[0].target.type_name == "snapshot-origin"
    assert set(world.dm.state()) == {"data", "data-real", "s2"}
    apply(method.plan_discard(s2))
    apply(method.plan_finish(s2))
    assert world.dm.state()["data"].active == ORIGINAL


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cow_size": 8192}, "three"),
        ({"chunk_sectors": 12}, "chunk size"),
    ],
)
def test_bad_requests_are_refused_before_anything(
    tmp_path: Path, kw: dict[str, object], match: str
) -> None:
    world = make_world(tmp_path)
    before = world.state()
    with pytest.raises(ValidationError, match=match):
        DmMethod(world.host).plan_create(world.request(**kw))
    assert world.state() == before


@pytest.mark.parametrize("name", ["a b", "a\nb", "a/b", "x" * 65, "", "-x", "tab\t"])
def test_injecting_names_are_refused(tmp_path: Path, name: str) -> None:
    world = make_world(tmp_path)
    with pytest.raises(ValidationError):
        DmMethod(world.host).plan_create(world.request(name))


def test_a_non_linear_origin_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.dm.create("z")
    world.dm.load("z", Table.single(8, Linear(BASE, 0)))
    from snapkit.dm.table import Zero

    world.dm.load("z", Table.single(8, Zero()))
    world.dm.resume("z")
    target = Target(Path("/dev/mapper/z"), None, None, (253, 1))
    assert "zero table" in (DmMethod(world.host).unsuitable(target) or "")
    plain = Target(Path("/dev/loop0"), None, None, (7, 0))
    assert "device prepare" in (DmMethod(world.host).unsuitable(plain) or "")


def test_a_name_in_use_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with pytest.raises(RefusedError, match="already exists"):
        DmMethod(world.host).plan_create(world.request("data"))


def test_the_fake_catches_a_plan_that_forgets_an_undo(tmp_path: Path) -> None:
    """Negative control: with the COW file's undo removed, the walk must notice the leak."""

    def broken(w: World) -> Plan:
        plan = DmMethod(w.host).plan_create(w.request())[0]
        return replace(plan, steps=(replace(plan.steps[0], undo=None), *plan.steps[1:]))

    with pytest.raises(AssertionError, match="left a change"):
        walk_failures(tmp_path, lambda w: None, broken, DmMethod)


def test_status_reads_usage_and_merge(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    record = created(world)
    assert method.status(record).state.value == "active"
    assert method.status(record).usage_percent == 0.0
    marked = method.mark_pending(record, Pending.MERGE)
    apply(method.plan_merge(record))
    assert method.status(marked).state.value == "merged"  # the fake merges at once
