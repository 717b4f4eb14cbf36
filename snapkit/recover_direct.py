"""``recover`` for dm-direct: its stack after a reboot, from the record and the COW file.

Kept apart from :mod:`snapkit.recover` because dm-direct's stack is not the LVM way's: the
origin itself is the ``snapshot`` target, its base device is the frozen copy (read-only), and
its verbs are inverted (a pending ``merge`` rolls back to ``linear BASE``, a pending
``discard`` merges the COW into BASE). What each case needs is said in recover's docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from snapkit.dm import steps
from snapkit.dm.naming import Role, base_name, uuid
from snapkit.dm.table import Dev, Linear, Snapshot, SnapshotMerge, Store, Table
from snapkit.flow import Flow
from snapkit.layer import SUFFIX, Layer
from snapkit.loopdev import LoopSlot
from snapkit.methods.base import SnapshotRecord
from snapkit.methods.dmshared import MAPPER, DmDetails, linear_of
from snapkit.plan import Step
from snapkit.state import StateData
from snapkit.target import block_info


def reassemble(flow: Flow, record: SnapshotRecord) -> tuple[list[Step], SnapshotRecord]:
    """The steps that bring ``record``'s stack back, and the record with its base device as
    it is named now (``record``'s table is already pointed at the disk's number now)."""
    dm, host = flow.host.dm, flow.host
    d = DmDetails.of(record)
    origin, size = d.origin_name, d.table.size
    if d.pending == "merge":  # roll back: the original table is the whole of it
        return origin_steps(flow, origin, lambda: d.table, steps.table_text(d.table)), record
    under = linear_of(d.table)
    s: list[Step] = []
    base: Dev = under.device
    if under.offset:  # a snapshot target has no offset: the range as its own device
        inter = base_name(record.name)
        base = MAPPER + inter
        if dm.info(inter) is None:
            part = Table.single(size, Linear(under.device, under.offset))
            s += _device(flow, inter, uuid(record.name, Role.BASE), part)
    record = replace(record, details={**record.details, "base": str(base)})
    slot = LoopSlot(d.cow_file)
    found = host.loops.find(d.cow_file)
    slot.device = found[0] if found else None
    if not found:
        s.append(steps.attach(host.loops, slot))
    kind = SnapshotMerge if d.pending == "discard" else Snapshot

    def table() -> Table:
        return Table.single(size, kind(base, str(slot.path), Store.PERSISTENT, d.chunk))

    text = f"0 {size} {kind.type_name} {base} {slot} P {d.chunk}"
    if d.pending == "discard":  # keep the writes since: the kernel merges them into BASE
        return [*s, *origin_steps(flow, origin, table, text)], record
    if dm.info(record.name) is None:
        view = Table.single(size, Linear(base, 0))
        s += _device(flow, record.name, uuid(record.name, Role.VIEW), view, ro=True)
    path = _path(base)
    s += [
        *origin_steps(flow, origin, table, text),
        steps.set_ro(host.run, lambda: path, path, True),
    ]
    return s, record


def origin_steps(flow: Flow, name: str, table: Callable[[], Table], text: str) -> list[Step]:
    """Load ``table`` into the prepared origin ``name``, creating it if the reboot took it."""
    dm = flow.host.dm
    s = [] if dm.info(name) is not None else [steps.create(dm, name, uuid(name, Role.ORIGIN))]
    return [*s, steps.load(dm, name, table, text), steps.resume(dm, name)]


def _device(flow: Flow, name: str, dm_uuid: str, table: Table, *, ro: bool = False) -> list[Step]:
    dm = flow.host.dm
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


def orphan_layers(flow: Flow, data: StateData) -> list[Layer]:
    """Layer files in snapkit's COW directory whose snapshot no record names any more."""
    cow_dir = flow.state.directory / "cow"
    named = {r.name for r in data.snapshots}
    try:
        found = sorted(cow_dir.glob(f"*{SUFFIX}"))
    except OSError:
        return []
    layers = [Layer(p.stem, "", p, 0) for p in found if p.stem not in named]
    return [x for x in layers if flow.host.dm.info(x.name) is None]


__all__ = ["origin_steps", "orphan_layers", "reassemble"]
