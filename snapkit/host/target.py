"""Resolve what the user named (a mount point or a block device) into a :class:`Target`.

The kernel is the source of truth: ``/proc/self/mountinfo`` says what is mounted where and from
which device number, and ``/sys/dev/block/MAJ:MIN`` says what a device number is (its kernel
name, size, whether it is a partition and at which offset, whether it is a dm device and what
holds it). Paths under /dev are only looked up, never trusted: without udev there may be no
``/dev/block`` or ``/dev/mapper`` links, and a stale node could name another device.

btrfs is the exception to "the mount's device number is the device's": its mountinfo shows an
anonymous ``0:N``, so for it the mount source is stat'ed instead. ZFS has no block device at
all: a ZFS mount resolves to its dataset (the mount source, ``pool/fs``), which stands where
the device would, and its anonymous ``0:N`` as the number.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from snapkit.dm.table import DevNum
from snapkit.errors import RefusedError
from snapkit.model import Target
from snapkit.run import Executor

MOUNTINFO = Path("/proc/self/mountinfo")
SYS_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo, with the octal escapes of paths decoded."""

    mount_id: int
    devnum: DevNum
    root: str
    mountpoint: Path
    fstype: str
    source: str
    options: str


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and len(text[i + 1 : i + 4]) == 3 and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        major, minor = fields[2].split(":")
        mounts.append(
            Mount(
                mount_id=int(fields[0]),
                devnum=DevNum(int(major), int(minor)),
                root=_unescape(fields[3]),
                mountpoint=Path(_unescape(fields[4])),
                fstype=tail[0],
                source=_unescape(tail[1]),
                options=fields[5],
            )
        )
    return tuple(mounts)


def mounts(path: Path = MOUNTINFO) -> tuple[Mount, ...]:
    return parse_mountinfo(path.read_text())


def block_devnum(path: str | Path) -> DevNum | None:
    """The device number of a block special file, or None if ``path`` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return DevNum(os.major(st.st_rdev), os.minor(st.st_rdev))


def mount_devnum(mount: Mount) -> DevNum | None:
    """The block device behind a mount (btrfs: its source, since mountinfo shows 0:N)."""
    if mount.devnum.major != 0:
        return mount.devnum
    return block_devnum(mount.source) if mount.source.startswith("/") else None


def mounts_of(dev: DevNum, table: tuple[Mount, ...] | None = None) -> tuple[Mount, ...]:
    return tuple(m for m in (table if table is not None else mounts()) if mount_devnum(m) == dev)


@dataclass(frozen=True)
class BlockInfo:
    """What sysfs says of one block device."""

    devnum: DevNum
    kname: str  # e.g. loop0, vda1, dm-3
    size_sectors: int
    partition_start: int | None  # sectors into the parent disk, for a partition
    dm_name: str | None
    dm_uuid: str | None
    holders: tuple[str, ...]
    read_only: bool

    @property
    def path(self) -> Path:
        """The path snapkit uses for it: /dev/mapper/NAME for dm, else /dev/KNAME."""
        if self.dm_name is not None:
            return Path("/dev/mapper") / self.dm_name
        return Path("/dev") / self.kname


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def block_info(dev: DevNum, *, sys_block: Path = SYS_BLOCK) -> BlockInfo | None:
    node = sys_block / str(dev)
    if not node.exists():
        return None
    kname = node.resolve().name
    size = int(_read(node / "size") or 0)
    start = _read(node / "start") if (node / "partition").exists() else None
    try:
        holders = tuple(sorted(p.name for p in (node / "holders").iterdir()))
    except OSError:
        holders = ()
    return BlockInfo(
        devnum=dev,
        kname=kname,
        size_sectors=size,
        partition_start=int(start) if start is not None else None,
        dm_name=_read(node / "dm" / "name"),
        dm_uuid=_read(node / "dm" / "uuid"),
        holders=holders,
        read_only=_read(node / "ro") == "1",
    )


# -- stable identity: finding a disk again after a reboot ------------------------------------
# Kernel names and major:minor follow probe order, which virtio-mmio (and USB, and SCSI) does
# not fix, so after a reboot 254:16 may be another disk. These are what does not move.


@dataclass(frozen=True)
class StableId:
    """``loop``: the backing file; ``serial``: the disk's serial (``part`` > 0: that partition
    of it); ``uuid``: the filesystem's UUID, when the disk has no serial."""

    kind: str
    value: str
    part: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" + (f"#{self.part}" if self.part else "")

    @classmethod
    def parse(cls, text: str) -> StableId | None:
        kind, _, rest = text.partition(":")
        value, _, part = (
            rest.rpartition("#") if kind == "serial" and "#" in rest else (rest, "", "")
        )
        if kind not in ("loop", "serial", "uuid") or not value:
            return None
        return cls(kind, value, int(part) if part.isdigit() else 0)


