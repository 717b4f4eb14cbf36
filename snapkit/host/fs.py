"""Filesystems: FIFREEZE/FITHAW, and what each filesystem needs to be checked and mounted as a
snapshot. (The mount table is parsed in :mod:`snapkit.host.target`.) This module imports nothing
heavy: the freeze watchdog loads it, and its start-up time is paid before every freeze.

Snapshot mount options: a snapshot taken of a mounted filesystem looks, to the filesystem, like a
disk after a power cut with a dirty journal and the same UUID as the origin. So ext4 mounts it
with ``noload`` (no journal replay on a read-only snapshot), xfs with ``norecovery,nouuid`` (xfs
refuses a second mount of the same UUID), btrfs with ``ro`` only.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from snapkit.errors import OperationError, RefusedError

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
# Filesystems with a freeze_fs of their own (FIFREEZE flushes and quiesces them). reiserfs has
# had one (reiserfs_freeze) since 2.6; the campaign's reiserfs-freeze-lvm rows use it (6.1).
FREEZABLE = frozenset(
    {"ext4", "ext3", "ext2", "xfs", "btrfs", "f2fs", "gfs2", "jfs", "nilfs2", "reiserfs"}
)

# Filesystems that a device-mapper suspend does not freeze, so a snapshot taken through one
# (lvcreate -s, a dm table swap) must freeze them explicitly. Measured on the 6.1 guest kernel:
# a suspend of the dm device under a mounted btrfs leaves its dirty data unwritten and lets new
# writes through, because freeze_bdev() does not find btrfs's superblock from that device; the
# campaign's unsynced writer lost acknowledged writes that way. ext4 and xfs are frozen.
SUSPEND_DOES_NOT_FREEZE = frozenset({"btrfs"})


def _ioctl_mountpoint(mountpoint: Path, request: int) -> None:
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def freeze(mountpoint: Path) -> None:
    """FIFREEZE: block writers, flush, and mark the filesystem clean on disk."""
    try:
        _ioctl_mountpoint(mountpoint, FIFREEZE)
    except OSError as exc:
        hint = {
            errno.EBUSY: "it is already frozen (by fsfreeze, or another snapkit)",
            errno.EOPNOTSUPP: "this filesystem cannot be frozen; use another method",
            errno.EPERM: "freezing needs root (CAP_SYS_ADMIN)",
        }.get(exc.errno or 0)
        raise OperationError(f"cannot freeze {mountpoint}: {exc.strerror}", hint=hint) from exc


def thaw(mountpoint: Path) -> bool:
    """FITHAW. Returns False if it was not frozen (EINVAL, harmless: someone thawed it first)."""
    try:
        _ioctl_mountpoint(mountpoint, FITHAW)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise OperationError(f"cannot thaw {mountpoint}: {exc.strerror}") from exc
    return True


def thaw_fd(fd: int) -> bool:
    """FITHAW on an already open fd (the watchdog's, opened before the freeze)."""
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def fsck_argv(fstype: str, device: str) -> list[str]:
    """A read-only check that changes nothing on ``device`` and exits non-zero on damage."""
    if fstype in ("ext2", "ext3", "ext4"):
        return ["e2fsck", "-fn", device]
    if fstype == "xfs":
        return ["xfs_repair", "-n", device]
    if fstype == "btrfs":
        return ["btrfs", "check", "--readonly", "--force", device]
    raise RefusedError(f"no read-only checker known for {fstype}")


def snapshot_mount_options(fstype: str) -> tuple[str, ...]:
    """Options to mount a point-in-time copy read-only, beside a mounted origin (see above)."""
    return {
        "ext4": ("ro", "noload"),
        "ext3": ("ro", "noload"),
        "xfs": ("ro", "norecovery", "nouuid"),
    }.get(fstype, ("ro",))


__all__ = [
    "FIFREEZE",
    "FITHAW",
    "FREEZABLE",
    "SUSPEND_DOES_NOT_FREEZE",
    "freeze",
    "fsck_argv",
    "snapshot_mount_options",
    "thaw",
    "thaw_fd",
]
