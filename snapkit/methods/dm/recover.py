"""``recover`` for dm and dm-direct: re-assemble their stacks after a crash or a reboot.

Why it is needed: device-mapper tables live in kernel memory, so a power cut takes away the
prepared linear devices, ``-real``, the snapshot devices and the loops -- while the COW files,
which hold the snapshot's exceptions on disk (persistent store ``P``), survive. A dm record is
written only after a create's plan has run (``Flow.create``), so:

* a record with its COW file is a complete snapshot: its stack is re-assembled as the create
  left it (``-real`` with the original table, origin as ``snapshot-origin``, the snapshot over
  a fresh loop on the COW file); the kernel reloads the exceptions from the COW;
* a record marked ``pending merge`` gets ``snapshot-merge`` loaded into the origin: the kernel
  resumes the merge from what is left on disk (merged batches were zeroed there), and
  ``merge --wait`` finishes it. The mark is saved *before* the merge starts, so it may also
  mean "the kernel never started": the COW is then whole, and ``snapshot-merge`` merges it
  from the beginning -- merging a COW onto its own origin is idempotent, so both are safe.
  Without a reboot (the devices still there), the flow restarts a merge that never started;
* a record marked ``pending discard`` needs nothing from its COW: it is freed and dropped;
* a ``*.cow`` file that no record names is what a create cut short left: removed, so the
  snapshot is cleanly absent; the origin lost nothing (the suspend/resume never completed, or
  the snapshot simply never got recorded);
* a ``dm-direct`` record comes back as its create left it: the base device (or the
  intermediate ``-base`` for an origin at an offset), the read-only view over it, the origin
  as ``snapshot BASE COW P`` (the kernel reloads the exceptions, i.e. the writes since the
  snapshot), then ``blockdev --setro BASE``. Its verbs are inverted (see the method), so a
  pending ``merge`` (roll back) loads the original ``linear`` table, and a pending ``discard``
  (keep the writes since) loads ``snapshot-merge BASE COW`` and needs the COW: both are then
  finished by the flow. Its throwaway mount layer (:mod:`snapkit.methods.dm.layer`) does not
  survive a reboot: its loop and file are removed and the record forgets it
  (:mod:`snapkit.methods.dm.recover_direct`).

Disks are found by what does not move across reboots (a loop's backing file, a disk's
serial, a filesystem UUID: ``snapkit.host.target.StableId``), not by the kernel name and
major:minor they had, which follow probe order. A disk that cannot be found is refused, before
anything is changed.

Idempotent: what is already there is left alone, so running it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from snapkit.dm import steps
from snapkit.dm.control import DmControl
from snapkit.dm.naming import Role, parse_uuid, real_name, uuid
from snapkit.dm.table import DevNum, Linear, Snapshot, SnapshotMerge, SnapshotOrigin, Store, Table
from snapkit.errors import RefusedError
from snapkit.host.loopdev import LoopSlot
from snapkit.host.target import StableId, block_devnum, block_info, find_stable
from snapkit.methods.base import Context, FamilyRecovery, Recovered
from snapkit.methods.dm import DM_METHODS
from snapkit.methods.dm.layer import Layer, forgotten, teardown
from snapkit.methods.dm.recover_direct import origin_steps, orphan_layers, reassemble, settle_create
from snapkit.methods.dm.shared import MAPPER, DmDetails
from snapkit.model import Pending, SnapshotRecord
from snapkit.plan import Plan, Step
from snapkit.state import StateData, loop_backing


class DmRecovery(FamilyRecovery):
    """dm and dm-direct: re-assemble their stacks and the prepared devices under them
    (device-mapper keeps nothing across a reboot, so there is nothing to activate)."""

    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        return plan_recover(self.ctx, data)


def plan_recover(ctx: Context, data: StateData) -> tuple[Plan, Recovered]:
    """The plan that re-assembles ``data``, and what it means (its actions are the plan's
    steps, known up front)."""
    dm, host = ctx.host.dm, ctx.host
    s: list[Step] = []
    done = Recovered()
    dropped, merging = done.dropped, done.merging
    stacked: set[str] = set()  # origins whose -real and snapshot-origin are planned already
    # An origin merging one snapshot keeps snapshot-merge even with siblings beside it.
    merging_into = {_dm_origin(r) for r in data.snapshots if r.pending is Pending.MERGE}
    origins: list[Step] = []  # their snapshot-origin loads, kept for after every snapshot
    for prepared in data.devices:
        if dm.info(prepared.name) is not None:
            continue
        users = [r for r in data.snapshots if _dm_origin(r) == prepared.name]
        if any(_usable(ctx, r) for r in users):
            continue  # the snapshot stack below creates it with the right table
        table = _linear_over(prepared.device, prepared.ident, ctx, prepared.name)
        if table is None:
            continue
        s += [
            steps.create(dm, prepared.name, uuid(prepared.name, Role.ORIGIN)),
            steps.load(dm, prepared.name, _const(table), steps.table_text(table)),
            steps.resume(dm, prepared.name),
        ]
    for record in data.snapshots:
        if record.method not in DM_METHODS:
            continue
        d = DmDetails.of(record)
        if record.method == "dm-direct" and dm.info(Layer.of(record).name) is None:
            s += teardown(host, Layer.of(record))  # the layer is gone with the reboot
            if record != forgotten(record):
                record = forgotten(record)
                done.saved.append(record)
        if record.method == "dm-direct" and d.pending is Pending.CREATE and _usable(ctx, record):
            if dm.info(d.origin_name) is None:  # rebooted: the disk may have moved
                record = _repointed(ctx, record, d)
            settled, keep = settle_create(ctx, record)
            s += settled
            if keep is None:
                done.gone.append(record.name)
                dropped.append(record.name)
            else:
                done.saved.append(keep)
            continue
        if not _usable(ctx, record):
            s.append(steps.detach_all(host.loops, d.cow_file))
            if host.files.exists(d.cow_file):
                s.append(steps.unlink(host.files, d.cow_file))
            done.gone.append(record.name)
            dropped.append(record.name)
            continue
        if dm.info(d.origin_name) is not None and (dm.info(record.name) is not None or d.pending):
            if d.pending:
                merging.append(record.name)  # no reboot: the flow (re)starts and finishes it
            else:
                s += finish_window(dm, record.name, d.origin_name)
            continue  # already assembled
        if (repointed := _repointed(ctx, record, d)) != record:
            record, d = repointed, DmDetails.of(repointed)
            done.saved.append(record)
        if record.method == "dm-direct":
            direct, rebased = reassemble(ctx, record)
            s += direct
            done.saved += [] if rebased == record else [rebased]
            merging += [record.name] if d.pending else []
            continue
        slot = LoopSlot(d.cow_file)
        loops = host.loops.find(d.cow_file)
        if loops:
            slot.device = loops[0]
        else:
            s.append(steps.attach(host.loops, slot))
        real = real_name(d.origin_name)
        size = d.table.size
        if d.origin_name not in stacked and dm.info(real) is None:
            s += [
                steps.create(dm, real, uuid(d.origin_name, Role.REAL)),
                steps.load(dm, real, _const(d.table), steps.table_text(d.table)),
                steps.resume(dm, real),
            ]
        if d.pending is Pending.MERGE:
            merge = _cow_table(SnapshotMerge, size, real, slot, d.chunk)
            s += origin_steps(
                ctx, d.origin_name, merge, f"snapshot-merge {MAPPER}{real} {slot} P {d.chunk}"
            )
            merging.append(record.name)
        else:
            snap = _cow_table(Snapshot, size, real, slot, d.chunk)
            s += [
                steps.create(dm, record.name, uuid(record.name, Role.SNAP)),
                steps.load(dm, record.name, snap, f"snapshot {MAPPER}{real} {slot} P {d.chunk}"),
                steps.resume(dm, record.name),
            ]
            if d.origin_name not in stacked and d.origin_name not in merging_into:
                origin = Table.single(size, SnapshotOrigin(MAPPER + real))
                origins += origin_steps(
                    ctx, d.origin_name, _const(origin), steps.table_text(origin)
                )
        stacked.add(d.origin_name)
    # Only now the origins: a snapshot-origin sizes its I/O split to its snapshots' chunk when
    # it is resumed. Resumed before its snapshot exists (measured on 6.1), it splits nothing,
    # and a later 64 KiB write to the origin COWs only its first chunk: the snapshot silently
    # shows new data in the rest. So every snapshot of an origin is live before it resumes.
    s += origins
    for layer in orphan_layers(ctx, data):
        s += teardown(host, layer)
    undone: set[Path] = set()
    for name in _unresumed(dm, data):
        s += undo_window(dm, name)
        cow = _cow_of(dm, name)
        if cow is not None:
            undone.add(cow)
            s += [steps.detach_all(host.loops, cow), steps.unlink(host.files, cow)]
            dropped.append(cow.name)
    for orphan in _orphan_cows(ctx, data):
        if orphan not in undone:
            s += [steps.detach_all(host.loops, orphan), steps.unlink(host.files, orphan)]
        dropped.append(orphan.name)
    plan = Plan("recover snapkit's devices after a crash or reboot", tuple(s))
    done.actions += [step.description for step in s]
    return plan, done


# -- helpers ----------------------------------------------------------------------------------


def _unresumed(dm: DmControl, data: StateData) -> list[str]:
    """snapkit snapshot devices with a loaded table only, that no record or group names: a
    create that died inside its window before the snapshot was resumed."""
    grouped = {m for g in data.groups for m in g.members}
    found = []
    for name in sorted(dm.list_devices()):
        info = dm.info(name)
        if info is None or parse_uuid(info.uuid) != (name, Role.SNAP) or info.active_table:
            continue
        if data.snapshot(name) is None and name not in grouped:
            found.append(name)
    return found


def _cow_of(dm: DmControl, snap: str) -> Path | None:
    """The COW file under an unresumed snapshot's loaded table, if snapkit named it."""
    loaded = dm.table(snap, inactive=True)
    target = loaded.lines[0].target if loaded else None
    if not isinstance(target, Snapshot):
        return None
    backing = loop_backing(target.cow)
    return Path(backing) if backing.endswith(f"/{snap}.cow") else None


