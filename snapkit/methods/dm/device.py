"""``device prepare`` / ``device release``: wrap a plain block device in a dm ``linear`` device.

The raw dm methods can only reload the table of a dm device, so a filesystem on a plain disk,
partition or loop device is moved, once, onto ``/dev/mapper/NAME`` = ``linear DEVICE 0``. The
content is the same, but the filesystem must be mounted from the new path: preparing a mounted
device is refused, and the message says to remount. The device gets the uuid
``SNAPKIT-NAME-origin`` so snapkit recognises it later. A partition is mapped by its own device
(offset 0 within it), never through its parent disk: dm claims what it maps exclusively, and
claiming the whole disk would lock out its other partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from snapkit.dm import steps
from snapkit.dm.naming import Role, parse_uuid, snapkit_name, uuid
from snapkit.dm.table import DevNum, Linear, Table
from snapkit.errors import RefusedError
from snapkit.host.target import block_devnum, block_info, mounts_of
from snapkit.methods.base import Host
from snapkit.plan import Plan
from snapkit.state import StateData


@dataclass(frozen=True)
class PrepareResult:
    name: str
    device: Path
    under: Path
    size_sectors: int
    partition_start: int | None


def plan_prepare(host: Host, data: StateData, device: str, name: str) -> tuple[Plan, PrepareResult]:
    """The plan that puts ``device`` under ``/dev/mapper/NAME``, refused before anything
    changes if the name is taken (by a dm device, or in ``data``) or the device is in use."""
    snapkit_name(name, what="device name")
    dev = block_devnum(device)
    info = block_info(dev) if dev is not None else None
    if dev is None or info is None:
        raise RefusedError(
            f"{device} is not a block device", hint="give e.g. /dev/vdb or /dev/loop0"
        )
    dm = host.dm
    if dm.info(name) is not None or data.device(name) is not None:
        raise RefusedError(f"the name {name!r} is already in use", hint="choose another --name")
    if info.dm_name is not None:
        raise RefusedError(
            f"{device} is already a device-mapper device ({info.dm_name})",
            hint="snapshot it directly; prepare is for plain disks, partitions and loop devices",
        )
    mounted = mounts_of(dev)
    if mounted:
        point = mounted[0].mountpoint
        raise RefusedError(
            f"{device} is mounted at {point}",
            hint=f"prepare needs an unmount and a remount: umount {point}, run prepare, "
            f"then mount /dev/mapper/{name} at {point}",
        )
    if info.holders:
        raise RefusedError(
            f"{device} is held by {', '.join(info.holders)}", hint="release it from its holder"
        )
    table = Table.single(info.size_sectors, Linear(DevNum(dev.major, dev.minor), 0))
    plan = Plan(
        f"prepare /dev/mapper/{name} over {device}",
        (
            steps.create(dm, name, uuid(name, Role.ORIGIN)),
            steps.load(dm, name, lambda: table, steps.table_text(table)),
            steps.resume(dm, name),
        ),
    )
    return plan, PrepareResult(
        name, Path("/dev/mapper") / name, info.path, info.size_sectors, info.partition_start
    )


def plan_release(host: Host, name: str) -> Plan:
    """The plan that removes the prepared ``/dev/mapper/NAME`` (its undo puts it back),
    refused while it has snapshots or is open."""
    dm = host.dm
    info = dm.info(name)
    parsed = parse_uuid(info.uuid) if info else None
    if info is None or parsed != (name, Role.ORIGIN):
        raise RefusedError(
            f"/dev/mapper/{name} is not a device snapkit prepared",
            hint="see 'snapkit snapshot list' and 'dmsetup ls'",
        )
    table = dm.table(name)
    if table is None or table.lines[0].target.type_name != "linear":
        raise RefusedError(f"/dev/mapper/{name} has snapshots", hint="merge or discard them first")
    if info.open_count:
        raise RefusedError(
            f"/dev/mapper/{name} is in use (mounted?)",
            hint="unmount it, release, then mount the device under it directly",
        )

    def restore() -> None:
        dm.create(name, uuid=uuid(name, Role.ORIGIN))
        dm.load(name, table)
        dm.resume(name)

    return Plan(f"release /dev/mapper/{name}", (steps.remove(dm, name, restore),))


__all__ = ["PrepareResult", "plan_prepare", "plan_release"]
