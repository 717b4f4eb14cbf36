"""``dm-direct``: the origin itself becomes a ``snapshot`` target over its own base device.

After create, the origin is ``snapshot BASE COW P <chunk>``: its new writes go to the COW, and
BASE -- no longer written -- *is* the point-in-time copy, set read-only with ``blockdev
--setro``. device-mapper holds BASE exclusively, so it cannot be mounted by its own path
(checked: EBUSY); the snapshot's ``device`` is therefore a read-only ``linear`` dm device over
BASE (the "view"), which mounts. If the origin's linear table starts at a non-zero offset (a
range of a bigger device), an intermediate linear device exposes just that range as BASE,
since a ``snapshot`` target has no offset parameter.

A frozen xfs or btrfs leaves a log in the copy that a mount must replay, which a read-only
device cannot take: ``snapshot mount`` puts a throwaway writable layer over the view for them
(:mod:`snapkit.methods.dm.layer`). Merge, discard and finish remove it first, and refuse while it is
mounted.

The raw recipe's words are inverted with respect to snapkit's single meaning of the verbs:

* snapkit ``merge`` (roll back to the snapshot) = the recipe's "discard": drop the COW and load
  ``linear BASE`` again; refused while the origin is mounted;
* snapkit ``discard`` (keep the current content) = the recipe's "merge": ``snapshot-merge`` of
  the COW into BASE, which the kernel does while the origin stays mounted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from snapkit.dm import steps
from snapkit.dm.naming import Role, base_name, snapkit_name, uuid
from snapkit.dm.table import Dev, DevNum, Linear, Snapshot, SnapshotMerge, Store, Table
from snapkit.errors import RefusedError
from snapkit.host.cowdir import check_cow_dir, check_cow_space
from snapkit.host.freezing import guard_suspend
from snapkit.host.loopdev import LoopSlot
from snapkit.host.target import block_info
from snapkit.methods.base import Host, Phases
from snapkit.methods.dm.layer import Layer, teardown
from snapkit.methods.dm.layer import refuse_if_mounted as refuse_if_mounted_layer
from snapkit.methods.dm.shared import (
    MAPPER,
    DmDetails,
    cow_bytes,
    disk_ident,
    dm_origin,
    linear_of,
    mark_pending,
    merge_state,
    origin_refusal,
    refuse_if_mounted,
    refuse_if_open,
    refuse_unfrozen,
    snapshot_state,
)
from snapkit.methods.dm.window import guard_window
from snapkit.model import CreateRequest, Pending, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.validate import chunk_sectors


def _dev_path(dev: Dev) -> str:
    if isinstance(dev, DevNum):
        info = block_info(dev)
        return str(info.path) if info else f"/dev/block/{dev}"
    return dev


class DmDirectMethod:
    name: ClassVar[str] = "dm-direct"
    # Once the origin is switched, its newest writes live in the COW only: the flow records
    # the snapshot (pending create) before the plan runs, so recover never takes the COW for
    # the leftover of a create cut short.
    records_first: ClassVar[bool] = True

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dm = host.dm

    def unsuitable(self, target: Target) -> str | None:
        return origin_refusal(self.dm, target, want="linear")

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        title, s, swap, after, record = self._parts(request)
        d = DmDetails.of(record)
        window = guard_window([d.origin_name], swap, request.max_freeze, self.host.resume_watchdog)
        s += guard_suspend(request.target, window, request.max_freeze)  # btrfs: see freezing.py
        return Plan(title, (*s, *after)), record

    def plan_phases(self, request: CreateRequest) -> Phases:
        """The create, split for a group (:class:`~snapkit.methods.base.Phases`): every table
        loaded (the origin's ``snapshot`` one as its inactive table) is the prepare; the
        origin's lockfs suspend is the hold; its resume, which swaps the ``snapshot`` table
        in, is the release; the base set read-only (``blockdev``, a process) comes after every
        member's release, outside the window. The resume commits, and already
        carries its undo (fold the COW back into the base, load the linear table again), so a
        later member's failure takes this one back with the writes it took meanwhile. A
        filesystem a dm suspend does not freeze (btrfs) is refused, as for dm."""
        refuse_unfrozen(request.target)
        title, s, swap, after, record = self._parts(request)
        suspend, resume = swap
        origin = DmDetails.of(record).origin_name
        return Phases(title, tuple(s), (suspend,), (resume,), record, after, (origin,))

    def _parts(
        self, request: CreateRequest
    ) -> tuple[str, list[Step], list[Step], tuple[Step, ...], SnapshotRecord]:
        """The title, the steps before the window, the window (suspend the origin, resume it
        with the ``snapshot`` table), the steps after it, and the record."""
        dm, name = self.dm, snapkit_name(request.name)
        origin, table = dm_origin(self.dm, request.target, want="linear")
        chunk = chunk_sectors(request.chunk_sectors)
        under = linear_of(table)
        size = table.size
        intermediate = base_name(name) if under.offset else None
        for taken in (name, intermediate):
            if taken and dm.info(taken) is not None:
                raise RefusedError(
                    f"a dm device named {taken} already exists", hint="choose another --name"
                )
        if request.cow_dir is None:
            raise RefusedError("no --cow-dir given")
        check_cow_dir(request.cow_dir, request.target)
        cow_size = cow_bytes(request, size)
        check_cow_space(request.cow_dir, cow_size, force=request.force)
        cow = request.cow_dir / f"{name}.cow"
        if self.host.files.exists(cow):
            raise RefusedError(
                f"the COW file {cow} already exists", hint="remove it or choose another --name"
            )
        base: Dev = MAPPER + intermediate if intermediate else under.device
        base_path = _dev_path(base)
        slot = LoopSlot(cow)
        view = Table.single(size, Linear(base, 0))

        def snap_table() -> Table:
            return Table.single(size, Snapshot(base, str(slot.path), Store.PERSISTENT, chunk))

        s: list[Step] = [
            steps.cow_file(self.host.files, cow, cow_size),
            steps.attach(self.host.loops, slot),
        ]
        if intermediate:
            part = Table.single(size, Linear(under.device, under.offset))
            s += [
                steps.create(dm, intermediate, uuid(name, Role.BASE)),
                steps.load(dm, intermediate, lambda: part, steps.table_text(part)),
                steps.resume(dm, intermediate),
            ]
        s += [
            steps.create(dm, name, uuid(name, Role.VIEW)),
            steps.load(dm, name, lambda: view, steps.table_text(view), ro=True),
            steps.resume(dm, name),
            steps.load(dm, origin, snap_table, f"0 {size} snapshot {base} {slot} P {chunk}"),
        ]
        fold_back = Step(
            f"fold {cow.name} back into {base_path} (snapshot-merge), then load the "
            f"linear table into {origin}",
            lambda: self._fold_back(origin, table, base, slot, chunk, base_path),
        )
        lockfs = not request.frozen_above
        swap = [steps.suspend(dm, origin, lockfs=lockfs), steps.resume(dm, origin, fold_back)]
        after = (steps.set_ro(self.host.run, lambda: base_path, base_path, True),)
        details = DmDetails(
            origin,
            table,
            cow,
            chunk,
            request.target.fstype or "",
            base=str(base),
            table_id=disk_ident(table, self.host.run),
        )
        record = SnapshotRecord(
            name, self.name, MAPPER + origin, MAPPER + name, 0.0, details.to_strings()
        )
        return f"create dm-direct snapshot {name} of {MAPPER}{origin}", s, swap, after, record

    def _fold_back(
        self, origin: str, table: Table, base: Dev, loop: object, chunk: int, base_path: str
    ) -> None:
        """Undo a live ``snapshot`` origin without losing the writes its COW took."""
        dm = self.dm
        self.host.run.run(["blockdev", "--setrw", base_path])
        merge = Table.single(table.size, SnapshotMerge(base, str(loop), Store.PERSISTENT, chunk))
        dm.load(origin, merge)
        dm.suspend(origin)
        dm.resume(origin)
        steps.wait_merged(dm, origin, timeout=600)
        dm.load(origin, table)
        dm.suspend(origin)
        dm.resume(origin)

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        d = DmDetails.of(record)
        dm = self.dm
        table = dm.table(d.origin_name) if dm.info(d.origin_name) else None
        kind = table.lines[0].target.type_name if table else None
        if kind == "snapshot-merge":
            health = merge_state(dm.status(d.origin_name), d.merge_from, record.name)
            return SnapshotStatus(record, health.state, None, health.percent, health.message)
        if d.pending is Pending.CREATE:
            return SnapshotStatus(
                record,
                State.INVALID,
                None,
                None,
                "its create was cut short (or is running): 'snapkit recover' settles it",
            )
        if d.pending and kind == "snapshot":
            return SnapshotStatus(
                record,
                State.ACTIVE,
                None,
                None,
                f"{d.pending} not started yet: run 'snapkit snapshot {d.pending} "
                f"{record.name}' again",
            )
        if d.pending:
            return SnapshotStatus(record, State.MERGED, None, 100.0, f"{d.pending} to finish")
        if kind != "snapshot":
            return SnapshotStatus(
                record,
                State.INVALID,
                None,
                None,
                f"{MAPPER}{d.origin_name} is no longer a snapshot (rebooted?); discard it",
            )
        health = snapshot_state(dm.status(d.origin_name), record.name)
        return SnapshotStatus(record, health.state, health.percent, None, health.message)

    def _in_use(self, record: SnapshotRecord, op: str, *, force: bool = False) -> None:
        """Refuse while the snapshot is mounted: through its layer (even with ``force``, as a
        mounted layer cannot be removed), or directly (unless ``force``); the layer's own
        table holds the view once."""
        layer = Layer.of(record)
        refuse_if_mounted_layer(self.dm, layer, op)
        if self.dm.info(layer.name) is None:
            if not force:
                refuse_if_open(self.dm, record.name, "the snapshot")
            return
        view = self.dm.info(record.name)
        if view is not None and view.open_count > 1 and not force:
            raise RefusedError(
                f"the snapshot {record.device} is in use (mounted?) beside its layer",
                hint=f"unmount it first (umount {record.device}), or pass --force to discard",
            )

    def _start(self, record: SnapshotRecord, title: str, new: Table) -> Plan:
        d = DmDetails.of(record)
        dm, name, origin = self.dm, record.name, d.origin_name
        base_path = _dev_path(_parse_base(d.base))
        view = Table.single(d.table.size, Linear(_parse_base(d.base), 0))

        def restore_view() -> None:
            dm.create(name, uuid=uuid(name, Role.VIEW))
            dm.load(name, view, read_only=True)
            dm.resume(name)

        return Plan(
            title,
            (
                *teardown(self.host, Layer.of(record)),
                steps.remove(dm, name, restore_view),
                steps.set_ro(self.host.run, lambda: base_path, base_path, False),
                steps.load(dm, origin, lambda: new, steps.table_text(new)),
                steps.suspend(dm, origin),
                steps.resume(dm, origin),
            ),
        )

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        """Roll back: the origin becomes ``linear BASE`` again and the COW's writes are dropped."""
        d = DmDetails.of(record)
        refuse_if_mounted(Path(MAPPER + d.origin_name), f"merging {record.name}")
        self._in_use(record, f"merging {record.name}")
        return self._start(
            record, f"merge (roll back) {MAPPER}{d.origin_name} to {record.name}", d.table
        )

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        """Keep the current content: the kernel merges the COW into BASE, origin mounted or not."""
        d = DmDetails.of(record)
        self._in_use(record, f"discarding {record.name}", force=force)
        state = self.status(record).state
        if state in (State.MERGING, State.MERGED):
            return Plan(f"discard {record.name}: already started", ())
        if state is not State.ACTIVE:
            raise RefusedError(
                f"snapshot {record.name} is {state}: the origin's writes since it are lost",
                hint=f"'snapkit snapshot merge {record.name}' rolls the origin back to it",
            )
        loops = self.host.loops.find(d.cow_file)
        if not loops:
            raise RefusedError(f"no loop device is attached to {d.cow_file}")
        base = _parse_base(d.base)
        merge = Table.single(
            d.table.size, SnapshotMerge(base, str(loops[0]), Store.PERSISTENT, d.chunk)
        )
        return self._start(record, f"discard {record.name} (merge its COW into {base})", merge)

    def mark_pending(self, record: SnapshotRecord, operation: Pending) -> SnapshotRecord:
        return mark_pending(self.dm, record, operation, DmDetails.of(record).origin_name)

    def started(self, record: SnapshotRecord) -> bool:
        """Started once the origin no longer carries the ``snapshot`` table."""
        d = DmDetails.of(record)
        table = self.dm.table(d.origin_name) if self.dm.info(d.origin_name) else None
        return table is None or table.lines[0].target.type_name != "snapshot"

    def plan_finish(self, record: SnapshotRecord) -> Plan:
        d = DmDetails.of(record)
        dm, origin = self.dm, d.origin_name
        s: list[Step] = []
        table = dm.table(origin) if dm.info(origin) else None
        if table is not None and table.lines[0].target.type_name != "linear":
            s += [
                steps.load(dm, origin, lambda: d.table, steps.table_text(d.table)),
                steps.suspend(dm, origin),
                steps.resume(dm, origin),
            ]
        # no undos: finish converges by running again, and putting a layer back over a view
        # a later failure may already have removed could only fail
        s += [replace(step, undo=None) for step in teardown(self.host, Layer.of(record))]
        for name in (record.name, base_name(record.name)):
            if dm.info(name) is not None:
                s.append(steps.remove(dm, name))
        s += [
            steps.detach_all(self.host.loops, d.cow_file),
            steps.unlink(self.host.files, d.cow_file),
        ]
        return Plan(
            f"finish {record.name}: {MAPPER}{origin} is linear again; free the COW", tuple(s)
        )


def _parse_base(text: str) -> Dev:
    from snapkit.dm.table import parse_dev

    return parse_dev(text)


__all__ = ["DmDirectMethod"]
