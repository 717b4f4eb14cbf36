"""``btrfs``: a read-only subvolume snapshot (``btrfs subvolume snapshot -r``).

Where snapshots live. In the filesystem's top-level subvolume, at ``/.snapkit/NAME``, not inside
the origin: so they are not part of the user's data, do not show up in its directory tree (unless
the origin *is* the top level), and survive a merge that replaces the origin. snapkit reaches the
top level through a private mount (``subvolid=5`` at /run/snapkit/btrfs-*), made and removed by
each operation; the user's mounts are never touched.

Merge rolls the origin subvolume back by renaming, never by copying files:

1. rename the origin subvolume ``ORIG`` to ``ORIG.snapkit-old-NAME``;
2. snapshot ``/.snapkit/NAME`` (writable) as ``ORIG``;
3. delete the old origin, then the snapshot (merge consumes the snapshot, as LVM's does).

Each of 1-2 has its undo. The merge is refused when

* the origin is the top-level subvolume itself (it cannot be renamed or replaced): copy files
  back from the snapshot instead, or keep data in a subvolume;
* the origin subvolume is mounted (a mount holds the old subvolume, so the user would keep
  seeing the old content and the old one could not be deleted): unmount it first, and mount it
  again after the merge. The new origin has a new subvolume ID: mounts by ``subvol=PATH`` keep
  working, a mount by ``subvolid=`` would not.

Discard deletes ``/.snapkit/NAME``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import RefusedError
from snapkit.methods.base import CreateRequest, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor
from snapkit.target import Mount, block_devnum, mounts, mounts_of
from snapkit.validate import dm_name

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host

SNAP_DIR = ".snapkit"
TOP_ROOT = Path("/run/snapkit")
SUBVOL_ROOT_INODE = 256  # BTRFS_FIRST_FREE_OBJECTID: the root directory of every subvolume


class BtrfsMethod:
    name: ClassVar[str] = "btrfs"

    def __init__(self, host: Host, *, top_root: Path = TOP_ROOT) -> None:
        self.executor: Executor = host.run
        self.top_root = top_root

    def unsuitable(self, target: Target) -> str | None:
        if target.fstype != "btrfs":
            return f"{target.device} holds {target.fstype or 'no mounted filesystem'}, not btrfs"
        if target.mountpoint is None:
            return f"{target.device} is not mounted"
        if os.stat(target.mountpoint).st_ino != SUBVOL_ROOT_INODE:
            return f"{target.mountpoint} is not the root of a btrfs subvolume"
        return None

    # --- the private top-level mount -----------------------------------------------------------

    def _top(self, name: str) -> Path:
        return self.top_root / f"btrfs-{name}-{os.getpid()}"

    def _run(self, *argv: str) -> None:
        self.executor.run(list(argv))

    def _mount_top(self, device: str, top: Path) -> Step:
        def do() -> None:
            self._run("mkdir", "-p", str(top))
            self._run("mount", "-t", "btrfs", "-o", "subvolid=5", device, str(top))

        def undo() -> None:
            self.executor.run(["umount", str(top)], check=False)
            self.executor.run(["rmdir", str(top)], check=False)

        return Step(f"mount the top level of {device} at {top}", do, undo, f"umount {top}")

    def _umount_top(self, top: Path) -> Step:
        def do() -> None:
            self._run("umount", str(top))
            self._run("rmdir", str(top))

        return Step(f"umount {top}", do)

    def _delete(self, path: Path) -> Step:
        return Step(f"btrfs subvolume delete {path}",
                    lambda: self._run("btrfs", "subvolume", "delete", str(path)))  # fmt: skip

    # --- create --------------------------------------------------------------------------------

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        target = request.target
        reason = self.unsuitable(target)
        if reason:
            raise RefusedError(reason)
        assert target.mountpoint is not None
        name = dm_name(request.name, what="snapshot name")
        origin_subvol = _subvol_of(target)
        top = self._top(name)
        snap = top / SNAP_DIR / name
        device = str(target.device)

        def snapshot() -> None:
            self._run("mkdir", "-p", str(top / SNAP_DIR))
            if os.path.lexists(snap):
                raise RefusedError(f"a snapshot named {name} exists", hint="choose another name")
            self._run("btrfs", "subvolume", "snapshot", "-r", str(target.mountpoint), str(snap))

        def unsnapshot() -> None:
            if os.path.lexists(snap):
                self._run("btrfs", "subvolume", "delete", str(snap))

        steps = (
            self._mount_top(device, top),
            Step(f"btrfs subvolume snapshot -r {target.mountpoint} {snap}", snapshot,
                 unsnapshot, f"btrfs subvolume delete {snap}"),
            self._umount_top(top),
        )  # fmt: skip
        subvol = f"{SNAP_DIR}/{name}"
        record = SnapshotRecord(
            name=name,
            method=self.name,
            origin=device,
            device=device,
            created_at=time.time(),
            details={
                "subvol": subvol,
                "origin_subvol": origin_subvol,
                "mountpoint": str(target.mountpoint),
                "mount_options": f"ro,subvol={subvol}",
            },
        )
        return Plan(f"btrfs snapshot of {target.mountpoint} as {subvol}", steps), record

    # --- status, merge, discard ----------------------------------------------------------------

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        seen = _any_mount(record.device)
        if seen is None:
            return SnapshotStatus(record, State.ACTIVE, None, None,
                                  "filesystem not mounted: not checked")  # fmt: skip
        listing = self.executor.run(["btrfs", "subvolume", "list", "-a", str(seen)]).stdout
        paths = {line.rsplit(" path ", 1)[-1].removeprefix("<FS_TREE>/")
                 for line in listing.splitlines() if " path " in line}  # fmt: skip
        if record.details["subvol"] not in paths:
            return SnapshotStatus(record, State.INVALID, None, None, "the subvolume is gone")
        return SnapshotStatus(record, State.ACTIVE, None, None)

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        origin = record.details["origin_subvol"]
        if not origin:
            raise RefusedError(
                "the origin is the top-level subvolume, which cannot be replaced",
                hint="copy files back from the snapshot (mount -o "
                f"{record.details['mount_options']})",
            )
        mounted = [m.mountpoint for m in _mounts_of_device(record.device)
                   if m.root.strip("/") == origin]  # fmt: skip
        if mounted:
            raise RefusedError(
                f"the origin subvolume {origin} is mounted at {mounted[0]}",
                hint=f"umount {mounted[0]} first; snapkit never unmounts your filesystem",
            )
        top = self._top(record.name)
        current, old = top / origin, top / f"{origin}.snapkit-old-{record.name}"
        snap = top / record.details["subvol"]
        steps = (
            self._mount_top(record.device, top),
            Step(f"rename {current} to {old}",
                 lambda: self._run("mv", "-T", str(current), str(old)),
                 lambda: self._run("mv", "-T", str(old), str(current)), f"rename {old} back"),
            Step(f"btrfs subvolume snapshot {snap} {current}",
                 lambda: self._run("btrfs", "subvolume", "snapshot", str(snap), str(current)),
                 lambda: self._run("btrfs", "subvolume", "delete", str(current)),
                 f"btrfs subvolume delete {current}"),
            self._delete(old),
            self._delete(snap),
            self._umount_top(top),
        )  # fmt: skip
        return Plan(f"roll {origin} back to {record.details['subvol']}", steps)

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        top = self._top(record.name)
        steps = (
            self._mount_top(record.device, top),
            self._delete(top / record.details["subvol"]),
            self._umount_top(top),
        )
        return Plan(f"discard {record.details['subvol']}", steps)


def _subvol_of(target: Target) -> str:
    """The origin's path inside the filesystem ("" for the top level), from mountinfo's root."""
    shown = [m for m in mounts() if m.mountpoint == target.mountpoint]
    if not shown:
        raise RefusedError(f"{target.mountpoint} is not mounted")
    return shown[-1].root.strip("/")


def _mounts_of_device(device: str) -> tuple[Mount, ...]:
    dev = block_devnum(device)
    return mounts_of(dev) if dev is not None else ()


def _any_mount(device: str) -> Path | None:
    found = _mounts_of_device(device)
    return found[0].mountpoint if found else None


__all__ = ["BtrfsMethod"]
