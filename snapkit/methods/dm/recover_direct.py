"""``recover`` for dm-direct: its stack after a reboot, from the record and the COW file.

Kept apart from :mod:`snapkit.methods.dm.recover` because dm-direct's stack is not the LVM
way's: the origin itself is the ``snapshot`` target, its base device is the frozen copy
(read-only), and its verbs are inverted (a pending ``merge`` rolls back to ``linear BASE``, a
pending ``discard`` merges the COW into BASE). What each case needs is said in recover's docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from snapkit.cow.format import ENTRY_SIZE, SNAP_MAGIC, Header
from snapkit.dm import steps
from snapkit.dm.naming import Role, base_name, uuid
from snapkit.dm.table import Dev, Linear, Snapshot, SnapshotMerge, Store, Table, parse_dev
from snapkit.errors import CowFormatError
from snapkit.host.loopdev import LoopSlot
from snapkit.host.target import block_info
from snapkit.methods.base import Context
from snapkit.methods.dm.layer import SUFFIX, Layer
from snapkit.methods.dm.shared import MAPPER, DmDetails, linear_of
from snapkit.model import Pending, SnapshotRecord
from snapkit.plan import Step
from snapkit.state import StateData
from snapkit.validate import SECTOR


def reassemble(ctx: Context, record: SnapshotRecord) -> tuple[list[Step], SnapshotRecord]:
    """The steps that bring ``record``'s stack back, and the record with its base device as
    it is named now (``record``'s table is already pointed at the disk's number now)."""
    dm, host = ctx.host.dm, ctx.host
    d = DmDetails.of(record)
    origin, size = d.origin_name, d.table.size
    if d.pending is Pending.MERGE:  # roll back: the original table is the whole of it
        return origin_steps(ctx, origin, lambda: d.table, steps.table_text(d.table)), record
    under = linear_of(d.table)
    s: list[Step] = []
    base: Dev = under.device
    if under.offset:  # a snapshot target has no offset: the range as its own device
        inter = base_name(record.name)
        base = MAPPER + inter
        if dm.info(inter) is None:
            part = Table.single(size, Linear(under.device, under.offset))
            s += _device(ctx, inter, uuid(record.name, Role.BASE), part)
    record = replace(record, details={**record.details, "base": str(base)})
    slot = LoopSlot(d.cow_file)
    found = host.loops.find(d.cow_file)
    slot.device = found[0] if found else None
    if not found:
        s.append(steps.attach(host.loops, slot))
    kind = SnapshotMerge if d.pending is Pending.DISCARD else Snapshot

    def table() -> Table:
        return Table.single(size, kind(base, str(slot.path), Store.PERSISTENT, d.chunk))

    kind_name = "snapshot-merge" if kind is SnapshotMerge else "snapshot"  # a property on each
    text = f"0 {size} {kind_name} {base} {slot} P {d.chunk}"
    if d.pending is Pending.DISCARD:  # keep the writes since: the kernel merges them into BASE
        return [*s, *origin_steps(ctx, origin, table, text)], record
    if dm.info(record.name) is None:
        view = Table.single(size, Linear(base, 0))
        s += _device(ctx, record.name, uuid(record.name, Role.VIEW), view, ro=True)
    path = _path(base)
    s += [
        *origin_steps(ctx, origin, table, text),
        steps.set_ro(host.run, lambda: path, path, True),
    ]
    return s, record


def settle_create(ctx: Context, record: SnapshotRecord) -> tuple[list[Step], SnapshotRecord | None]:
    """A create cut short (``pending create``, saved before its plan ran; ``record``'s table
    already points at the disk's number now). The origin's writes since the switch live in
    the COW only, so: switched (its table, or after a reboot a COW holding an exception) ->
    finish the stack and keep the snapshot; never switched -> undo the rest and drop it
    (``None``), the origin as it was."""
    dm, host = ctx.host.dm, ctx.host
    d = DmDetails.of(record)
    done = record.marked(None)
    info = dm.info(d.origin_name)
    table = dm.table(d.origin_name) if info else None
    if info is None and holds_writes(d.cow_file):
        return reassemble(ctx, done)
    if table is not None and table.lines[0].target.type_name == "snapshot":
        base = parse_dev(d.base)
        s: list[Step] = []
        if dm.info(record.name) is None:
            view = Table.single(d.table.size, Linear(base, 0))
            s += _device(ctx, record.name, uuid(record.name, Role.VIEW), view, ro=True)
        path = _path(base)
        return [*s, steps.set_ro(host.run, lambda: path, path, True)], done
    s = []
    if info is None:
        s += origin_steps(ctx, d.origin_name, lambda: d.table, steps.table_text(d.table))
    else:  # killed inside the switch: the loaded table must not be swapped in later
        if info.inactive_table:
            s.append(Step(f"dmsetup clear {d.origin_name}", lambda: dm.clear(d.origin_name)))
        if info.suspended:
            s.append(steps.resume(dm, d.origin_name))
    for name in (record.name, base_name(record.name)):
        if dm.info(name) is not None:
            s.append(steps.remove(dm, name))
    s.append(steps.detach_all(host.loops, d.cow_file))
    if host.files.exists(d.cow_file):
        s.append(steps.unlink(host.files, d.cow_file))
    return s, None


def holds_writes(cow: Path) -> bool:
    """Whether a persistent COW holds a committed exception: the kernel commits one before it
    acknowledges the write that needed it, so none means no write went to it. Unreadable or
    unknown: assume it does, the side that loses nothing."""
    try:
        with open(cow, "rb") as f:
            header = Header.unpack(f.read(512))
            if header.is_new:
                return False  # never loaded as a snapshot: the switch did not happen
            if header.magic != SNAP_MAGIC or not 0 < header.chunk_sectors <= 1 << 20:
                return True
            f.seek(header.chunk_sectors * SECTOR)
            first = f.read(ENTRY_SIZE)
    except (OSError, CowFormatError):
        return True
    return len(first) < ENTRY_SIZE or int.from_bytes(first[8:16], "little") != 0


def origin_steps(ctx: Context, name: str, table: Callable[[], Table], text: str) -> list[Step]:
    """Load ``table`` into the prepared origin ``name``, creating it if the reboot took it."""
    dm = ctx.host.dm
    s = [] if dm.info(name) is not None else [steps.create(dm, name, uuid(name, Role.ORIGIN))]
    return [*s, steps.load(dm, name, table, text), steps.resume(dm, name)]


def _device(ctx: Context, name: str, dm_uuid: str, table: Table, *, ro: bool = False) -> list[Step]:
    dm = ctx.host.dm
    return [
        steps.create(dm, name, dm_uuid),
        steps.load(dm, name, lambda: table, steps.table_text(table), ro=ro),
        steps.resume(dm, name),
    ]


def _path(dev: Dev) -> str:
    if isinstance(dev, str):
        return dev
    info = block_info(dev)
    return str(info.path) if info else f"/dev/block/{dev}"


def orphan_layers(ctx: Context, data: StateData) -> list[Layer]:
    """Layer files in snapkit's COW directory whose snapshot no record names any more."""
    cow_dir = ctx.cow_dir
    named = {r.name for r in data.snapshots}
    try:
        found = sorted(cow_dir.glob(f"*{SUFFIX}"))
    except OSError:
        return []
    layers = [Layer(p.stem, "", p, 0) for p in found if p.stem not in named]
    return [x for x in layers if ctx.host.dm.info(x.name) is None]


__all__ = ["holds_writes", "origin_steps", "orphan_layers", "reassemble", "settle_create"]
