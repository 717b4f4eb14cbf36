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

# Filesystems whose freeze leaves an inconsistent image on the device, with why. Measured
# (kernel 6.1, the campaign's jfs rows, session 6): every frozen JFS copy -- FIFREEZE, a dm
# suspend, lvcreate -s, a thin snapshot -- fails ``fsck.jfs -n`` ("Errors detected in the
# Fileset File/Directory Allocation Map control information", "Filesystem is dirty but is
# marked clean"), 30 rows of 30, though no acknowledged write was missing. jfs_freeze shuts its
# log down and marks the superblock clean without writing the allocation maps' control pages,
# which an unmount or a read-only remount writes: the remount-ro rows pass. A snapshot merged
# back with stale maps hands out blocks still in use. So every method that freezes refuses it.
FREEZE_INCONSISTENT = {
    "jfs": "a frozen JFS is not consistent on disk: its freeze marks it clean without writing "
    "its allocation maps (fsck.jfs finds errors in every frozen copy)",
}
# The methods that do not rest on a freeze of the filesystem (a read-only remount; snapshots
# of the filesystem's own): the others refuse FREEZE_INCONSISTENT filesystems.
FREEZE_FREE_METHODS = frozenset({"remount-ro", "btrfs", "zfs"})


def freeze_refusal(
    fstype: str | None, method: str, *, force: bool, forceable: bool = True
) -> RefusedError | None:
    """The refusal for a method that would freeze ``fstype`` when that freeze is known to
    leave a broken image, or None. ``force`` takes the snapshot anyway (where the verb has a
    ``--force``: ``forceable``)."""
    why = FREEZE_INCONSISTENT.get(fstype or "")
    if why is None or method in FREEZE_FREE_METHODS or force:
        return None
    hint = "use snapshot create --method remount-ro (a read-only remount writes the maps)"
    return RefusedError(
        f"method {method} would freeze {fstype}: {why}",
        hint=hint + (", or pass --force to take it anyway" if forceable else ""),
    )


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
    "FREEZE_FREE_METHODS",
    "FREEZE_INCONSISTENT",
    "SUSPEND_DOES_NOT_FREEZE",
    "freeze",
    "freeze_refusal",
    "fsck_argv",
    "snapshot_mount_options",
    "thaw",
    "thaw_fd",
]
