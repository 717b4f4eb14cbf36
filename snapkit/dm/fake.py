"""An in-memory device-mapper for tests: the kernel's rules, none of its devices.

:class:`FakeDm` implements :class:`~snapkit.dm.control.DmControl` and keeps what a test needs to
assert that a plan left the system as it found it: devices, active and inactive tables,
suspended flags and open counts. The rules modelled are the ones from ``drivers/md/dm-ioctl.c``
that plans trip over:

* a name or uuid that exists cannot be created again (EBUSY);
* an open device cannot be removed (EBUSY); every table that names a device, active *or*
  inactive, holds it open, as the kernel opens devices when a table is loaded;
* a table may only name devices that exist (EINVAL);
* resume swaps in the inactive table if there is one; resuming a device with no table at all
  fails (EINVAL);
* suspend and resume are idempotent.

:class:`Faults` makes the N-th mutating call fail, so a test can walk a failure through every
step of a plan. It is shared with other fakes (an executor, a freezer) so one counter covers
every side effect.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from snapkit.dm.control import DeviceInfo, DmError, existing
from snapkit.dm.status import NoStatus, RawStatus, SnapshotUsage, StatusLine, TargetStatus
from snapkit.dm.table import (
    Crypt,
    Dev,
    DevNum,
    Flakey,
    Line,
    Linear,
    Snapshot,
    SnapshotMerge,
    SnapshotOrigin,
    Table,
    Thin,
    ThinPool,
)
from snapkit.validate import dm_name

DM_MAJOR = 253


class Faults:
    """Counts side-effecting calls across fakes and fails the one numbered ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.calls: list[str] = []

    def should_fail(self, what: str) -> bool:
        index = len(self.calls)
        self.calls.append(what)
        return index == self.fail_at


@dataclass(frozen=True)
class FakeDevice:
    """The observable state of one fake device; compare two ``FakeDm.state()`` with ``==``."""

    name: str
    uuid: str
    dev: DevNum
    active: Table | None
    inactive: Table | None
    suspended: bool
    read_only: bool
    open_count: int


@dataclass
class _Dev:
    name: str
    uuid: str
    dev: DevNum
    active: Table | None = None
    inactive: Table | None = None
    active_ro: bool = False
    inactive_ro: bool = False
    suspended: bool = False
    holders: int = 0  # opens from outside dm: mounts, test handles


def _devices(table: Table) -> set[Dev]:
    found: set[Dev] = set()
    for line in table:
        t = line.target
        if isinstance(t, Linear | SnapshotOrigin | Flakey | Crypt):
            found.add(t.device)
        elif isinstance(t, Snapshot | SnapshotMerge):
            found |= {t.origin, t.cow}
        elif isinstance(t, Thin):
            found |= {t.pool} | ({t.external_origin} if t.external_origin else set())
        elif isinstance(t, ThinPool):
            found |= {t.metadata, t.data}
    return found