def undo_window(dm: DmControl, snap: str) -> list[Step]:
    """A create that died, watchdog and all, before its snapshot was resumed: the snapshot
    device has only its loaded table (so no record was adopted for it), and the origin may be
    suspended with snapshot-origin loaded. Its COW is swept as an orphan, so the snapshot is
    made cleanly absent: the origin resumed with its old table, the devices the create made
    removed (``-real`` only if the origin no longer uses it)."""
    info = dm.info(snap)
    if info is None or parse_uuid(info.uuid) != (snap, Role.SNAP) or dm.table(snap) is not None:
        return []
    loaded = dm.table(snap, inactive=True)
    target = loaded.lines[0].target if loaded else None
    s: list[Step] = []
    # The kernel shows a table's devices as major:minor (253:1), the fakes as the path given.
    by_dev = {str(dev): name for name, dev in dm.list_devices().items()}
    under = by_dev.get(str(getattr(target, "origin", "")), str(getattr(target, "origin", "")))
    if isinstance(target, Snapshot) and under.removeprefix(MAPPER).endswith("-real"):
        real = under.removeprefix(MAPPER)
        origin = real.removesuffix("-real")
        held = dm.info(origin)
        if held is not None and held.suspended:
            s.append(Step(f"dmsetup clear {origin}", lambda: dm.clear(origin)))
            s.append(steps.resume(dm, origin))
        kept = dm.table(origin) if held is not None else None
        uses_real = kept is not None and kept.lines[0].target.type_name != "linear"
        s.append(steps.remove(dm, snap))
        if dm.info(real) is not None and not uses_real:
            s.append(steps.remove(dm, real))
        return s
    return [steps.remove(dm, snap)]


