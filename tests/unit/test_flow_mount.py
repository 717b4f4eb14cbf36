"""``snapshot mount`` uses what the method recorded (btrfs: a subvolume of the origin's device)
and the filesystem's snapshot options (xfs nouuid), not a dm device name; ``status --json``
carries the method's details. A dm-direct copy of xfs or btrfs is mounted through a throwaway
layer, built all-or-nothing and recorded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from snapkit.cli.snapshot import status_json
from snapkit.dm.fake import FakeDm, Faults
from snapkit.errors import OperationError, RefusedError
from snapkit.flow import Flow
from snapkit.methods.base import Host
from snapkit.methods.dm.direct import DmDirectMethod
from snapkit.model import CreateRequest, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import apply
from snapkit.run import Completed
from snapkit.settings import Settings
from snapkit.state import StateData
from tests.unit.fakes import FakeRun, Recorder, RunOptions, World, completed, make_world

BTRFS = SnapshotRecord(
    "s1",
    "btrfs",
    "/dev/vdb",
    "/dev/vdb",
    0.0,
    {
        "subvol": ".snapkit/s1",
        "origin_subvol": "data",
        "mountpoint": "/mnt/o",
        "mount_options": "ro,subvol=.snapkit/s1",
    },
)
LVM_XFS = SnapshotRecord(
    "s2",
    "lvm",
    "/dev/mapper/vg-lv",
    "/dev/mapper/vg-s2",
    0.0,
    {"vg": "vg", "lv": "s2", "origin_lv": "lv", "fstype": "xfs"},
)
FREEZE = SnapshotRecord("s3", "freeze", "/dev/vdb", "", 0.0, {"command": "true"})


def _flow(tmp_path: Path) -> tuple[Flow, Recorder]:
    run = Recorder()
    host = Host(dm=FakeDm(faults=Faults()), run=run, loops=None, files=None)  # type: ignore[arg-type]
    flow = Flow(host, settings=Settings.under(tmp_path / "state"))
    flow.state.save(StateData(snapshots=(BTRFS, LVM_XFS, FREEZE)))
    return flow, run


def test_btrfs_mounts_its_subvolume_of_the_origin_device(tmp_path: Path) -> None:
    flow, run = _flow(tmp_path)
    flow.mount("s1", tmp_path)
    assert run.calls == [["mount", "-o", "ro,subvol=.snapkit/s1", "/dev/vdb", str(tmp_path)]]
    with pytest.raises(RefusedError, match="read-only"):
        flow.mount("s1", tmp_path, rw=True)


def test_lvm_xfs_mounts_its_writable_lv_with_nouuid(tmp_path: Path) -> None:
    flow, run = _flow(tmp_path)
    flow.mount("s2", tmp_path)
    flow.mount("s2", tmp_path, rw=True)
    assert run.calls == [
        ["mount", "-t", "xfs", "-o", "ro,nouuid", "/dev/mapper/vg-s2", str(tmp_path)],
        ["mount", "-t", "xfs", "-o", "nouuid", "/dev/mapper/vg-s2", str(tmp_path)],
    ]


def test_an_external_copy_has_nothing_to_mount(tmp_path: Path) -> None:
    flow, run = _flow(tmp_path)
    with pytest.raises(RefusedError, match="no device"):
        flow.mount("s3", tmp_path)
    assert run.calls == []


def test_status_json_carries_the_details() -> None:
    shown = status_json(SnapshotStatus(BTRFS, State.ACTIVE, None, None))
    assert shown["details"]["subvol"] == ".snapkit/s1"
    assert shown["details"]["mount_options"] == "ro,subvol=.snapkit/s1"


def test_a_read_only_copy_gets_the_no_replay_options(tmp_path: Path) -> None:
    """dm-direct's view is read-only: no log can be replayed into it."""
    from snapkit.dm.table import DevNum, Linear, Table

    flow, run = _flow(tmp_path)
    dm = flow.host.dm
    dm.add_block_device("/dev/loop0", DevNum(7, 0))  # type: ignore[attr-defined]
    dm.create("v1", uuid="SNAPKIT-v1-view")
    dm.load("v1", Table.single(2048, Linear(DevNum(7, 0), 0)), read_only=True)
    dm.resume("v1")
    view = SnapshotRecord(
        "v1", "dm-direct", "/dev/mapper/data", "/dev/mapper/v1", 0.0, {"fstype": "ext4"}
    )
    flow.state.save(flow.state.load().with_snapshot(view))
    flow.mount("v1", tmp_path)
    assert run.calls == [
        ["mount", "-t", "ext4", "-o", "ro,noload", "/dev/mapper/v1", str(tmp_path)]
    ]


