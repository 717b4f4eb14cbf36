"""What the two raw dm methods share: the COW rules, the record details, reading the state.

Both keep the snapshot's exceptions in a loop device over a sparse file in ``--cow-dir``, both
need an origin that is a dm device with a plain ``linear`` table, and both read the snapshot's
health from a ``snapshot``/``snapshot-merge`` status line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from snapkit.dm.control import DmControl
from snapkit.dm.naming import Role, parse_uuid
from snapkit.dm.status import (
    SnapshotFailure,
    SnapshotUsage,
    explain,
    lvs_percent,
    merge_progress,
)
from snapkit.dm.table import Linear, Table, parse_table
from snapkit.errors import OperationError, RefusedError, ValidationError
from snapkit.host.fs import SUSPEND_DOES_NOT_FREEZE
from snapkit.host.target import StableId, block_devnum, mounts, mounts_of, stable_id
from snapkit.model import CreateRequest, Pending, SnapshotRecord, State, Target
from snapkit.run import Executor
from snapkit.validate import SECTOR

DEFAULT_COW_FRACTION = 4  # a COW a quarter of the origin, when --cow-size is not given
MAPPER = "/dev/mapper/"


@dataclass(frozen=True)
class DmDetails:
    """The method-specific part of a record, typed. Stored as strings in the state file."""

    origin_name: str
    table: Table  # the origin's table before the first snapshot
    cow_file: Path
    chunk: int
    fstype: str = ""
    pending: Pending | None = None  # once the kernel side of a merge or discard has started
    merge_from: int = 0  # allocated sectors when the merge started, for its progress
    base: str = ""  # dm-direct: the device that holds the frozen copy
    table_id: StableId | None = None  # what ``table``'s device is, found again after a reboot

    def to_strings(self) -> dict[str, str]:
        return {
            "origin_name": self.origin_name,
            "table": self.table.format().strip(),
            "cow_file": str(self.cow_file),
            "chunk": str(self.chunk),
            "fstype": self.fstype,
            "pending": self.pending.value if self.pending else "",
            "merge_from": str(self.merge_from),
            "base": self.base,
            "table_id": str(self.table_id or ""),
        }

    @classmethod
    def of(cls, record: SnapshotRecord) -> DmDetails:
        d = record.details
        try:
            return cls(
                origin_name=d["origin_name"],
                table=parse_table(d["table"]),
                cow_file=Path(d["cow_file"]),
                chunk=int(d["chunk"]),
                fstype=d.get("fstype", ""),
                pending=record.pending,
                merge_from=int(d.get("merge_from", "0") or 0),
                base=d.get("base", ""),
                table_id=StableId.parse(d.get("table_id", "")),
            )
        except (KeyError, ValueError) as exc:
            raise RefusedError(
                f"the state of snapshot {record.name} is incomplete ({exc})",
                hint="discard it with --force",
            ) from None

    def with_pending(self, pending: Pending, merge_from: int = 0) -> DmDetails:
        return replace(self, pending=pending, merge_from=merge_from)


def origin_name(target: Target) -> str | None:
    text = str(target.device)
    return text[len(MAPPER) :] if text.startswith(MAPPER) else None


def origin_refusal(dm: DmControl, target: Target, *, want: str) -> str | None:
    """Why ``target`` cannot be a dm origin of the ``want`` table kinds, or None: the one
    ``unsuitable`` of dm and dm-direct (a failed dm query makes it unsuitable too)."""
    try:
        dm_origin(dm, target, want=want)
    except (RefusedError, OperationError) as exc:
        return str(exc)
    return None


def dm_origin(dm: DmControl, target: Target, *, want: str) -> tuple[str, Table]:
    """The origin's dm name and active table, or a refusal saying what to do instead."""
    name = origin_name(target)
    info = dm.info(name) if name else None
    if name is None or info is None:
        raise RefusedError(
            f"{target.device} is not a device-mapper device",
            hint="wrap it once with 'snapkit device prepare DEVICE --name NAME', remount "
            "/dev/mapper/NAME, and snapshot that",
        )
    if info.uuid.startswith("LVM-"):
        raise RefusedError(f"{target.device} is an LVM volume", hint="use --method lvm")
    table = dm.table(name)
    if table is None:
        raise RefusedError(f"{target.device} has no active table")
    if len(table.lines) != 1 or table.lines[0].target.type_name not in want.split("|"):
        kinds = ",".join(line.target.type_name for line in table)
        raise RefusedError(
            f"{target.device} has a {kinds} table; this method needs {want.replace('|', ' or ')}",
            hint="only a plain linear device, as 'snapkit device prepare' makes, will do",
        )
    return name, table


def linear_of(table: Table) -> Linear:
    target = table.lines[0].target
    assert isinstance(target, Linear)
    return target


