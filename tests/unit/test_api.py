"""The Python API (snapkit/api.py) on the fakes: the whole life cycle through it alone, the
context manager that discards what it created (also when its block raised), sizes as bytes
or strings, the error tree, ``snapshot umount`` (layer included), and ``import snapkit``
staying cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import snapkit
from snapkit import api, errors
from snapkit.cli import main
from snapkit.dm.status import SnapshotUsage, StatusLine
from snapkit.flow import Flow
from snapkit.host.target import Mount
from snapkit.methods import registry
from snapkit.methods.base import Host
from snapkit.model import SnapshotRecord, State, Target
from snapkit.run import Completed
from snapkit.settings import Settings
from tests.unit.fakes import SIZE, FakeRun, RunOptions, World, completed, make_world

# -- a host whose mount and umount keep a mount table, for Flow.mount_table ------------------


class MountingRun(FakeRun):
    """FakeRun (blockdev, blkid) plus mount and umount, kept as mountinfo would show them."""

    def __init__(self, world: World) -> None:
        super().__init__(world.faults)
        self.world = world
        self.table: list[Mount] = []
        self.busy: set[Path] = set()

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        if args[0] == "mount":
            device, where = args[-2], Path(args[-1])
            info = self.world.dm.info(device.removeprefix("/dev/mapper/"))
            assert info is not None, args
            fstype = args[args.index("-t") + 1] if "-t" in args else "ext4"
            mount = Mount(len(self.table) + 30, info.dev, "/", where, fstype, device, "ro")
            self.table.append(mount)
            return completed(args)
        if args[0] == "umount":
            where = Path(args[1])
            if where in self.busy:
                return completed(args, returncode=32, err=f"umount: {where}: target is busy.\n")
            self.table = [m for m in self.table if m.mountpoint != where]
            return completed(args)
        return super().answer(args, opts)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    world = make_world(tmp_path)
    run = MountingRun(world)
    world.run = run
    world.host = Host(dm=world.dm, run=run, loops=world.loops, files=world.files)
    monkeypatch.setattr("snapkit.flow.resolve", lambda _spec: world.target())
    return world


def _flow(world: World) -> Flow:
    run = world.run
    assert isinstance(run, MountingRun)
    return Flow(
        world.host,
        settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir / "locks"),
        mount_table=lambda: tuple(run.table),
    )


def _dir(world: World, name: str) -> Path:
    where = world.cow_dir / name
    where.mkdir(exist_ok=True)
    return where


# -- the life cycle ---------------------------------------------------------------------------


def test_the_whole_life_cycle_through_the_api(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _flow(world)
    snap = snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    assert snap.name == "s1" and snap.last_status is not None
    assert snap.last_status.state is State.ACTIVE
    assert snapkit.get("s1", flow=flow).status().record.device == "/dev/mapper/s1"
    assert [s.record.name for s in snapkit.list_snapshots(flow=flow)] == ["s1"]

    where = _dir(world, "view")
    assert snap.mount(where) == where
    done = snap.umount()
    assert done.mountpoints == (where,) and done.layer is None
    assert not world.run.table  # type: ignore[attr-defined]

    # merge, with the kernel halfway for one look and then done
    world.dm.statuses["data"] = (
        StatusLine(0, SIZE, "snapshot-merge", SnapshotUsage(40, SIZE, 16)),
    )

    def kernel_finishes(_seconds: float) -> None:
        world.dm.statuses.pop("data", None)

    monkeypatch.setattr("snapkit.flow.time.sleep", kernel_finishes)
    seen: list[float] = []
    merged = snap.merge(wait=True, progress=seen.append)
    assert merged.state is State.MERGED and snap.last_status is merged
    assert seen[-1] == 100.0 and all(0.0 <= p <= 100.0 for p in seen) and len(seen) >= 2, seen
    assert flow.load().snapshots == () and not world.files.files


def test_dry_runs_are_the_plan_text_and_change_nothing(world: World) -> None:
    flow = _flow(world)
    before = world.state()
    text = snapkit.create("/mnt/o", name="s1", method="dm", dry_run=True, flow=flow)
    assert isinstance(text, str) and "snapshot" in text
    assert world.state() == before and flow.load().snapshots == ()
    snap = snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    shown = snap.discard(dry_run=True)
    assert isinstance(shown, str) and flow.load().snapshot("s1") is not None


def test_a_name_is_made_up_when_none_is_given(world: World) -> None:
    snap = snapkit.create("/mnt/o", method="dm", cow_dir=world.cow_dir, flow=_flow(world))
    assert snap.name.startswith("snap-") and len(snap.name) == len("snap-") + 8


# -- the context manager ----------------------------------------------------------------------


def test_the_with_block_unmounts_and_discards(world: World) -> None:
    flow, before = _flow(world), world.state()
    with snapkit.snapshot("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow) as s:
        s.mount(_dir(world, "view"))
        assert flow.load().snapshot("s1") is not None
    assert flow.load().snapshots == () and world.state() == before
    assert not world.run.table  # type: ignore[attr-defined]


def test_the_with_block_discards_also_when_its_body_raises(world: World) -> None:
    flow, before = _flow(world), world.state()

    class Boom(Exception):
        pass

    making = snapkit.snapshot("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    with pytest.raises(Boom), making:
        raise Boom
    assert flow.load().snapshots == () and world.state() == before


def test_keep_leaves_the_snapshot_and_its_mount(world: World) -> None:
    flow = _flow(world)
    with snapkit.snapshot("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow) as s:
        s.mount(_dir(world, "view"))
        assert s.keep() is s
    assert flow.load().snapshot("s1") is not None and world.run.table  # type: ignore[attr-defined]


def test_a_merge_in_the_block_is_not_followed_by_a_discard(world: World) -> None:
    flow = _flow(world)
    with snapkit.snapshot("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow) as s:
        s.merge(wait=True)
    assert flow.load().snapshots == ()


def test_a_handle_from_get_is_not_discarded_by_its_block(world: World) -> None:
    flow = _flow(world)
    snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    with snapkit.get("s1", flow=flow):
        pass
    assert flow.load().snapshot("s1") is not None


def test_a_failed_cleanup_is_raised_and_the_snapshot_kept(world: World) -> None:
    flow = _flow(world)
    view = _dir(world, "view")
    with (
        pytest.raises(snapkit.OperationError, match="target is busy"),
        snapkit.snapshot("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow) as s,
    ):
        s.mount(view)
        world.run.busy.add(view)  # type: ignore[attr-defined]
    assert flow.load().snapshot("s1") is not None


# -- sizes and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["2G", 2 << 30])
def test_sizes_are_bytes_or_strings(world: World, size: int | str) -> None:
    snap = snapkit.create(
        "/mnt/o", name="s1", method="dm", cow_size=size, cow_dir=world.cow_dir, flow=_flow(world)
    )
    assert world.files.files[world.cow_dir / "s1.cow"] == 2 << 30, snap


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (True, snapkit.UsageError),
        (1.5, snapkit.UsageError),
        (0, errors.ValidationError),
        ("2 apples", errors.ValidationError),
    ],
)
def test_a_bad_size_is_refused_before_anything(world: World, size: object, error: type) -> None:
    before = world.state()
    with pytest.raises(error):
        snapkit.create("/mnt/o", name="s1", method="dm", cow_size=size, flow=_flow(world))  # type: ignore[arg-type]
    assert world.state() == before


def test_chunk_size_is_bytes_or_a_string() -> None:
    assert api._chunk("4K") == api._chunk(4096) == 8
    assert api._chunk(64 << 10) == 128
    with pytest.raises(snapkit.UsageError, match="sectors"):
        api._chunk(1000)
    with pytest.raises(errors.ValidationError):
        api._chunk(3 * 512)


def test_a_refusal_is_a_refused_error_with_a_hint_and_changes_nothing(world: World) -> None:
    flow = _flow(world)
    snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    before = world.state()
    with pytest.raises(snapkit.RefusedError) as caught:
        snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    assert caught.value.message == "the name 's1' is already in use"
    assert caught.value.hint == "choose another --name"
    assert world.state() == before
    with pytest.raises(snapkit.RefusedError, match="no snapshot named 'nope'"):
        snapkit.get("nope", flow=flow)


# -- the public surface -----------------------------------------------------------------------


def test_the_public_names_resolve_and_none_is_shadowed_by_a_submodule() -> None:
    """A package attribute named like a submodule (snapkit.recover) is replaced by the module
    once it is imported: no public name may be one."""
    package = Path(snapkit.__file__).parent
    submodules = {p.stem for p in package.glob("*.py")} | {
        p.name for p in package.iterdir() if (p / "__init__.py").exists()
    }
    assert not set(snapkit.__all__) & submodules
    for name in snapkit.__all__:
        assert getattr(snapkit, name) is not None
    assert snapkit.RefusedError is errors.RefusedError
    assert issubclass(snapkit.OperationError, snapkit.SnapkitError)
    assert set(api.__all__) | {"__version__"} == set(snapkit.__all__)
    assert api.DEFAULT_METHOD == registry.DEFAULT_METHOD


def test_import_snapkit_is_cheap() -> None:
    probe = (
        "import sys, snapkit; a = {m for m in sys.modules if m.startswith('snapkit')}; "
        "snapkit.create; b = {m for m in sys.modules if m.startswith('snapkit')}; "
        "print(sorted(a)); print(sorted(b))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert out[0] == "['snapkit']"
    loaded = set(eval(out[1]))  # the API, and nothing of the verbs' machinery
    assert "snapkit.api" in loaded and not loaded & {
        "snapkit.flow",
        "snapkit.dm",
        "snapkit.methods",
    }


# -- umount -----------------------------------------------------------------------------------


def test_umount_of_one_directory_leaves_the_others(world: World) -> None:
    flow = _flow(world)
    snap = snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    a, b = _dir(world, "a"), _dir(world, "b")
    snap.mount(a)
    snap.mount(b)
    assert snap.umount(b).mountpoints == (b,)
    assert [m.mountpoint for m in world.run.table] == [a]  # type: ignore[attr-defined]
    with pytest.raises(snapkit.RefusedError, match=f"not mounted on {b}") as caught:
        snap.umount(b)
    assert caught.value.hint == f"it is mounted on {a}"


def test_umount_refusals(world: World) -> None:
    flow = _flow(world)
    snap = snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    with pytest.raises(snapkit.RefusedError, match="s1 is not mounted"):
        snap.umount()
    external = SnapshotRecord("s3", "freeze", "/dev/vdb", "", 0.0, {"command": "true"})
    flow.state.save(flow.load().with_snapshot(external))
    with pytest.raises(snapkit.RefusedError, match="snapkit mounted nothing"):
        snapkit.get("s3", flow=flow).umount()


def test_umount_of_a_dm_direct_copy_removes_its_layer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xfs's copy is mounted through a throwaway layer: the umount takes it away again, so
    the world is as it was before the mount."""
    xfs = Target(Path("/dev/mapper/data"), None, "xfs", (253, 0))
    monkeypatch.setattr("snapkit.flow.resolve", lambda _spec: xfs)
    flow = _flow(world)
    snap = snapkit.create("/mnt/o", name="s1", method="dm-direct", cow_dir=world.cow_dir, flow=flow)
    before, view = world.state(), _dir(world, "view")
    snap.mount(view)
    assert "layer" in flow.record("s1").details and world.dm.info("s1-layer") is not None
    done = snap.umount(view)
    assert done.layer == "/dev/mapper/s1-layer" and done.mountpoints == (view,)
    assert world.state() == before and "layer" not in flow.record("s1").details


