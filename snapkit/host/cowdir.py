"""Where a COW file may go: never on the filesystem being snapshotted, and not where it
cannot grow to its size.

Shared by every method that keeps a COW or an image file in ``--cow-dir`` (dm, dm-direct,
remount-ro) and by the stack, which checks it against the filesystem at the top of a stacked
origin (the method below sees only the base device, on which nothing is mounted).

The COW is a sparse file: it is accepted at any size and only takes space as the origin
changes. If the filesystem under it fills first, the loop device gets ENOSPC and the kernel
drops the snapshot for good; so the room is checked at create (:func:`check_cow_space`) and
reported by ``snapshot watch`` (:func:`room`), before rather than after the loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from snapkit.dm.table import DevNum
from snapkit.errors import ValidationError
from snapkit.host.target import mounts, mounts_of
from snapkit.model import Target
from snapkit.validate import format_size


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_cow_dir(cow_dir: Path, target: Target) -> None:
    """Refuse a COW on the filesystem being snapshotted: the snapshot would write into itself,
    and the suspend would deadlock on the COW's own I/O."""
    where = _existing_ancestor(cow_dir)
    if not where.is_dir():
        raise ValidationError(
            f"--cow-dir {cow_dir} is not a directory", hint="give a directory on another filesystem"
        )
    same = False
    if target.mountpoint is not None:
        same = os.stat(where).st_dev == os.stat(target.mountpoint).st_dev
    if not same:
        points = [m.mountpoint for m in mounts_of(DevNum(*target.devnum), mounts())]
        same = any(where == p or p in where.parents for p in points)
    if same:
        raise ValidationError(
            f"--cow-dir {cow_dir} is on the filesystem being snapshotted ({target.device})",
            hint="put the COW on another filesystem, e.g. --cow-dir /var/tmp",
        )


@dataclass(frozen=True)
class Room:
    """The free space of the filesystem that holds a COW directory."""

    directory: Path  # the directory, or its nearest existing ancestor
    free: int  # bytes an unprivileged writer may still use (statvfs f_bavail)
    on_root: bool  # the root filesystem: filling it stops far more than the snapshot

    def words(self) -> str:
        where = "the root filesystem" if self.on_root else f"the filesystem of {self.directory}"
        return f"{format_size(self.free)} free on {where}"


def room(cow_dir: Path) -> Room:
    """How much the COW under ``cow_dir`` may still grow before its filesystem is full."""
    where = _existing_ancestor(cow_dir)
    st = os.statvfs(where)
    on_root = os.stat(where).st_dev == os.stat("/").st_dev
    return Room(where, st.f_bavail * st.f_frsize, on_root)


def check_cow_space(cow_dir: Path, size: int, *, force: bool) -> None:
    """Refuse a COW that may grow past the free space under ``cow_dir``, unless ``force``:
    a sparse COW is accepted at any size, and the snapshot is lost, after the fact, only
    when the filesystem under it fills."""
    here = room(cow_dir)
    if size <= here.free or force:
        return
    fill = (
        "; filling it would also make every other write to / fail (logs, package updates, logins)"
        if here.on_root
        else ""
    )
    raise ValidationError(
        f"a COW of {format_size(size)} may outgrow the {here.words()}: the kernel drops the "
        f"snapshot when {here.directory} fills{fill}",
        hint=f"give --cow-size {format_size(here.free)} or less, a --cow-dir with more room, or "
        "--force to take the risk",
    )


def cow_room(cow_file: Path) -> tuple[Room, int]:
    """The room under a live COW file, and how much the file may still grow: its size less
    what it already holds (a sparse file takes space only as chunks are written)."""
    st = os.stat(cow_file)
    return room(cow_file.parent), max(st.st_size - st.st_blocks * 512, 0)


__all__ = ["Room", "check_cow_dir", "check_cow_space", "cow_room", "room"]
