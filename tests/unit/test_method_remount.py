"""The remount-ro plans against a fake mount table and files: after a failure at any step the
filesystem is read-write again and no image is left; the refusals the docstring promises.

The fake's ``cp`` failure is the realistic one (a full --cow-dir): it dies part-way and leaves
a partial image behind, as cp does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapkit.dm.fake import Faults
from snapkit.dm.table import DevNum
from snapkit.errors import CommandError, RefusedError, UsageError
from snapkit.host.loopdev import LocalFiles
from snapkit.host.target import Mount
from snapkit.methods import remount
from snapkit.methods.remount import RemountMethod
from snapkit.model import CreateRequest, SnapshotRecord, State, Target
from snapkit.plan import PlanError, apply
from snapkit.run import Completed
from tests.unit.fakes import FakeExecutor, RunOptions, completed

DEV, MP = "/dev/vdb", Path("/mnt/o")


@dataclass
class FakeSystem(FakeExecutor):
    """One mounted filesystem (its mode and content) and the image files snapkit writes."""

    faults: Faults
    cow_dir: Path
    mode: str = "rw"
    busy: bool = False  # a file open for writing: the kernel refuses remount,ro with EBUSY
    device: str = "v1"
    images: dict[str, str] = field(default_factory=dict)
    ran: list[tuple[list[str], Mapping[str, str] | None]] = field(default_factory=list)

    def state(self) -> object:
        return (
            self.mode,
            self.device,
            dict(self.images),
            sorted(p.name for p in self.cow_dir.iterdir()),
        )

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        self.ran.append((args, opts.env))
        if self.faults.should_fail(" ".join(args)):
            if args[0] == "cp":  # died part-way, as on a full --cow-dir
                self._write(args[-1], "partial")
            raise CommandError(args, 1, "injected failure")
        if args[:3] == ["mount", "-o", "remount,ro"]:
            if self.busy:
                raise CommandError(args, 32, "mount: /mnt/o: mount point is busy.")
            self.mode = "ro"
        elif args[:3] == ["mount", "-o", "remount,rw"]:
            self.mode = "rw"
        elif args[0] == "cp":
            assert self.mode == "ro", "the copy must be taken while read-only"
            self._write(args[-1], self.device)
        elif args[:2] == ["rm", "-f"]:
            self.images.pop(args[2], None)
            Path(args[2]).unlink(missing_ok=True)
        elif args[0] == "dd":
            self.device = self.images[args[1].removeprefix("if=")]
        elif args[0] == "snap":
            assert self.mode == "ro", "the user's command must run while read-only"
        else:
            raise AssertionError(f"unexpected command {args}")
        return completed(args)

    def _write(self, path: str, content: str) -> None:
        self.images[path] = content
        Path(path).write_text(content)


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake system; the origin's mount table is ``mounted`` (empty once the user unmounts)."""
    monkeypatch.setattr(remount, "check_cow_dir", lambda cow_dir, target: None)
    mounted = [Mount(1, DevNum(254, 16), "/", MP, "ext4", DEV, "rw")]
    monkeypatch.setattr(remount, "mounts_of", lambda dev: tuple(mounted))
    monkeypatch.setattr("snapkit.host.target.block_devnum", lambda path: DevNum(254, 16))

    def build(fail_at: int | None = None) -> tuple[FakeSystem, RemountMethod, list[Mount]]:
        fake = FakeSystem(Faults(fail_at), tmp_path)
        return fake, RemountMethod(SimpleNamespace(run=fake, files=LocalFiles())), mounted  # type: ignore[arg-type]

    return build


TARGET = Target(Path(DEV), MP, "ext4", (254, 16))


def request(fake: FakeSystem, **kw: Any) -> CreateRequest:
    return CreateRequest(TARGET, "s1", **({"cow_dir": fake.cow_dir} | kw))


def created(fake: FakeSystem, method: RemountMethod) -> SnapshotRecord:
    plan, record = method.plan_create(request(fake))
    apply(plan)
    fake.faults = Faults()
    return record


def test_create_copies_while_read_only_and_ends_read_write(make: Any) -> None:
    fake, method, _ = make()
    plan, record = method.plan_create(request(fake))
    assert [s.description for s in plan.steps] == [
        "mount -o remount,ro /mnt/o",
        f"cp --sparse=always {DEV} {fake.cow_dir}/s1.img",
        "mount -o remount,rw /mnt/o",
    ]
    apply(plan)
    assert fake.mode == "rw" and fake.images == {f"{fake.cow_dir}/s1.img": "v1"}
    assert record.device == f"{fake.cow_dir}/s1.img" and record.origin == DEV
    assert record.details == {"mountpoint": "/mnt/o", "fstype": "ext4"}
    assert method.status(record).state is State.ACTIVE


CREATE_STEPS = 3


@pytest.mark.parametrize("at", range(CREATE_STEPS))
def test_a_failure_at_every_step_leaves_it_read_write_and_clean(make: Any, at: int) -> None:
    fake, method, _ = make(fail_at=at)
    before = fake.state()
    plan, _ = method.plan_create(request(fake))
    with pytest.raises(PlanError) as caught:
        apply(plan)
    assert fake.state() == before
    assert not caught.value.undo_failures