def _serial_of(node: Path) -> tuple[str, int]:
    """The serial of ``node``'s disk and ``node``'s partition number (0: the whole disk)."""
    part = _read(node / "partition")
    disk = node.resolve().parent if part else node
    serial = _read(disk / "serial") or _read(disk / "device" / "serial") or ""
    return serial, int(part) if part and part.isdigit() else 0


def stable_id(
    dev: DevNum, run: Executor | None = None, *, sys_block: Path | None = None
) -> StableId | None:
    """What names ``dev`` across reboots, or None if nothing does (a disk with no serial and
    no filesystem UUID). ``run`` is needed only for the UUID (``blkid``)."""
    node = (sys_block or SYS_BLOCK) / str(dev)
    if not node.exists():
        return None
    backing = _read(node / "loop" / "backing_file")
    if backing:
        return StableId("loop", backing)
    serial, part = _serial_of(node)
    if serial:
        return StableId("serial", serial, part)
    if run is not None:
        found = run.run(
            ["blkid", "-o", "value", "-s", "UUID", f"/dev/{node.resolve().name}"], check=False
        )
        if found.ok and found.stdout.strip():
            return StableId("uuid", found.stdout.strip())
    return None


def find_stable(
    ident: StableId, run: Executor | None = None, *, sys_block: Path | None = None
) -> DevNum | None:
    """The device ``ident`` names now, or None if it is not attached."""
    root = sys_block or SYS_BLOCK
    if ident.kind == "uuid":
        found = run.run(["blkid", "-U", ident.value], check=False) if run else None
        return block_devnum(found.stdout.strip()) if found and found.ok else None
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return None
    for entry in entries:
        major, _, minor = entry.name.partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        dev = DevNum(int(major), int(minor))
        if ident.kind == "loop" and _read(entry / "loop" / "backing_file") == ident.value:
            return dev
        if ident.kind == "serial" and _serial_of(entry) == (ident.value, ident.part):
            return dev
    return None


def resolve(spec: str, *, mountinfo: Path = MOUNTINFO, sys_block: Path = SYS_BLOCK) -> Target:
    """A mount point or a block device path -> Target; RefusedError for anything else."""
    table = mounts(mountinfo)
    dev = block_devnum(spec)
    if dev is not None:
        found = mounts_of(dev, table)
        mount = found[0] if found else None
    else:
        path = Path(spec)
        if not path.is_dir():
            raise RefusedError(
                f"{spec} is neither a block device nor a mount point",
                hint="give a mounted directory or a device such as /dev/mapper/data",
            )
        real = path.resolve()
        candidates = [m for m in table if m.mountpoint == real]
        if not candidates:
            raise RefusedError(
                f"{spec} is not a mount point", hint="give the directory the filesystem is on"
            )
        mount = candidates[-1]  # the last mount on a directory is the visible one
        if mount.fstype == "zfs":
            return _zfs_target(mount)
        dev = mount_devnum(mount)
        if dev is None:
            raise RefusedError(
                f"{spec} is a {mount.fstype} mount with no block device under it",
                hint="snapkit snapshots block-device filesystems only",
            )
    info = block_info(dev, sys_block=sys_block)
    if info is None:
        raise RefusedError(f"{spec}: the kernel knows no block device {dev}")
    return Target(
        device=info.path,
        mountpoint=mount.mountpoint if mount else None,
        fstype=mount.fstype if mount else None,
        devnum=(dev.major, dev.minor),
    )


def _zfs_target(mount: Mount) -> Target:
    """A ZFS mount as a target: the dataset in the device's place. A snapshot's own mount
    (``pool/fs@snap``, read-only) is refused: it cannot be snapshotted again."""
    if "@" in mount.source:
        raise RefusedError(
            f"{mount.mountpoint} is the ZFS snapshot {mount.source}, not a filesystem",
            hint="give the mount point of the dataset it was taken of",
        )
    return Target(
        device=Path(mount.source),
        mountpoint=mount.mountpoint,
        fstype="zfs",
        devnum=(mount.devnum.major, mount.devnum.minor),
    )


__all__ = [
    "BlockInfo",
    "Mount",
    "StableId",
    "block_devnum",
    "block_info",
    "find_stable",
    "mount_devnum",
    "mounts",
    "mounts_of",
    "parse_mountinfo",
    "resolve",
    "stable_id",
]
