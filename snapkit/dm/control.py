"""The one place that talks to the kernel's device-mapper.

It speaks the dm ioctl directly rather than running ``dmsetup``. The reason is the suspend
window: a writer on the origin stalls from the suspend to the resume, and two ``dmsetup``
processes inside that window were measured at 87-95 ms of stall against 43-60 ms for the whole
of ``lvcreate -s`` (BENCHMARKS.md, "freeze window", has the current figures). With the
ioctl, tables are loaded before the suspend and the suspend and resumes are three syscalls
from one process, with nothing spawned in between.

:class:`DmControl` is the seam: methods take one, :class:`IoctlDm` is the real one, and
``snapkit.dm.fake.FakeDm`` models the kernel's rules in memory for tests.

Without udev nobody makes ``/dev/mapper/NAME``; libdevmapper makes it itself when
``DM_DISABLE_UDEV=1``, and so does :class:`IoctlDm`: ``mknod`` on create, unlink on remove.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapkit.dm import ioctl
from snapkit.dm.ioctl import NO_FLAGS, Cmd, Flag, Header, TargetSpec
from snapkit.dm.status import StatusLine, parse_target_status
from snapkit.dm.table import DevNum, Line, Table, parse_target
from snapkit.errors import OperationError
from snapkit.validate import dm_name

log = logging.getLogger(__name__)

CONTROL = Path("/dev/mapper/control")
MAPPER_DIR = Path("/dev/mapper")
_MAX_BUFFER = 16 << 20


class DmError(OperationError):
    """A dm operation the kernel refused; ``errno`` says why (ENXIO: no such device, EBUSY:
    open or exists, EINVAL: a bad table)."""

    def __init__(self, op: str, name: str, err: int, *, hint: str | None = None) -> None:
        super().__init__(f"dm {op} {name or '-'}: {os.strerror(err)}", hint=hint)
        self.op = op
        self.name = name
        self.errno = err


@dataclass(frozen=True)
class DeviceInfo:
    """What ``DM_DEV_STATUS`` says of a device."""

    name: str
    uuid: str
    dev: DevNum
    open_count: int
    event_nr: int
    suspended: bool
    read_only: bool
    active_table: bool
    inactive_table: bool
    target_count: int


class DmControl(Protocol):
    """The dm operations snapkit uses, one kernel call each (create also makes the node)."""

    def version(self) -> tuple[int, int, int]: ...
    def list_devices(self) -> dict[str, DevNum]: ...
    def info(self, name: str) -> DeviceInfo | None: ...
    def create(self, name: str, *, uuid: str = "") -> DeviceInfo: ...
    def remove(self, name: str) -> None: ...
    def load(self, name: str, table: Table, *, read_only: bool = False) -> DeviceInfo: ...
    def clear(self, name: str) -> DeviceInfo: ...
    def suspend(self, name: str, *, lockfs: bool = True, flush: bool = True) -> DeviceInfo: ...
    def resume(self, name: str, *, lockfs: bool = True, flush: bool = True) -> DeviceInfo: ...
    def table(self, name: str, *, inactive: bool = False) -> Table | None: ...
    def status(self, name: str) -> tuple[StatusLine, ...]: ...
    def message(self, name: str, sector: int, message: str) -> str: ...


def resume_unchanged(dm: DmControl, name: str) -> DeviceInfo:
    """Resume ``name`` with the table it had: the undo of a suspend.

    A plain resume would swap in a table preloaded for the snapshot; clearing the inactive slot
    first is the only way dm offers to resume without changing the table.
    """
    dm.clear(name)
    return dm.resume(name)


def _info(header: Header) -> DeviceInfo:
    return DeviceInfo(
        name=header.name,
        uuid=header.uuid,
        dev=DevNum(*ioctl.decode_dev(header.dev)),
        open_count=header.open_count,
        event_nr=header.event_nr,
        suspended=bool(header.flags & Flag.SUSPEND),
        read_only=bool(header.flags & Flag.READONLY),
        active_table=bool(header.flags & Flag.ACTIVE_PRESENT),
        inactive_table=bool(header.flags & Flag.INACTIVE_PRESENT),
        target_count=header.target_count,
    )


def _specs(table: Table) -> list[TargetSpec]:
    return [
        TargetSpec(t.start, t.length, t.target.type_name, t.target.kernel_params()) for t in table
    ]


class IoctlDm:
    """:class:`DmControl` over ``/dev/mapper/control``. Use as a context manager, or close()."""

    def __init__(self, *, control: Path = CONTROL, mapper_dir: Path = MAPPER_DIR) -> None:
        self.mapper_dir = mapper_dir
        try:
            self._fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise DmError(
                "open",
                str(control),
                exc.errno or errno.EIO,
                hint="run as root with device-mapper loaded (modprobe dm-mod)",
            ) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> IoctlDm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        cmd: Cmd,
        name: str = "",
        *,
        flags: Flag = NO_FLAGS,
        payload: bytes = b"",
        target_count: int = 0,
        uuid: str = "",
    ) -> bytearray:
        """One ioctl; grows the buffer and retries while the kernel says it was too small."""
        size = ioctl.DEFAULT_BUFFER
        while True:
            header = Header(name=name, uuid=uuid, flags=flags, target_count=target_count)
            buf = ioctl.build(header, payload, size=size)
            try:
                fcntl.ioctl(self._fd, cmd.request, buf, True)
            except OSError as exc:
                raise DmError(cmd.name.lower(), name, exc.errno or errno.EIO) from None
            if not ioctl.unpack_header(buf).flags & Flag.BUFFER_FULL or size >= _MAX_BUFFER:
                return buf
            size *= 4

    def version(self) -> tuple[int, int, int]:
        return ioctl.unpack_header(self._call(Cmd.VERSION)).version

    def list_devices(self) -> dict[str, DevNum]:
        names = ioctl.unpack_names(self._call(Cmd.LIST_DEVICES))
        return {name: DevNum(*ioctl.decode_dev(dev)) for name, dev in names}

    def info(self, name: str) -> DeviceInfo | None:
        try:
            return _info(ioctl.unpack_header(self._call(Cmd.DEV_STATUS, existing(name))))
        except DmError as exc:
            if exc.errno == errno.ENXIO:
                return None
            raise

    def create(self, name: str, *, uuid: str = "") -> DeviceInfo:
        info = _info(ioctl.unpack_header(self._call(Cmd.DEV_CREATE, dm_name(name), uuid=uuid)))
        try:
            self._make_node(name, info.dev)
        except OSError:
            self._call(Cmd.DEV_REMOVE, name)
            raise
        return info

    def remove(self, name: str) -> None:
        info = self.info(name)
        self._call(Cmd.DEV_REMOVE, existing(name))
        if info is not None:
            self._drop_node(name, info.dev)

    def load(self, name: str, table: Table, *, read_only: bool = False) -> DeviceInfo:
        flags = Flag.READONLY if read_only else NO_FLAGS
        payload = ioctl.pack_targets(_specs(table))
        reply = self._call(
            Cmd.TABLE_LOAD,
            existing(name),
            flags=flags,
            payload=payload,
            target_count=len(table.lines),
        )
        return _info(ioctl.unpack_header(reply))

    def clear(self, name: str) -> DeviceInfo:
        return _info(ioctl.unpack_header(self._call(Cmd.TABLE_CLEAR, existing(name))))

    def suspend(self, name: str, *, lockfs: bool = True, flush: bool = True) -> DeviceInfo:
        flags = Flag.SUSPEND | _lock_flags(lockfs, flush)
        return _info(ioctl.unpack_header(self._call(Cmd.DEV_SUSPEND, existing(name), flags=flags)))

    def resume(self, name: str, *, lockfs: bool = True, flush: bool = True) -> DeviceInfo:
        flags = _lock_flags(lockfs, flush)
        return _info(ioctl.unpack_header(self._call(Cmd.DEV_SUSPEND, existing(name), flags=flags)))

    def table(self, name: str, *, inactive: bool = False) -> Table | None:
        flags = Flag.STATUS_TABLE | (Flag.QUERY_INACTIVE_TABLE if inactive else NO_FLAGS)
        specs = ioctl.unpack_targets(self._call(Cmd.TABLE_STATUS, existing(name), flags=flags))
        if not specs:
            return None
        return Table(
            tuple(Line(s.start, s.length, parse_target(s.type_name, s.params)) for s in specs)
        )

    def status(self, name: str) -> tuple[StatusLine, ...]:
        specs = ioctl.unpack_targets(self._call(Cmd.TABLE_STATUS, existing(name)))
        return tuple(
            StatusLine(s.start, s.length, s.type_name, parse_target_status(s.type_name, s.params))
            for s in specs
        )

    def message(self, name: str, sector: int, message: str) -> str:
        payload = ioctl.pack_message(sector, message)
        return ioctl.unpack_message_reply(
            self._call(Cmd.TARGET_MSG, existing(name), payload=payload)
        )

    def _make_node(self, name: str, dev: DevNum) -> None:
        make_node(self.mapper_dir / name, dev)

    def _drop_node(self, name: str, dev: DevNum) -> None:
        drop_node(self.mapper_dir / name, dev)


def existing(name: str) -> str:
    """Check a name the kernel may already hold: only its own rules, since the device may
    come from LVM or cryptsetup; new names go through the stricter :func:`dm_name`."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or len(raw) >= ioctl.NAME_LEN or b"/" in raw or b"\0" in raw:
        raise DmError("lookup", name, errno.EINVAL, hint="not a possible device-mapper name")
    return name


def _lock_flags(lockfs: bool, flush: bool) -> Flag:
    flags = NO_FLAGS
    if not lockfs:
        flags |= Flag.SKIP_LOCKFS
    if not flush:
        flags |= Flag.NOFLUSH
    return flags


def make_node(path: Path, dev: DevNum) -> None:
    """Create the block node ``path`` for ``dev`` (0600 root, as libdevmapper does)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(dev.major, dev.minor):
            return
        log.warning("replacing stale %s", path)
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(dev.major, dev.minor))


def drop_node(path: Path, dev: DevNum) -> None:
    """Remove ``path`` if it is still the node of ``dev``; leave anything else alone."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(dev.major, dev.minor):
        path.unlink()


__all__ = [
    "CONTROL",
    "MAPPER_DIR",
    "DeviceInfo",
    "DmControl",
    "DmError",
    "IoctlDm",
    "drop_node",
    "existing",
    "make_node",
    "resume_unchanged",
]
