"""The fakes unit tests share: the executor seam (FakeExecutor, on which each fake of commands
builds, and Recorder, which records every command and answers all alike), one device-mapper
world (FakeDm, loop devices, files and commands sharing one fault counter, so a failure can be
injected at every step of a plan) and one LVM (FakeLvm, answering
lvs/lvcreate/lvconvert/lvremove as LVM does).

Test modules import their fakes from here, never from each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.status import SnapshotFailure, StatusLine
from snapkit.dm.table import DevNum, Linear, Table
from snapkit.errors import CommandError
from snapkit.host.lvm import LVS_FIELDS
from snapkit.methods.base import Host, Method
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import CreateRequest, Pending, SnapshotRecord, Target
from snapkit.plan import Plan, PlanError, apply
from snapkit.run import Completed

# -- executors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """The keywords of one ``Executor.run`` call, for a fake that looks at them."""

    check: bool = True
    timeout: float | None = None
    input: str | None = None
    env: Mapping[str, str] | None = None


class FakeExecutor:
    """The Executor seam (``snapkit.run.Executor``) for fakes, its signature written once:
    ``run`` hands the argv as a list and the keywords as RunOptions to ``answer``."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        return self.answer(list(argv), RunOptions(check, timeout, input, env))

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        raise NotImplementedError


def completed(args: Sequence[str], out: str = "", returncode: int = 0, err: str = "") -> Completed:
    """What a command that ran gives back (no time taken)."""
    return Completed(tuple(args), returncode, out, err, 0.0)


class Recorder(FakeExecutor):
    """Records every argv in ``calls`` and answers each with ``stdout`` and ``returncode``; a
    non-zero returncode raises CommandError (with ``stderr``) where the caller checks."""

    def __init__(self, stdout: str = "", returncode: int = 0, stderr: str = "") -> None:
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr
        self.calls: list[list[str]] = []

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        self.calls.append(args)
        if self.returncode and opts.check:
            raise CommandError(args, self.returncode, self.stderr)
        return completed(args, self.stdout, self.returncode)


# -- device-mapper ----------------------------------------------------------------------------

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


