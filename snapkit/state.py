"""What snapkit created, kept in ``$SNAPKIT_STATE_DIR/state.json`` (default /var/lib/snapkit).

The file is written atomically (a temporary file, fsync, rename, fsync of the directory), so a
crash leaves either the old or the new state, never half of one. It is a cache of intent, not
the truth: the kernel is. :func:`reconcile` adds what the kernel shows and the file lacks --
devices carry a ``SNAPKIT-<name>-<role>`` uuid (``snapkit.dm.naming``), so a lost or stale file
is rebuilt from them. Records whose devices are gone (after a reboot) are kept, so that
``discard`` can still free their COW files; their status says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from snapkit.dm.control import DmControl
from snapkit.dm.naming import Role, parse_uuid
from snapkit.dm.table import DevNum, Linear, Snapshot, SnapshotMerge, SnapshotOrigin, Table
from snapkit.errors import FormatError, RefusedError
from snapkit.host.target import StableId
from snapkit.model import Group, Pending, SnapshotRecord

STATE_FILE = "state.json"
VERSION = 1


@dataclass(frozen=True)
class Prepared:
    """A device made by ``snapkit device prepare``: dm ``name`` over ``device``, which is
    ``ident`` (its kernel name may belong to another disk after a reboot)."""

    name: str
    device: str
    ident: StableId | None = None


@dataclass(frozen=True)
class StateData:
    snapshots: tuple[SnapshotRecord, ...] = ()
    devices: tuple[Prepared, ...] = ()
    groups: tuple[Group, ...] = ()

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    def group_of(self, member: str) -> Group | None:
        """The group whose member ``member`` is (a record name), if any."""
        return next((g for g in self.groups if member in g.members), None)

    def with_group(self, group: Group) -> StateData:
        rest = tuple(g for g in self.groups if g.name != group.name)
        return replace(self, groups=(*rest, group))

    def without_group(self, name: str) -> StateData:
        return replace(self, groups=tuple(g for g in self.groups if g.name != name))

    def snapshot(self, name: str) -> SnapshotRecord | None:
        return next((r for r in self.snapshots if r.name == name), None)

    def device(self, name: str) -> Prepared | None:
        return next((d for d in self.devices if d.name == name), None)

    def with_snapshot(self, record: SnapshotRecord) -> StateData:
        rest = tuple(r for r in self.snapshots if r.name != record.name)
        return replace(self, snapshots=(*rest, record))

    def without_snapshot(self, name: str) -> StateData:
        return replace(self, snapshots=tuple(r for r in self.snapshots if r.name != name))

    def with_device(self, device: Prepared) -> StateData:
        rest = tuple(d for d in self.devices if d.name != device.name)
        return replace(self, devices=(*rest, device))

    def without_device(self, name: str) -> StateData:
        return replace(self, devices=tuple(d for d in self.devices if d.name != name))


def _record_from(raw: dict[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        name=str(raw["name"]),
        method=str(raw["method"]),
        origin=str(raw["origin"]),
        device=str(raw["device"]),
        created_at=float(raw["created_at"]),
        details={str(k): str(v) for k, v in dict(raw.get("details", {})).items()},
    )


def _record_to(r: SnapshotRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "method": r.method,
        "origin": r.origin,
        "device": r.device,
        "created_at": r.created_at,
        "details": dict(r.details),
    }


def _group_from(raw: dict[str, Any]) -> Group:
    pending = str(raw.get("pending", ""))
    return Group(
        name=str(raw["name"]),
        method=str(raw["method"]),
        members=tuple(str(m) for m in raw["members"]),
        pending=Pending(pending) if pending else None,
        planned=tuple(_record_from(r) for r in raw.get("planned", [])),
    )


def _group_to(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "method": g.method,
        "members": list(g.members),
        "pending": g.pending.value if g.pending else "",
        "planned": [_record_to(r) for r in g.planned],
    }


def parse(text: str) -> StateData:
    try:
        raw = json.loads(text)
        if raw.get("version") != VERSION:
            raise FormatError(f"state file version {raw.get('version')!r} is not {VERSION}")
        return StateData(
            tuple(_record_from(r) for r in raw.get("snapshots", [])),
            tuple(
                Prepared(str(d["name"]), str(d["device"]), StableId.parse(str(d.get("id", ""))))
                for d in raw.get("devices", [])
            ),
            tuple(_group_from(g) for g in raw.get("groups", [])),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"the state file is not valid: {exc}") from None


def render(data: StateData) -> str:
    doc: dict[str, Any] = {
        "version": VERSION,
        "snapshots": [_record_to(r) for r in data.snapshots],
        "devices": [
            {"name": d.name, "device": d.device, **({"id": str(d.ident)} if d.ident else {})}
            for d in data.devices
        ],
    }
    if data.groups:  # written only when there are any: a file without groups stays as it was
        doc["groups"] = [_group_to(g) for g in data.groups]
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


class StateFile:
    """``sync=False`` is the planted bug of ``Settings.unsafe_state_writes`` (a negative
    control of the crash-state harness): no fsync of the new text before the rename."""

    def __init__(self, directory: Path, *, sync: bool = True) -> None:
        self.directory = directory
        self.path = self.directory / STATE_FILE
        self.sync = sync

    def load(self) -> StateData:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return StateData()
        except OSError as exc:
            raise RefusedError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            return parse(text)
        except FormatError as exc:
            raise RefusedError(
                str(exc), hint=f"move {self.path} aside; snapkit rebuilds it"
            ) from None

    def save(self, data: StateData) -> None:
        text = render(data)
        try:
            if self.path.read_text() == text:
                return  # byte-identical: nothing to write
        except OSError:
            pass
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode())
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -- rebuilding from the kernel ---------------------------------------------------------------


def _snapkit_devices(dm: DmControl) -> Iterator[tuple[str, str, Role, DevNum]]:
    for dm_name_, dev in sorted(dm.list_devices().items()):
        info = dm.info(dm_name_)
        parsed = parse_uuid(info.uuid) if info else None
        if parsed:
            yield dm_name_, parsed[0], parsed[1], dev


def _under(dm: DmControl, target: object, mapper: Any) -> str:
    """What a prepared device maps, whatever snapshot table it carries now."""
    if isinstance(target, SnapshotOrigin):
        real = mapper(target.device).removeprefix("/dev/mapper/")
        table = dm.table(real) if dm.info(real) else None
        target = table.lines[0].target if table else None
    elif isinstance(target, Snapshot | SnapshotMerge):
        target = Linear(target.origin, 0)
    return str(target.device) if isinstance(target, Linear) else ""


def loop_backing(dev: object, sys_block: Path = Path("/sys/dev/block")) -> str:
    """The file behind loop device ``dev`` (major:minor), "" if it is none or gone."""
    try:
        return (sys_block / str(dev) / "loop" / "backing_file").read_text().strip()
    except OSError:
        return ""


def reconcile(data: StateData, dm: DmControl) -> StateData:
    """Add what the kernel shows under a snapkit uuid and the file does not know."""
    by_dev = {str(dev): name for name, dev in dm.list_devices().items()}

    def mapper(dev: object) -> str:
        name = by_dev.get(str(dev))
        return f"/dev/mapper/{name}" if name else str(dev)

    grouped = {member for group in data.groups for member in group.members}
    for dm_name_, name, role, _dev in _snapkit_devices(dm):
        if name in grouped:
            continue  # a group's member: its group's entry decides (whole or gone), not this
        table = dm.table(dm_name_)
        target = table.lines[0].target if table else None
        if role is Role.ORIGIN and data.device(name) is None:
            under = _under(dm, target, mapper)
            if under:
                data = data.with_device(Prepared(name, under))
        rebuilt = None
        if role is Role.SNAP and data.snapshot(name) is None and isinstance(target, Snapshot):
            rebuilt = _rebuilt_dm(dm, name, target, mapper)
        if role is Role.VIEW and data.snapshot(name) is None and isinstance(target, Linear):
            rebuilt = _rebuilt_direct(dm, name, target, mapper)
        if rebuilt is not None:
            data = data.with_snapshot(rebuilt)
    return data


def _rebuilt_dm(dm: DmControl, name: str, snap: Snapshot, mapper: Any) -> SnapshotRecord | None:
    real = mapper(snap.origin).removeprefix("/dev/mapper/")
    origin = real.removesuffix("-real")
    real_table = dm.table(real) if dm.info(real) else None
    if real_table is None or dm.info(origin) is None:
        return None
    return _rebuilt("dm", name, origin, real_table, loop_backing(snap.cow), snap.chunk_sectors)


def _rebuilt_direct(dm: DmControl, name: str, view: Linear, mapper: Any) -> SnapshotRecord | None:
    for other in dm.list_devices():
        table = dm.table(other)
        target = table.lines[0].target if table else None
        if isinstance(target, Snapshot) and str(target.origin) == str(view.device):
            assert table is not None
            base = mapper(view.device)
            original = Table.single(table.size, Linear(view.device, 0))
            record = _rebuilt(
                "dm-direct", name, other, original, loop_backing(target.cow), target.chunk_sectors
            )
            return replace(record, details={**record.details, "base": base})
    return None


def _rebuilt(
    method: str, name: str, origin: str, table: Table, cow: str, chunk: int
) -> SnapshotRecord:
    details = {
        "origin_name": origin,
        "table": table.format().strip(),
        "cow_file": cow,
        "chunk": str(chunk),
        "fstype": "",
        "pending": "",
        "merge_from": "0",
        "rebuilt": "from the kernel",
    }
    return SnapshotRecord(
        name, method, f"/dev/mapper/{origin}", f"/dev/mapper/{name}", 0.0, details
    )


__all__ = [
    "Prepared",
    "StateData",
    "StateFile",
    "loop_backing",
    "parse",
    "reconcile",
    "render",
]