# -- the CLI over it --------------------------------------------------------------------------


def _cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Flow:
    import snapkit.cli.snapshot as cli

    flow = _flow(world)

    @contextmanager
    def host() -> Iterator[Host]:
        yield world.host

    monkeypatch.setattr(cli, "real_host", host)
    monkeypatch.setattr(cli, "Flow", lambda _host: flow)
    return flow


def test_cli_umount_json_and_text(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = _cli(world, monkeypatch)
    snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    view = _dir(world, "view")
    assert main(["snapshot", "mount", "s1", str(view)]) == 0
    assert main(["snapshot", "umount", "s1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"name": "s1", "unmounted": [str(view)], "layer_removed": None}
    assert main(["snapshot", "mount", "s1", str(view)]) == 0
    assert main(["snapshot", "umount", "s1", str(view)]) == 0
    assert capsys.readouterr().out == f"unmounted s1 from {view}\n"


def test_cli_umount_refusal_is_one_line_with_a_hint(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = _cli(world, monkeypatch)
    snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    assert main(["snapshot", "umount", "s1"]) == 1
    err = capsys.readouterr().err
    assert err == "snapkit: error: snapshot s1 is not mounted (nothing to unmount)\n"
    assert main(["snapshot", "umount", "nope", "--json"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_create_saves_its_record_once_never_a_rebuilt_one_first(world: World) -> None:
    """Issue 17's crash states found it: create saved the state file twice at its end -- first
    the new snapshot as the kernel shows it (rebuilt: no stable id of its disk), then the real
    record. A power cut between the two left the rebuilt record, and after a reboot that moved
    the disk's number, recover loaded the origin's table over the wrong device."""
    flow = _flow(world)
    saved: list[object] = []
    save = flow.state.save
    flow.state.save = lambda data: (saved.append(data), save(data))[1]  # type: ignore[method-assign]
    snapkit.create("/mnt/o", name="s1", method="dm", cow_dir=world.cow_dir, flow=flow)
    rebuilt = [
        r.name
        for data in saved
        for r in data.snapshots  # type: ignore[attr-defined]
        if r.details.get("rebuilt")
    ]
    assert saved and rebuilt == []