def cow_bytes(request: CreateRequest, origin_sectors: int) -> int:
    """The COW size: as asked, or a quarter of the origin; whole chunks; at least 3 of them."""
    chunk_bytes = request.chunk_sectors * SECTOR
    size = request.cow_size or origin_sectors * SECTOR // DEFAULT_COW_FRACTION
    if size < 3 * chunk_bytes:
        raise ValidationError(
            f"a COW of {size} bytes is smaller than three {chunk_bytes}-byte chunks",
            hint=f"give --cow-size of at least {3 * chunk_bytes // 1024}K",
        )
    return -(-size // chunk_bytes) * chunk_bytes


class Health(NamedTuple):
    """What a ``snapshot``/``snapshot-merge`` status line means, with the words to say it."""

    state: State
    percent: float | None  # lvs Data% (snapshot) or merge progress (snapshot-merge)
    usage: SnapshotUsage | None
    message: str = ""


def snapshot_state(lines: tuple[object, ...], name: str = "NAME") -> Health:
    """State, lvs Data%, raw usage and plain words of a ``snapshot`` status."""
    status = getattr(lines[0], "status", None) if lines else None
    if isinstance(status, SnapshotUsage):
        percent = lvs_percent(status)
        return Health(State.ACTIVE, float(percent) if percent else None, status)
    if status is SnapshotFailure.OVERFLOW:
        return Health(State.OVERFLOW, 100.0, None, explain(SnapshotFailure.OVERFLOW, name))
    if isinstance(status, SnapshotFailure):
        return Health(State.INVALID, None, None, explain(status, name))
    return Health(State.INVALID, None, None, "the kernel shows no snapshot status")


def merge_state(lines: tuple[object, ...], merge_from: int, name: str = "NAME") -> Health:
    """MERGING or MERGED, and the progress, of a ``snapshot-merge`` status; INVALID with the
    words and the next step when the kernel stopped the merge."""
    status = getattr(lines[0], "status", None) if lines else None
    if status is SnapshotFailure.MERGE_FAILED:
        return Health(State.INVALID, None, None, explain(SnapshotFailure.MERGE_FAILED, name))
    if not isinstance(status, SnapshotUsage):
        word = status.value.lower() if isinstance(status, SnapshotFailure) else "gone"
        return Health(
            State.INVALID,
            None,
            None,
            f"{word}: the kernel dropped the COW during the merge (see dmesg); the origin may "
            "be partly rolled back and the rest of the snapshot is lost",
        )
    if status.merge_done:
        return Health(State.MERGED, 100.0, status)
    first = SnapshotUsage(max(merge_from, status.allocated), status.total, status.metadata)
    return Health(State.MERGING, round(merge_progress(first, status), 2), status)


def merge_failed(lines: tuple[object, ...]) -> bool:
    """The kernel's merge stopped on an error ("Merge failed"): it will not resume by itself,
    and a reload of the same ``snapshot-merge`` table is refused ("A snapshot is already
    merging", measured on 6.1), so only a fresh table restarts it."""
    return bool(lines) and getattr(lines[0], "status", None) is SnapshotFailure.MERGE_FAILED


def snapkit_role(dm: DmControl, name: str) -> Role | None:
    info = dm.info(name)
    parsed = parse_uuid(info.uuid) if info else None
    return parsed[1] if parsed else None


def refuse_unfrozen(target: Target) -> None:
    """A group member whose filesystem a dm suspend does not freeze (btrfs): it would need a
    FIFREEZE, under which a lockfs suspend fails (EBUSY on 6.1), so it cannot share a group's
    point in time."""
    fstype = target.fstype or ""
    if fstype in SUSPEND_DOES_NOT_FREEZE:
        raise RefusedError(
            f"a dm suspend does not freeze {fstype} ({target.device}), so it cannot share a "
            "group's point in time",
            hint="snapshot it on its own",
        )


def refuse_if_open(dm: DmControl, name: str, what: str) -> None:
    info = dm.info(name)
    if info is not None and info.open_count:
        raise RefusedError(
            f"{what} /dev/mapper/{name} is in use (mounted?)",
            hint=f"unmount it first (umount /dev/mapper/{name}), or pass --force to discard",
        )


def refuse_if_mounted(target_dev: Path, op: str) -> None:
    from snapkit.host.target import block_devnum

    dev = block_devnum(target_dev)
    found = mounts_of(dev, mounts()) if dev is not None else ()
    if found:
        raise RefusedError(
            f"{op} would change the content under the filesystem mounted at {found[0].mountpoint}",
            hint=f"refused, not deferred: unmount {found[0].mountpoint} and run it again",
        )


def disk_ident(table: Table, run: Executor) -> StableId | None:
    """The stable identity of the disk the origin's linear table maps: recover finds it by
    this after a reboot, when its major:minor may name another disk."""
    target = table.lines[0].target
    dev = target.device if isinstance(target, Linear) else None
    if isinstance(dev, str):
        dev = block_devnum(dev)
    return stable_id(dev, run) if dev is not None else None


__all__ = [
    "DmDetails",
    "Health",
    "cow_bytes",
    "disk_ident",
    "dm_origin",
    "linear_of",
    "merge_failed",
    "merge_state",
    "origin_name",
    "refuse_if_mounted",
    "refuse_if_open",
    "refuse_unfrozen",
    "snapkit_role",
    "snapshot_state",
]


def mark_pending(
    dm: DmControl, record: SnapshotRecord, operation: Pending, status_of: str
) -> SnapshotRecord:
    """The record with ``pending`` set and the COW usage now, the 0 % point of the merge."""
    d = DmDetails.of(record)
    if d.pending:
        return record
    lines = dm.status(status_of) if dm.info(status_of) else ()
    usage = snapshot_state(lines).usage
    marked = d.with_pending(operation, usage.allocated if usage else 0)
    return replace(record, details={**record.details, **marked.to_strings()})
