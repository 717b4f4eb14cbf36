"""Where a COW file may go: never on the filesystem being snapshotted.

Shared by every method that keeps a COW or an image file in ``--cow-dir`` (dm, dm-direct,
remount-ro) and by the stack, which checks it against the filesystem at the top of a stacked
origin (the method below sees only the base device, on which nothing is mounted).
"""

from __future__ import annotations

import os
from pathlib import Path

from snapkit.dm.table import DevNum
from snapkit.errors import ValidationError
from snapkit.host.target import mounts, mounts_of
from snapkit.model import Target


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


__all__ = ["check_cow_dir"]
