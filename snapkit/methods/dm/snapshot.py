"""``dm``: raw device-mapper snapshots the LVM way, for a filesystem not on LVM.

The origin must be a dm ``linear`` device (``snapkit device prepare`` makes one). Create builds
what ``lvcreate -s`` builds (call it "the LVM way"): ``ORIGIN-real`` with the
origin's table, a COW on a loop device over a sparse file, the ``snapshot`` device, and the
origin reloaded as ``snapshot-origin`` -- all tables loaded first, then one suspend of the
origin (which freezes its filesystem), the snapshot resumed, the origin resumed: three ioctls
from this process, nothing spawned inside the window. A second snapshot of the same origin
reuses ``-real`` and only needs the suspend/resume pair.

Merge (roll the origin back): refused while the origin is mounted; the snapshot device is
removed and ``snapshot-merge`` loaded into the origin; the kernel copies the COW back (the
origin already reads as the snapshot); when X == Z, :meth:`DmMethod.plan_finish` loads the
original ``linear`` table and frees ``-real``, the loop device and the COW file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from snapkit.dm import steps
from snapkit.dm.control import DmControl
from snapkit.dm.naming import Role, real_name, snapkit_name, uuid
from snapkit.dm.table import Snapshot, SnapshotMerge, SnapshotOrigin, Store, Table
from snapkit.errors import RefusedError, split_advice
from snapkit.host.cowdir import check_cow_dir, check_cow_space
from snapkit.host.freezing import guard_suspend
from snapkit.host.loopdev import LoopSlot
from snapkit.methods.base import Host, Phases
from snapkit.methods.dm.shared import (
    MAPPER,
    DmDetails,
    cow_bytes,
    disk_ident,
    dm_origin,
    mark_pending,
    merge_failed,
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


class DmMethod:
    name: ClassVar[str] = "dm"
    records_first: ClassVar[bool] = False

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dm = host.dm

    def unsuitable(self, target: Target) -> str | None:
        return origin_refusal(self.dm, target, want="linear|snapshot-origin")

    # -- create -------------------------------------------------------------------------------

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        title, s, swap, record, revert = self._parts(request)
        names = [record.name, DmDetails.of(record).origin_name]
        if revert is not None:  # the watchdog's stop follows it: a signal there must undo it
            swap[2] = replace(swap[2], undo=revert.do, undo_description=revert.description)
        window = guard_window(names, swap, request.max_freeze, self.host.resume_watchdog)
        s += guard_suspend(request.target, window, request.max_freeze)
        return Plan(title, tuple(s)), record

    def plan_phases(self, request: CreateRequest) -> Phases:
        """The create, split for a group (:class:`~snapkit.methods.base.Phases`): the
        suspend of the origin is the hold; resuming the snapshot and then the origin (which
        swaps ``snapshot-origin`` in) is the release. The origin's resume commits, so here it
        has an undo -- the original table loaded back with a suspend/resume -- which a single
        create never needs (it is its last step). A filesystem that a dm suspend does not
        freeze (btrfs) would need a FIFREEZE, under which a lockfs suspend fails (EBUSY on
        6.1): refused."""
        refuse_unfrozen(request.target)
        title, s, swap, record, revert = self._parts(request)
        suspend, resume_snap, resume_origin = swap
        if revert is not None:
            resume_origin = replace(
                resume_origin, undo=revert.do, undo_description=revert.description
            )
        names = (record.name, DmDetails.of(record).origin_name)
        return Phases(title, tuple(s), (suspend,), (resume_snap, resume_origin), record, (), names)

    def _parts(
        self, request: CreateRequest
    ) -> tuple[str, list[Step], list[Step], SnapshotRecord, Step | None]:
        """The title, the steps before the window, the window's three steps (suspend the
        origin, resume the snapshot, resume the origin), the record, and how to put the
        origin's original table back once the window's last step swapped it (None when the
        origin was a ``snapshot-origin`` already: the swap changes nothing)."""
        dm, name = self.dm, snapkit_name(request.name)
        origin, table = dm_origin(self.dm, request.target, want="linear|snapshot-origin")
        real = real_name(origin)
        chunk = chunk_sectors(request.chunk_sectors)
        first = table.lines[0].target.type_name == "linear"
        if first:
            if dm.info(real) is not None:
                raise RefusedError(f"a dm device named {real} already exists", hint="remove it")
            original = table
        else:
            original = self._real_table(origin, table)
        if dm.info(name) is not None:
            raise RefusedError(
                f"a dm device named {name} already exists", hint="choose another --name"
            )
        if request.cow_dir is None:
            raise RefusedError("no --cow-dir given")
        check_cow_dir(request.cow_dir, request.target)
        size = table.size
        cow_size = cow_bytes(request, size)
        check_cow_space(request.cow_dir, cow_size, force=request.force)
        cow = request.cow_dir / f"{name}.cow"
        if self.host.files.exists(cow):
            raise RefusedError(
                f"the COW file {cow} already exists", hint="remove it or choose another --name"
            )
        slot = LoopSlot(cow)
        real_path = MAPPER + real

        def snap_table() -> Table:
            return Table.single(size, Snapshot(real_path, str(slot.path), Store.PERSISTENT, chunk))

        origin_table = Table.single(size, SnapshotOrigin(real_path))
        snap_text = f"0 {size} snapshot {real_path} {slot} P {chunk}"
        s: list[Step] = [
            steps.cow_file(self.host.files, cow, cow_size),
            steps.attach(self.host.loops, slot),
        ]
        if first:
            s += [
                steps.create(dm, real, uuid(origin, Role.REAL)),
                steps.load(dm, real, lambda: original, steps.table_text(original)),
                steps.resume(dm, real),
            ]
        s += [
            steps.create(dm, name, uuid(name, Role.SNAP)),
            steps.load(dm, name, snap_table, snap_text),
        ]
        if first:
            s.append(steps.load(dm, origin, lambda: origin_table, steps.table_text(origin_table)))
        lockfs = not request.frozen_above
        swap = [
            steps.suspend(dm, origin, lockfs=lockfs),
            steps.resume(dm, name),
            steps.resume(dm, origin),
        ]
        revert = None
        if first:
            revert = Step(
                f"dmsetup load {origin} --table '{steps.table_text(original)}'; "
                f"dmsetup suspend {origin}; dmsetup resume {origin}",
                lambda: _put_back(dm, origin, original),
            )
        details = DmDetails(
            origin,
            original,
            cow,
            chunk,
            request.target.fstype or "",
            table_id=disk_ident(original, self.host.run),
        )
        record = SnapshotRecord(
            name, self.name, MAPPER + origin, MAPPER + name, 0.0, details.to_strings()
        )
        return f"create dm snapshot {name} of {MAPPER}{origin}", s, swap, record, revert

    def _real_table(self, origin: str, table: Table) -> Table:
        real = real_name(origin)
        target = table.lines[0].target
        info = self.dm.info(real)
        if (
            not isinstance(target, SnapshotOrigin)
            or info is None
            or info.uuid != uuid(origin, Role.REAL)
        ):
            raise RefusedError(
                f"{MAPPER}{origin} is a snapshot-origin snapkit did not make",
                hint="snapshot it with the tool that made it",
            )
        real_table = self.dm.table(real)
        if real_table is None:
            raise RefusedError(f"{MAPPER}{real} has no table")
        return real_table

    # -- status -------------------------------------------------------------------------------

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        d = DmDetails.of(record)
        dm = self.dm
        origin_table = dm.table(d.origin_name) if dm.info(d.origin_name) else None
        kind = origin_table.lines[0].target.type_name if origin_table else None
        if d.pending:
            if kind == "snapshot-merge":
                health = merge_state(dm.status(d.origin_name), d.merge_from, record.name)
                return SnapshotStatus(record, health.state, None, health.percent, health.message)
            if not self.started(record):
                return SnapshotStatus(
                    record,
                    State.ACTIVE,
                    None,
                    None,
                    f"{d.pending} not started yet: run 'snapkit snapshot {d.pending} "
                    f"{record.name}' again",
                )
            return SnapshotStatus(record, State.MERGED, None, 100.0, f"{d.pending} to finish")
        if dm.info(record.name) is None:
            return SnapshotStatus(
                record,
                State.INVALID,
                None,
                None,
                "its dm devices are gone (rebooted?); discard it to free the COW file",
            )
        health = snapshot_state(dm.status(record.name), record.name)
        return SnapshotStatus(record, health.state, health.percent, None, health.message)

    # -- merge: roll the origin back ----------------------------------------------------------

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        d = DmDetails.of(record)
        dm, name, origin = self.dm, record.name, d.origin_name
        real = real_name(origin)
        refuse_if_mounted(Path(MAPPER + origin), f"merging {name} into {MAPPER}{origin}")
        refuse_if_open(dm, name, "the snapshot")
        # Sibling snapshots of the origin stay: the kernel copies each merged chunk through
        # the origin's write path (origin_write_extent), so a sibling gets its own copy of
        # that chunk first -- as under lvconvert --merge; plan_finish then puts
        # snapshot-origin back for them instead of the plain table.
        # A restart of a merge cut short after the snapshot device went: the COW on disk is
        # intact (nothing merges without snapshot-merge), so snapshot-merge can still load.
        # A snapshot device left with no table (a restore that failed) counts as gone.
        empty = dm.info(name) is not None and dm.table(name) is None
        restart = d.pending is Pending.MERGE and (empty or dm.info(name) is None)
        health = snapshot_state(() if restart else dm.status(name), name)
        if health.usage is None and not restart:
            what, todo = split_advice(health.message)
            raise RefusedError(f"snapshot {name} cannot be merged: {what}", hint=todo)
        loop = self._loop(d)
        size = d.table.size
        merge_table = Table.single(
            size, SnapshotMerge(MAPPER + real, str(loop), Store.PERSISTENT, d.chunk)
        )
        snap_table = Table.single(
            size, Snapshot(MAPPER + real, str(loop), Store.PERSISTENT, d.chunk)
        )

        def restore() -> None:
            """Rebuild the snapshot device; if the COW cannot be read (an I/O error: measured,
            "Failed to read snapshot metadata"), leave no empty device behind, so that the
            pending mark describes what is there: a merge not started, run again once the COW
            is readable."""
            dm.create(name, uuid=uuid(name, Role.SNAP))
            try:
                dm.load(name, snap_table)
                dm.resume(name)
            except BaseException:
                dm.remove(name)
                raise

        first: tuple[Step, ...] = () if restart else (steps.remove(dm, name, restore),)
        if empty:
            first = (steps.remove(dm, name),)
        if restart and merge_failed(dm.status(origin)):
            first = self._unload_failed_merge(origin, size)
        return Plan(
            f"merge dm snapshot {name} into {MAPPER}{origin}",
            (
                *first,
                steps.load(dm, origin, lambda: merge_table, steps.table_text(merge_table)),
                steps.suspend(dm, origin),
                steps.resume(dm, origin),
            ),
        )

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        d = DmDetails.of(record)
        if d.pending is Pending.MERGE and self.status(record).state is State.MERGING:
            raise RefusedError(
                f"{record.name} is being merged into {MAPPER}{d.origin_name}",
                hint=f"wait for it: snapkit snapshot merge {record.name} --wait",
            )
        if not force:
            refuse_if_open(self.dm, record.name, "the snapshot")
        return Plan(f"discard dm snapshot {record.name}", (steps.remove(self.dm, record.name),))

    def mark_pending(self, record: SnapshotRecord, operation: Pending) -> SnapshotRecord:
        return mark_pending(self.dm, record, operation, record.name)

    def started(self, record: SnapshotRecord) -> bool:
        """A merge has started once ``snapshot-merge`` replaced ``snapshot-origin`` (from then
        on the finish only restores the plain table); a discard once the snapshot is gone."""
        d = DmDetails.of(record)
        if d.pending == "discard":
            return self.dm.info(record.name) is None
        table = self.dm.table(d.origin_name) if self.dm.info(d.origin_name) else None
        if table is not None and table.lines[0].target.type_name == "snapshot-merge":
            return not merge_failed(self.dm.status(d.origin_name))  # failed: start it again
        return table is None or table.lines[0].target.type_name != "snapshot-origin"

    def _unload_failed_merge(self, origin: str, size: int) -> tuple[Step, ...]:
        """Put ``snapshot-origin`` back in place of a ``snapshot-merge`` the kernel stopped.
        The same table cannot simply be reloaded (the old target still claims the COW: "A
        snapshot is already merging"), and a handover would keep the stopped target's
        in-memory store; a fresh ``snapshot-merge`` after this reads the COW's exceptions
        from disk, where an unmerged chunk stays until its copy is committed. In between,
        the origin is unmounted (merge refuses otherwise) and the state is the one a merge
        cut short after the snapshot device went: ``started`` is False, a re-run restarts."""
        dm = self.dm
        plain = Table.single(size, SnapshotOrigin(MAPPER + real_name(origin)))
        return (
            steps.load(dm, origin, lambda: plain, steps.table_text(plain)),
            steps.suspend(dm, origin),
            steps.resume(dm, origin),
        )

    def plan_finish(self, record: SnapshotRecord) -> Plan:
        """Back to the plain table once nothing depends on ``-real``; free loop and COW file.
        Built from what the kernel shows, so it can be re-run after an interruption."""
        d = DmDetails.of(record)
        dm, origin = self.dm, d.origin_name
        real = real_name(origin)
        s: list[Step] = [steps.remove(dm, record.name)] if dm.info(record.name) else []
        table = dm.table(origin) if dm.info(origin) else None
        kind = table.lines[0].target.type_name if table else None
        last = not self._siblings(origin, exclude=record.name)
        if last and kind in ("snapshot-origin", "snapshot-merge"):
            original = dm.table(real) if dm.info(real) else d.table
            assert original is not None
            s += [
                steps.load(dm, origin, lambda: original, steps.table_text(original)),
                steps.suspend(dm, origin),
                steps.resume(dm, origin),
            ]
        elif kind == "snapshot-merge":  # siblings still hang on -real: keep them tracked
            plain = Table.single(d.table.size, SnapshotOrigin(MAPPER + real))
            s += [
                steps.load(dm, origin, lambda: plain, steps.table_text(plain)),
                steps.suspend(dm, origin),
                steps.resume(dm, origin),
            ]
        if last and dm.info(real) is not None:
            s.append(steps.remove(dm, real))
        s += [
            steps.detach_all(self.host.loops, d.cow_file),
            steps.unlink(self.host.files, d.cow_file),
        ]
        return Plan(f"finish {record.name}: restore {MAPPER}{origin} and free the COW", tuple(s))

    # -- extend: grow the COW before it fills ------------------------------------------------

    def plan_extend(self, record: SnapshotRecord, by_bytes: int) -> Plan:
        """Grow the sparse COW file, make the loop see the new size (``losetup -c``), and
        reload the snapshot's own table with a suspend/resume of the snapshot device only:
        the origin's writers never wait. The table is the same; the kernel reads the COW
        device's size again, so the status's total (Y) grows."""
        d = DmDetails.of(record)
        dm, name = self.dm, record.name
        health = snapshot_state(dm.status(name) if dm.info(name) else (), name)
        usage = health.usage
        if usage is None:
            what, todo = split_advice(health.message)
            raise RefusedError(f"growing the COW of {name} cannot help: {what}", hint=todo)
        table = dm.table(name)
        assert table is not None
        loop = Path(str(self._loop(d)))
        chunk_bytes = d.chunk * 512
        size = usage.total * 512 + -(-by_bytes // chunk_bytes) * chunk_bytes
        files, loops = self.host.files, self.host.loops
        return Plan(
            f"grow the COW of {name} to {size} bytes",
            (
                Step(f"grow {d.cow_file} to {size} bytes", lambda: files.grow(d.cow_file, size)),
                Step(f"losetup --set-capacity {loop}", lambda: loops.refresh(loop)),
                steps.load(dm, name, lambda: table, steps.table_text(table)),
                steps.suspend(dm, name),
                steps.resume(dm, name),
            ),
        )

    # -- helpers ------------------------------------------------------------------------------

    def _loop(self, d: DmDetails) -> object:
        loops = self.host.loops.find(d.cow_file)
        if not loops:
            raise RefusedError(f"no loop device is attached to {d.cow_file}", hint="discard it")
        return loops[0]

    def _siblings(self, origin: str, *, exclude: str) -> list[str]:
        """Other snapkit snapshot devices whose origin is ``origin``'s -real device."""
        real = self.dm.info(real_name(origin))
        if real is None:
            return []
        found = []
        for name in sorted(self.dm.list_devices()):
            if name == exclude:
                continue
            table = self.dm.table(name)
            target = table.lines[0].target if table else None
            if isinstance(target, Snapshot) and str(target.origin) in (
                str(real.dev),
                MAPPER + real_name(origin),
            ):
                found.append(name)
        return found


def _put_back(dm: DmControl, origin: str, original: Table) -> None:
    """The origin back on its original table, after a group's later member failed. The
    filesystem is live again: the suspend (lockfs) flushes it first, and every write since the
    swap went through ``snapshot-origin`` to ``-real``, which maps the same blocks."""
    dm.load(origin, original)
    dm.suspend(origin)
    dm.resume(origin)


__all__ = ["DmMethod"]
