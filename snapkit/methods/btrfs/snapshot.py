"""``btrfs``: a read-only subvolume snapshot (``btrfs subvolume snapshot -r``).

Where snapshots live. In the filesystem's top-level subvolume, at ``/.snapkit/NAME``, not inside
the origin: so they are not part of the user's data, do not show up in its directory tree (unless
the origin *is* the top level), and survive a merge that replaces the origin. snapkit reaches the
top level through a private mount (``subvolid=5`` at /run/snapkit/btrfs-*), made and removed by
each operation; the user's mounts are never touched.

Merge rolls the origin subvolume back by an atomic exchange, never by copying files: a
writable snapshot of ``/.snapkit/NAME`` takes the origin's place in one ``renameat2`` (see
:mod:`snapkit.methods.btrfs.merge`), so the origin exists at every instant; then the old origin
and the snapshot are deleted. Deleting the old origin is the point of no return: before it the
plan rolls back; from it on it only goes forward, and the error names the state (``ORIG`` holds
the snapshot's content) and the way out (``discard``, which deletes the snapshot if it is still
there and forgets it). ``snapkit recover`` settles a merge a crash cut short.
The merge is refused when

* the origin is the top-level subvolume itself (it cannot be renamed or replaced): copy files
  back from the snapshot instead, or keep data in a subvolume;
* the origin subvolume is mounted (a mount holds the old subvolume, so the user would keep
  seeing the old content and the old one could not be deleted): unmount it first, and mount it
  again after the merge. The new origin has a new subvolume ID: mounts by ``subvol=PATH`` keep
  working, a mount by ``subvolid=`` would not;
* the snapshot is mounted: it could not be deleted after the point of no return.

The private mount point is made, mounted, unmounted and removed in four steps, each undone on
its own, so no failure leaves a directory or a mount under /run/snapkit behind.

Discard deletes ``/.snapkit/NAME``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import OperationError, RefusedError
from snapkit.host.target import Mount, block_devnum, mounts, mounts_of
from snapkit.methods.btrfs.merge import Exchange, Swap, exchange
from snapkit.model import CreateRequest, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor
from snapkit.validate import dm_name

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host

SNAP_DIR = ".snapkit"
TOP_ROOT = Path("/run/snapkit")
SUBVOL_ROOT_INODE = 256  # BTRFS_FIRST_FREE_OBJECTID: the root directory of every subvolume


class BtrfsMethod:
    name: ClassVar[str] = "btrfs"
    records_first: ClassVar[bool] = False

    def __init__(
        self, host: Host, *, top_root: Path = TOP_ROOT, exchange: Exchange = exchange
    ) -> None:
        self.executor: Executor = host.run
        self.top_root = top_root
        self.exchange = exchange

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

    def _quiet(self, *argv: str) -> None:
        self.executor.run(list(argv), check=False)

    def _open_top(self, device: str, top: Path) -> tuple[Step, ...]:
        """mkdir and mount as two steps, so a failed mount still removes the directory. Their
        undos touch nothing but snapkit's private mount, so they always run: a rollback that
        stops at an undo it cannot do still unmounts and removes it."""
        mount = _mount_top_argv(device, top)
        return (
            Step(
                f"mkdir -p {top}",
                lambda: self._run("mkdir", "-p", str(top)),
                lambda: self._quiet("rmdir", str(top)),
                f"rmdir {top}",
                must_undo=True,
            ),
            Step(
                " ".join(mount),
                lambda: self._run(*mount),
                lambda: self._quiet("umount", str(top)),
                f"umount {top}",
                must_undo=True,
            ),
        )

    def _close_top(self, device: str, top: Path) -> tuple[Step, ...]:
        """umount and rmdir. Undoing the umount mounts the top level again, so that the undos
        before it (delete the new snapshot) still find what they remove."""
        mount = _mount_top_argv(device, top)
        return (
            Step(
                f"umount {top}",
                lambda: self._run("umount", str(top)),
                lambda: self._run(*mount),
                f"mount {top} again",
            ),
            Step(f"rmdir {top}", lambda: self._run("rmdir", str(top))),
        )

    def _delete_if_there(self, path: Path) -> None:
        """Idempotent, so that a merge or discard that failed after it can be run again."""
        if os.path.lexists(path):
            self._run("btrfs", "subvolume", "delete", str(path))

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

        steps = (
            *self._open_top(device, top),
            Step(
                f"btrfs subvolume snapshot -r {target.mountpoint} {snap}",
                snapshot,
                lambda: self._delete_if_there(snap),
                f"btrfs subvolume delete {snap}",
            ),
            *self._close_top(device, top),
        )
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
            return SnapshotStatus(
                record, State.ACTIVE, None, None, "filesystem not mounted: not checked"
            )
        listing = self.executor.run(["btrfs", "subvolume", "list", "-a", str(seen)]).stdout
        paths = {
            line.rsplit(" path ", 1)[-1].removeprefix("<FS_TREE>/")
            for line in listing.splitlines()
            if " path " in line
        }
        if record.details["subvol"] not in paths:
            return SnapshotStatus(record, State.INVALID, None, None, "the subvolume is gone")
        return SnapshotStatus(record, State.ACTIVE, None, None)

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        origin, subvol = record.details["origin_subvol"], record.details["subvol"]
        if not origin:
            raise RefusedError(
                "the origin is the top-level subvolume, which cannot be replaced",
                hint="copy files back from the snapshot (mount -o "
                f"{record.details['mount_options']})",
            )
        for held, what in ((origin, "origin subvolume"), (subvol, "snapshot")):
            mounted = [
                m.mountpoint for m in _mounts_of_device(record.device) if m.root.strip("/") == held
            ]
            if mounted:
                raise RefusedError(
                    f"the {what} {held} is mounted at {mounted[0]}",
                    hint=f"umount {mounted[0]} first; snapkit never unmounts your filesystem",
                )
        top = self._top(record.name)
        swap = Swap(self._run, self.exchange, self._delete_if_there, top, record)
        steps = (
            *self._open_top(record.device, top),
            *swap.steps(),
            *self._close_top(record.device, top),
        )
        return Plan(f"roll {origin} back to {subvol}", steps)

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        top = self._top(record.name)
        snap = top / record.details["subvol"]

        def gone() -> None:
            raise OperationError(
                f"not undone: the snapshot {record.details['subvol']} is deleted",
                hint=f"run 'snapkit snapshot discard {record.name}' again to forget it",
            )

        steps = (
            *self._open_top(record.device, top),
            Step(f"btrfs subvolume delete {snap}", lambda: self._delete_if_there(snap), gone),
            *self._close_top(record.device, top),
        )
        return Plan(f"discard {record.details['subvol']}", steps)


def _mount_top_argv(device: str, top: Path) -> tuple[str, ...]:
    return ("mount", "-t", "btrfs", "-o", "subvolid=5", device, str(top))


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