# -- dm-direct on xfs and btrfs: mounted through a throwaway writable layer -------------------


class MountRun(FakeRun):
    """blockdev as FakeRun; mount and btrfs recorded, and failed by the shared fault counter."""

    def __init__(self, faults: Faults) -> None:
        super().__init__(faults)
        self.calls: list[list[str]] = []

    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        if args[0] not in ("mount", "btrfs"):
            return super().answer(args, opts)
        if self.faults.should_fail(" ".join(args)):
            return completed(args, returncode=32, err="mount: injected failure\n")
        self.calls.append(args)
        return completed(args)


def _direct(tmp_path: Path, fs: str) -> tuple[Flow, World, MountRun]:
    world = make_world(tmp_path)
    run = MountRun(world.faults)
    world.run = run
    world.host = Host(dm=world.dm, run=run, loops=world.loops, files=world.files)
    target = Target(Path("/dev/mapper/data"), None, fs, (253, 0))
    plan, record = DmDirectMethod(world.host).plan_create(
        CreateRequest(target, "s1", cow_dir=tmp_path)
    )
    apply(plan)
    flow = Flow(
        world.host, settings=Settings(state_dir=tmp_path / "state", lock_dir=tmp_path / "locks")
    )
    flow.state.save(StateData(snapshots=(record,)))
    (tmp_path / "m").mkdir()
    return flow, world, run


@pytest.mark.parametrize(("fs", "options"), [("xfs", "ro,nouuid"), ("btrfs", "ro")])
def test_an_xfs_or_btrfs_copy_mounts_through_a_layer(tmp_path: Path, fs: str, options: str) -> None:
    """The log replay goes into the layer's COW, never into the read-only copy."""
    flow, world, run = _direct(tmp_path, fs)
    flow.mount("s1", tmp_path / "m")
    mount = ["mount", "-t", fs, "-o", options, "/dev/mapper/s1-layer", str(tmp_path / "m")]
    forget = [["btrfs", "device", "scan", "--forget"]] if fs == "btrfs" else []
    assert run.calls == [*forget, mount]
    assert world.dm.state()["s1"].read_only and not world.dm.state()["s1-layer"].read_only
    details = flow.record("s1").details
    assert details["layer"] == "/dev/mapper/s1-layer"
    assert details["layer_cow"] == str(tmp_path / "s1.layer")
    # a second mount (after an umount) takes the layer that is there
    calls = len(world.faults.calls)
    flow.mount("s1", tmp_path / "m")
    assert not any(c.startswith("dm create") for c in world.faults.calls[calls:])
    with pytest.raises(RefusedError, match="read-only"):
        flow.mount("s1", tmp_path / "m", rw=True)


def test_a_layer_mount_fails_cleanly_at_every_step(tmp_path: Path) -> None:
    """A failure anywhere, the mount itself included, leaves no layer and no record of one."""
    probe, world, _ = _direct(tmp_path / "probe", "xfs")
    start = len(world.faults.calls)
    probe.mount("s1", tmp_path / "probe" / "m")
    total = len(world.faults.calls) - start
    assert total >= 6
    for n in range(total):
        flow, world, _ = _direct(tmp_path / str(n), "xfs")
        before = world.state()
        world.faults.fail_at = len(world.faults.calls) + n
        with pytest.raises(OperationError):
            flow.mount("s1", tmp_path / str(n) / "m")
        assert world.state() == before, f"failure at side effect {n} left a change"
        assert "layer" not in flow.record("s1").details


def test_a_refused_btrfs_lvm_copy_says_why_and_what_to_do(tmp_path: Path) -> None:
    """An LVM copy of a btrfs is mounted directly (no layer); a kernel before 6.7 refuses it
    while its origin is mounted (same fsid, EEXIST), and the hint says so; an xfs copy's
    failure (the control) gets only the dmesg hint."""
    flow, _ = _flow(tmp_path)
    btrfs_lv = replace(LVM_XFS, name="s4", details={**LVM_XFS.details, "fstype": "btrfs"})
    flow.state.save(StateData(snapshots=(btrfs_lv, LVM_XFS)))
    flow.host.run.returncode = 32  # type: ignore[attr-defined]
    flow.host.run.stderr = "mount: /mnt: File exists."  # type: ignore[attr-defined]
    with pytest.raises(OperationError) as caught:
        flow.mount("s4", tmp_path)
    assert "unmount the origin first" in (caught.value.hint or "")
    with pytest.raises(OperationError) as control:
        flow.mount("s2", tmp_path)
    assert "origin" not in (control.value.hint or "")