def finish_window(dm: DmControl, snap: str, origin: str) -> list[Step]:
    """A create whose process died inside its suspend window, and whose watchdog died too:
    the origin still suspended, every table loaded before the suspend. Finish it as the
    watchdog would (:mod:`snapkit.methods.dm.window`): the snapshot, then the origin, resumed
    -- the snapshot is whole, taken at the suspend; leaving it suspended hangs every writer."""
    info = dm.info(origin)
    if info is None or not info.suspended:
        return []
    snap_info = dm.info(snap)
    first = (
        [steps.resume(dm, snap)]
        if snap_info is not None and (snap_info.suspended or snap_info.inactive_table)
        else []
    )
    return [*first, steps.resume(dm, origin)]


def _const(table: Table) -> Callable[[], Table]:
    return lambda: table


def _dm_origin(record: SnapshotRecord) -> str:
    return record.details.get("origin_name", "") if record.method in DM_METHODS else ""


def _usable(ctx: Context, record: SnapshotRecord) -> bool:
    """A dm record whose COW file survived; a pending dm discard needs nothing more (a
    dm-direct one does: its COW holds the writes it keeps)."""
    if record.method not in DM_METHODS:
        return False
    d = DmDetails.of(record)
    dropping = d.pending is Pending.DISCARD and record.method == "dm"
    return not dropping and ctx.host.files.exists(d.cow_file)