def test_negative_control_without_the_undo_it_stays_read_only(make: Any) -> None:
    fake, method, _ = make(fail_at=1)
    plan, _ = method.plan_create(request(fake))
    plan.steps[0].do()
    with pytest.raises(CommandError):
        plan.steps[1].do()
    assert fake.mode == "ro"


def test_negative_control_a_failed_cp_leaves_a_partial_image(make: Any) -> None:
    fake, method, _ = make(fail_at=1)
    plan, _ = method.plan_create(request(fake))
    plan.steps[0].do()
    with pytest.raises(CommandError):
        plan.steps[1].do()
    assert (fake.cow_dir / "s1.img").read_text() == "partial"


def test_an_image_that_appears_after_planning_is_refused_and_kept(make: Any) -> None:
    fake, method, _ = make()
    plan, _ = method.plan_create(request(fake))
    (fake.cow_dir / "s1.img").write_text("someone else's")
    with pytest.raises(PlanError, match=r"s1\.img exists"):
        apply(plan)
    assert (fake.cow_dir / "s1.img").read_text() == "someone else's" and fake.mode == "rw"


def test_a_cow_dir_that_is_not_there_yet_is_made(make: Any) -> None:
    fake, method, _ = make()
    cow_dir = fake.cow_dir / "state" / "cow"  # flow's default: under the state directory
    plan, record = method.plan_create(request(fake, cow_dir=cow_dir))
    apply(plan)
    assert (cow_dir / "s1.img").read_text() == "v1" and record.device == f"{cow_dir}/s1.img"


def test_a_file_open_for_writing_refuses_and_changes_nothing(make: Any) -> None:
    fake, method, _ = make()
    fake.busy = True
    before = fake.state()
    plan, _ = method.plan_create(request(fake))
    with pytest.raises(PlanError, match="busy"):
        apply(plan)
    assert fake.state() == before


def test_a_users_command_runs_read_only_with_the_device_named(make: Any) -> None:
    fake, method, _ = make()
    plan, record = method.plan_create(request(fake, cow_dir=None, command=("snap", "it")))
    apply(plan)
    assert fake.mode == "rw" and fake.images == {}
    ((argv, env),) = [(a, e) for a, e in fake.ran if a[0] == "snap"]
    assert argv == ["snap", "it"]
    assert env == {"SNAPKIT_DEVICE": DEV, "SNAPKIT_MOUNTPOINT": "/mnt/o"}
    assert record.device == "" and record.details["command"] == "snap it"
    assert "user command" in method.status(record).message
    with pytest.raises(RefusedError, match="user command"):
        method.plan_merge(record)
    assert method.plan_discard(record).steps == ()


@pytest.mark.parametrize("at", range(CREATE_STEPS))
def test_a_failing_users_command_leaves_it_read_write(make: Any, at: int) -> None:
    fake, method, _ = make(fail_at=at)
    plan, _ = method.plan_create(request(fake, cow_dir=None, command=("snap", "it")))
    with pytest.raises(PlanError):
        apply(plan)
    assert fake.mode == "rw"


def test_refusals(make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, method, _ = make()
    with pytest.raises(UsageError, match="somewhere to copy to"):
        method.plan_create(request(fake, cow_dir=None))
    unmounted = Target(Path(DEV), None, "ext4", (254, 16))
    assert method.unsuitable(unmounted) and method.unsuitable(TARGET) is None
    with pytest.raises(RefusedError, match="not mounted"):
        method.plan_create(CreateRequest(unmounted, "s1", cow_dir=tmp_path))
    (tmp_path / "s1.img").write_text("x")
    with pytest.raises(RefusedError, match="exists"):
        method.plan_create(request(fake))
    monkeypatch.undo()  # the real check_cow_dir: a --cow-dir on the filesystem made read-only
    on_origin = Target(Path(DEV), tmp_path, "ext4", (254, 16))
    with pytest.raises(RefusedError, match="is on the filesystem being snapshotted"):
        method.plan_create(CreateRequest(on_origin, "s2", cow_dir=tmp_path))


def test_merge_is_refused_while_mounted_then_copies_back(make: Any) -> None:
    fake, method, mounted = make()
    record = created(fake, method)
    fake.device = "v2"
    with pytest.raises(RefusedError, match="is mounted at /mnt/o"):
        method.plan_merge(record)
    mounted.clear()
    apply(method.plan_merge(record))
    assert fake.device == "v1" and fake.images == {}
    assert method.status(record).state is State.INVALID


def test_a_failed_copy_back_keeps_the_image_for_a_retry(make: Any) -> None:
    fake, method, mounted = make()
    record = created(fake, method)
    mounted.clear()
    fake.faults = Faults(0)
    with pytest.raises(PlanError):
        apply(method.plan_merge(record))
    assert record.device in fake.images
    apply(method.plan_merge(record))
    assert fake.images == {}


def test_discard_deletes_the_image_and_keeps_the_origin(make: Any) -> None:
    fake, method, _ = make()
    record = created(fake, method)
    fake.device = "v2"
    apply(method.plan_discard(record))
    assert fake.images == {} and fake.device == "v2" and fake.mode == "rw"
    assert method.status(record).state is State.INVALID