@dataclass
class FakeDm:
    """A :class:`DmControl` held in memory. ``block_devices`` are the non-dm devices that exist."""

    faults: Faults = field(default_factory=Faults)
    block_devices: dict[str, DevNum] = field(default_factory=dict)
    statuses: dict[str, tuple[StatusLine, ...]] = field(default_factory=dict)
    messages: list[tuple[str, int, str]] = field(default_factory=list)
    _devs: dict[str, _Dev] = field(default_factory=dict)
    _next_minor: int = 0

    # -- test helpers -------------------------------------------------------------------------

    def add_block_device(self, path: str, dev: DevNum) -> None:
        self.block_devices[path] = dev

    def open(self, name: str) -> None:
        """Hold ``name`` open, as a mount would."""
        self._get("open", name).holders += 1

    def close(self, name: str) -> None:
        self._get("close", name).holders -= 1

    def state(self) -> dict[str, FakeDevice]:
        return {
            d.name: FakeDevice(
                d.name, d.uuid, d.dev, d.active, d.inactive, d.suspended, d.active_ro, count
            )
            for d in self._devs.values()
            for count in (self._open_count(d),)
        }

    # -- DmControl ----------------------------------------------------------------------------

    def version(self) -> tuple[int, int, int]:
        return (4, 47, 0)

    def list_devices(self) -> dict[str, DevNum]:
        return {d.name: d.dev for d in self._devs.values()}

    def info(self, name: str) -> DeviceInfo | None:
        d = self._devs.get(existing(name))
        return None if d is None else self._info(d)

    def create(self, name: str, *, uuid: str = "") -> DeviceInfo:
        self._tick("create", dm_name(name))
        if name in self._devs or (uuid and any(d.uuid == uuid for d in self._devs.values())):
            raise DmError("create", name, errno.EBUSY)
        d = _Dev(name, uuid, DevNum(DM_MAJOR, self._next_minor))
        self._next_minor += 1
        self._devs[name] = d
        return self._info(d)

    def remove(self, name: str) -> None:
        d = self._get("remove", name)
        if self._open_count(d):
            raise DmError("remove", name, errno.EBUSY)
        del self._devs[name]

    def load(self, name: str, table: Table, *, read_only: bool = False) -> DeviceInfo:
        d = self._get("load", name)
        for dev in _devices(table):
            target = self._resolve(dev)
            if target is None or target == d.dev:
                raise DmError("load", name, errno.EINVAL, hint=f"no usable device {dev}")
        d.inactive, d.inactive_ro = table, read_only
        return self._info(d)

    def clear(self, name: str) -> DeviceInfo:
        d = self._get("clear", name)
        d.inactive = None
        return self._info(d)

    def suspend(self, name: str, *, lockfs: bool = True, flush: bool = True) -> DeviceInfo:
        d = self._get("suspend", name)
        d.suspended = True
        return self._info(d)

    def resume(self, name: str, *, lockfs: bool = True, flush: bool = True) -> DeviceInfo:
        d = self._get("resume", name)
        if d.inactive is not None:
            d.active, d.active_ro, d.inactive = d.inactive, d.inactive_ro, None
        elif d.active is None and d.suspended:
            raise DmError("resume", name, errno.EINVAL)
        d.suspended = False
        return self._info(d)

    def table(self, name: str, *, inactive: bool = False) -> Table | None:
        d = self._devs.get(existing(name))
        if d is None:
            raise DmError("table", name, errno.ENXIO)
        return d.inactive if inactive else d.active

    def status(self, name: str) -> tuple[StatusLine, ...]:
        table = self.table(name)
        if name in self.statuses:
            return self.statuses[name]
        if table is None:
            return ()
        return tuple(
            StatusLine(ln.start, ln.length, ln.target.type_name, _default_status(ln))
            for ln in table
        )

    def message(self, name: str, sector: int, message: str) -> str:
        self._get("message", name)
        self.messages.append((name, sector, message))
        return ""

    # -- internals ----------------------------------------------------------------------------

    def _tick(self, op: str, name: str) -> None:
        if self.faults.should_fail(f"dm {op} {name}"):
            raise DmError(op, name, errno.EIO, hint="injected by the test")

    def _get(self, op: str, name: str) -> _Dev:
        self._tick(op, existing(name))
        d = self._devs.get(name)
        if d is None:
            raise DmError(op, name, errno.ENXIO)
        return d

    def _resolve(self, dev: Dev) -> DevNum | None:
        if isinstance(dev, DevNum):
            known = {d.dev for d in self._devs.values()} | set(self.block_devices.values())
            return dev if dev in known else None
        if dev.startswith("/dev/mapper/") and dev[12:] in self._devs:
            return self._devs[dev[12:]].dev
        return self.block_devices.get(dev)

    def _open_count(self, d: _Dev) -> int:
        count = d.holders
        for other in self._devs.values():
            for table in (other.active, other.inactive):
                if table is not None and d.dev in {self._resolve(x) for x in _devices(table)}:
                    count += 1
        return count

    def _info(self, d: _Dev) -> DeviceInfo:
        active = d.active
        return DeviceInfo(
            name=d.name,
            uuid=d.uuid,
            dev=d.dev,
            open_count=self._open_count(d),
            event_nr=0,
            suspended=d.suspended,
            read_only=d.active_ro,
            active_table=active is not None,
            inactive_table=d.inactive is not None,
            target_count=len(active.lines) if active is not None else 0,
        )


def _default_status(line: Line) -> TargetStatus:
    """A fresh persistent snapshot reports 2 chunks used, both metadata: the header (chunk 0)
    and the first exception area (chunk 1), as :mod:`snapkit.cow.store` lays them out."""
    t = line.target
    if isinstance(t, Snapshot | SnapshotMerge):
        used = 2 * t.chunk_sectors
        return SnapshotUsage(used, line.length, used)
    if isinstance(t, Linear | SnapshotOrigin | Flakey):
        return NoStatus()
    return RawStatus("")


__all__ = ["DM_MAJOR", "FakeDevice", "FakeDm", "Faults"]