def _moved(ctx: Context, ident: StableId, whose: str) -> DevNum:
    dev = find_stable(ident, ctx.host.run)
    if dev is None:
        raise RefusedError(
            f"the disk under {whose} ({ident}) is not attached",
            hint="attach it and run 'snapkit recover' again; nothing was changed",
        )
    return dev


def _repointed(ctx: Context, record: SnapshotRecord, d: DmDetails) -> SnapshotRecord:
    """``record`` with its original table pointed at its disk's number now."""
    original = _found_again(ctx, record, d)
    if original == d.table:
        return record
    fixed = DmDetails(**{**vars(d), "table": original})
    return replace(record, details={**record.details, **fixed.to_strings()})


def _found_again(ctx: Context, record: SnapshotRecord, d: DmDetails) -> Table:
    """The origin's original table, pointed at its disk's number *now*: after a reboot the
    recorded major:minor may name another disk."""
    target = d.table.lines[0].target
    if d.table_id is None or not isinstance(target, Linear):
        return d.table
    dev = _moved(ctx, d.table_id, f"snapshot {record.name}")
    return Table.single(d.table.size, Linear(dev, target.offset))


def _linear_over(
    device: str, ident: StableId | None = None, ctx: Context | None = None, name: str = ""
) -> Table | None:
    dev = block_devnum(device)
    if ident is not None and ctx is not None:
        dev = _moved(ctx, ident, f"/dev/mapper/{name}")
    info = block_info(dev) if dev is not None else None
    if dev is None or info is None:
        return None
    return Table.single(info.size_sectors, Linear(DevNum(dev.major, dev.minor), 0))


def _cow_table(
    kind: type[Snapshot] | type[SnapshotMerge], size: int, real: str, slot: LoopSlot, chunk: int
) -> Callable[[], Table]:
    """The table, built when its step runs: the loop device is known only then."""

    def table() -> Table:
        return Table.single(size, kind(MAPPER + real, str(slot.path), Store.PERSISTENT, chunk))

    return table


def _orphan_cows(ctx: Context, data: StateData) -> list[Path]:
    """COW files in snapkit's own COW directory that no record names: creates cut short."""
    cow_dir = ctx.cow_dir
    named = {r.details.get("cow_file", "") for r in data.snapshots}
    try:
        found = sorted(cow_dir.glob("*.cow"))
    except OSError:
        return []
    return [p for p in found if str(p) not in named]


__all__ = ["DmRecovery", "plan_recover"]