class FakeRun(FakeExecutor):
    """An executor for ``blockdev --setro/--setrw``: tracks the read-only flag per device."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.read_only: set[str] = set()

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        if args[0] == "blkid":  # a read at plan time, not a side effect: no UUID known
            return completed(args, returncode=2)
        if args[:2] == ["cryptsetup", "isLuks"]:  # a read at plan time: the base is LUKS
            return completed(args)
        if args[0] == "lvs":  # a read at plan time (auto asks lvm first): no LV at all
            return completed(args, out='{"report": [{"lv": []}]}')
        if self.faults.should_fail(" ".join(args)):
            raise CommandError(args, 1, "injected failure")
        if args[:2] == ["blockdev", "--setro"]:
            self.read_only.add(args[2])
        elif args[:2] == ["blockdev", "--setrw"]:
            self.read_only.discard(args[2])
        else:
            raise AssertionError(f"unexpected command {args}")
        return completed(args)


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


def merge_failed_world(tmp_path: Path) -> tuple[World, DmMethod, SnapshotRecord]:
    """A dm snapshot whose merge the kernel stopped with "Merge failed"."""
    world = make_world(tmp_path)
    method = DmMethod(world.host)
    record = method.mark_pending(created(world), Pending.MERGE)
    apply(method.plan_merge(record))
    merge = (StatusLine(0, SIZE, "snapshot-merge", SnapshotFailure.MERGE_FAILED),)
    world.dm.statuses["data"] = merge
    return world, method, record


# -- LVM --------------------------------------------------------------------------------------


@dataclass
class Lv:
    name: str
    origin: str = ""
    thin: bool = False
    active: bool = True
    merging: bool = False
    is_open: bool = False
    in_pool: bool = True  # False: LVM records a thin LV whose device the pool never committed


@dataclass
class FakeLvm(FakeExecutor):
    """Just enough of lvm2 and dmsetup for the plans: LVs, activation, suspension, merges."""

    faults: Faults
    lvs: dict[str, Lv] = field(default_factory=dict)
    suspended: set[str] = field(default_factory=set)
    calls: list[list[str]] = field(default_factory=list)

    def state(self) -> object:
        return (sorted((k, repr(v)) for k, v in self.lvs.items()), sorted(self.suspended))

    def report(self) -> str:
        rows = []
        for n, lv in enumerate(self.lvs.values()):
            first = (
                ("S" if lv.merging else "s")
                if lv.origin and not lv.thin
                else ("V" if lv.thin else "-")
            )
            attr = f"{first}wi-{'a' if lv.active else '-'}{'o' if lv.is_open else '-'}----"
            row = dict.fromkeys(LVS_FIELDS, "")
            row.update(
                lv_name=f"[{lv.name}]" if lv.merging else lv.name,
                vg_name="vg",
                origin=lv.origin,
                segtype="thin" if lv.thin else "linear",
                lv_attr=attr,
                lv_size=str(100 << 20),
                lv_merging="merging" if lv.merging else "",
                pool_lv="pool" if lv.thin else "",
                lv_dm_path=f"/dev/mapper/vg-{lv.name}",
                lv_kernel_major="253" if lv.active else "-1",
                lv_kernel_minor=str(n) if lv.active else "-1",
                data_percent="1.50" if lv.origin else "",
            )
            rows.append(row)
        return json.dumps({"report": [{"lv": rows}]})

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        self.calls.append(args)
        out = ""
        if args[0] == "lvs":
            out = self.report()
        elif args[:2] == ["dmsetup", "info"]:
            out = "Suspended" if args[-1].removeprefix("vg-") in self.suspended else "Active"
        elif self.faults.should_fail(" ".join(args)):
            if args[0] == "lvcreate":  # killed inside: origin suspended, snapshot half made
                origin = args[-1].split("/")[1]
                self.suspended.add(origin)
                self.lvs[args[args.index("-n") + 1]] = Lv(args[args.index("-n") + 1], origin)
            raise CommandError(args, 5, "injected failure")
        elif args[0] == "lvcreate":
            origin = self.lvs[args[-1].split("/")[1]]
            name = args[args.index("-n") + 1]
            self.lvs[name] = Lv(name, origin.name, thin=origin.thin, active=not origin.thin)
            self.suspended.discard(origin.name)  # LVM resumes the origin it loaded
        elif args[:2] == ["dmsetup", "suspend"]:
            self.suspended.add(args[-1].removeprefix("vg-"))
        elif args[:2] == ["dmsetup", "resume"]:
            self.suspended.discard(args[-1].removeprefix("vg-"))
        elif args[0] == "lvremove":
            del self.lvs[args[-1].split("/")[1]]
        elif args[:2] == ["vgchange", "-ay"]:  # a boot's activation: thin snapshots skip it
            for lv in self.lvs.values():
                lv.active = lv.active or not (lv.thin and lv.origin)
        elif args[:2] == ["lvchange", "-ay"] and not self.lvs[args[-1].split("/")[1]].in_pool:
            return completed(args, "", 5, "reload ioctl failed: No data available")
        elif args[0] == "lvchange" and args[1] in ("-ay", "-an"):
            self.lvs[args[-1].split("/")[1]].active = args[1] == "-ay"
        elif args[:2] == ["lvconvert", "--merge"]:
            snap = self.lvs[args[-1].split("/")[1]]
            snap.merging = True
            if not self.lvs[snap.origin].is_open:
                del self.lvs[snap.name]
        elif args[:2] == ["lvchange", "--refresh"]:
            for lv in list(self.lvs.values()):
                if lv.merging and lv.origin == args[-1].split("/")[1]:
                    del self.lvs[lv.name]
        else:
            raise AssertionError(f"unexpected command {args}")
        return completed(args, out)


def lvm_host(fake: FakeLvm) -> Any:
    return SimpleNamespace(run=fake, dm=None, loops=None, files=None)


def lvm_world(thin: bool = False, fail_at: int | None = None, is_open: bool = True) -> FakeLvm:
    fake = FakeLvm(Faults(fail_at))
    fake.lvs["lv"] = Lv("lv", thin=thin, is_open=is_open)
    return fake


LV_TARGET = Target(Path("/dev/mapper/vg-lv"), Path("/mnt/o"), "ext4", (253, 0))


def lvm_request(**kw: Any) -> CreateRequest:
    return CreateRequest(**{"target": LV_TARGET, "name": "s1", **kw})


# -- ZFS --------------------------------------------------------------------------------------


@dataclass
class FakeZfs(FakeExecutor):
    """One imported pool as ``zfs`` and ``zpool`` show it: datasets, and snapshots with their
    createtxg and sizes; each change (snapshot, rollback, destroy) counts as a side effect in
    ``faults``. ``content`` is each dataset's data, so a rollback is seen to roll back."""

    faults: Faults = field(default_factory=Faults)
    pools: set[str] = field(default_factory=lambda: {"tank"})
    content: dict[str, str] = field(default_factory=lambda: {"tank": "", "tank/fs": "live"})
    snaps: dict[str, tuple[int, str]] = field(default_factory=dict)  # full -> (txg, content)
    txg: int = 100
    calls: list[list[str]] = field(default_factory=list)

    def state(self) -> object:
        return dict(self.content), dict(self.snaps)

    def _fail(self, args: list[str], err: str, code: int = 1) -> Completed:
        return completed(args, "", code, err)

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        self.calls.append(args)
        result = self._answer(args)
        if not result.ok and opts.check:
            raise CommandError(args, result.returncode, result.stderr)
        return result

    def _line(self, full: str) -> str:
        txg, data = self.snaps[full]
        return f"{full}\t{txg}\t{len(data) * 4096}\t{len(data) * 8192}\n"

    def _answer(self, args: list[str]) -> Completed:
        if args[:2] == ["zpool", "list"]:
            pool = args[-1]
            return (
                completed(args, pool + "\n")
                if pool in self.pools
                else self._fail(args, f"cannot open '{pool}': no such pool")
            )
        if args[:2] == ["zfs", "list"]:
            name = args[-1]
            if not any(name.split("@")[0].split("/")[0] == p for p in self.pools):
                return self._fail(args, f"cannot open '{name}': dataset does not exist")
            if "snapshot" not in args:
                ok = name in self.content
                return (
                    completed(args, name + "\n")
                    if ok
                    else self._fail(args, f"cannot open '{name}': dataset does not exist")
                )
            if "@" in name:
                ok = name in self.snaps
                return (
                    completed(args, self._line(name))
                    if ok
                    else self._fail(args, f"cannot open '{name}': dataset does not exist")
                )
            mine = sorted((s for s in self.snaps if s.startswith(name + "@")), key=self._txg)
            return completed(args, "".join(self._line(s) for s in mine))
        if args[:2] == ["zfs", "snapshot"]:
            full = args[2]
            if self.faults.should_fail(" ".join(args)):
                return self._fail(args, "injected failure")
            if full in self.snaps:
                return self._fail(args, f"cannot create snapshot '{full}': dataset already exists")
            self.txg += 1
            self.snaps[full] = (self.txg, self.content[full.split("@")[0]])
            return completed(args)
        if args[:2] == ["zfs", "rollback"]:
            full = args[-1]
            if self.faults.should_fail(" ".join(args)):
                return self._fail(args, "injected failure")
            ds = full.split("@")[0]
            later = [
                s for s in self.snaps if s.startswith(ds + "@") and self._txg(s) > self._txg(full)
            ]
            if later and "-r" not in args:
                return self._fail(
                    args,
                    f"cannot rollback to '{full}': more recent snapshots or bookmarks exist",
                )
            for s in later:
                del self.snaps[s]
            self.content[ds] = self.snaps[full][1]
            return completed(args)
        if args[:2] == ["zfs", "destroy"]:
            full = args[-1]
            if self.faults.should_fail(" ".join(args)):
                return self._fail(args, "injected failure")
            if full not in self.snaps:
                return self._fail(args, f"could not find any snapshots to destroy; check {full}")
            del self.snaps[full]
            return completed(args)
        raise AssertionError(f"unexpected command {args}")

    def _txg(self, full: str) -> int:
        return self.snaps[full][0]
