"""``recover`` for lvm and lvm-thin: settle a create that a SIGKILL or a power cut cut short.

An lvm record is saved as ``pending create`` before ``lvcreate -s`` runs
(``LvmMethod.records_first``), because LVM, not snapkit, owns what a create leaves: snapkit
killed once lvcreate had finished would otherwise leave a snapshot LV no record names, and
one killed (or a power cut) inside lvcreate's suspend a half-made LV and, without a reboot, a
suspended origin. So, per marked record, under its origin's lock (a create still running
holds it, and is left alone):

* the LV is a whole snapshot (classic or thin): kept, the mark cleared;
* anything else (no LV, or a half-made one): the create's own undo runs -- drop lvcreate's
  inactive table, resume the origin if suspended, lvremove what LVM recorded -- and the record
  is dropped: the snapshot is cleanly absent.

A merge or discard is marked before ``lvconvert``/``lvremove`` runs, too. Measured in the
faults run: a power cut inside LVM's own clean-up of either brings the snapshot's name back as
a plain LV holding the old COW. The verb was done (the origin merged, or kept as it is), so
that leftover is removed and the record dropped; a snapshot LV still there is left to LVM (a
merge it goes on with) or, for a discard, removed: that is what the user asked for. A marked
merge whose snapshot LV is whole and *not* merging never reached LVM (snapkit was killed
between the mark and ``lvconvert``): the mark is cleared and the snapshot kept, as the flow's
own rollback does on SIGINT; 'snapshot merge' again starts it if it is still wanted.
"""

from __future__ import annotations

from functools import partial

from snapkit.host.lvm import LogicalVolume, Lvm
from snapkit.lock import LockedError
from snapkit.methods.base import Context, FamilyRecovery, Recovered
from snapkit.methods.lvm import LVM_METHODS, THIN_ACTIVATE
from snapkit.model import MERGE_OR_DISCARD, Pending, SnapshotRecord
from snapkit.plan import Plan, Step
from snapkit.state import StateData


class LvmRecovery(FamilyRecovery):
    """lvm and lvm-thin: LVM re-activates their LVs; snapkit settles its marked verbs and
    drops the records whose LV is gone."""

    def activate(self, data: StateData) -> None:
        """``vgchange -ay`` each recorded VG (which also restarts a merge LVM had scheduled),
        before anything is planned: a dm snapshot's origin may be one of these LVs. Then each
        kept lvm-thin snapshot, which that skips (:data:`THIN_ACTIVATE` says why)."""
        vgs = sorted({r.details.get("vg", "") for r in data.snapshots if r.method in LVM_METHODS})
        for vg in filter(None, vgs):
            self.ctx.host.run.run(["vgchange", "-ay", vg], check=False, timeout=None)
        for record in data.snapshots:
            if record.method == "lvm-thin" and record.pending not in MERGE_OR_DISCARD:
                _activate_thin(self.ctx, record)

    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        plan, settled = plan_settle(self.ctx, data)
        gone = [r.name for r in data.snapshots if r.method in LVM_METHODS and _lv_gone(self.ctx, r)]
        for name in gone:
            settled.drop(name)  # before what the plan finds, as recover has always listed them
        return plan, settled


def _activate_thin(ctx: Context, record: SnapshotRecord) -> None:
    """``lvchange -ay -K`` a thin snapshot that is there and inactive, as its create did.

    Found by the crash states (``--methods lvm-thin``): after a power cut, recover kept every
    thin snapshot but left it without a device node, so it listed as active and could be
    neither checked nor mounted. Before the settle plan, so a pending create that had finished
    is kept usable; a half-made one is removed by the create's undo all the same. A merge or a
    discard under way is left to LVM and the settle step (the snapshot is going); a merge
    mark LVM never saw keeps the snapshot, and that step activates it then."""
    vg, name = record.details.get("vg", ""), record.details.get("lv", "")
    lv = Lvm(ctx.host.run).get(vg, name) if vg and name else None
    if lv is not None and lv.is_thin_snapshot and not lv.active:
        ctx.host.run.run([*THIN_ACTIVATE, lv.full_name], check=False, timeout=None)


def _whole(lv: LogicalVolume | None) -> bool:
    """A snapshot LV a cut-short create may keep: classic and valid, or thin and active.

    Thin and inactive, after :func:`_activate_thin` has run, is a snapshot LVM recorded but
    the pool does not hold. Found by the crash states (lvm-thin, a FUA point inside create):
    LVM's metadata named the snapshot (its pool at the next transaction id) while the pool's
    own metadata had not committed its thin device; every activation then fails ("reload
    ioctl ... No data available"), so the create is undone like a half-made one."""
    if lv is None or lv.invalid:
        return False
    return lv.is_snapshot or (lv.is_thin_snapshot and lv.active)


def _lv_gone(ctx: Context, record: SnapshotRecord) -> bool:
    vg, lv = record.details.get("vg", ""), record.details.get("lv", "")
    return bool(vg and lv) and Lvm(ctx.host.run).get(vg, lv) is None


def plan_settle(ctx: Context, data: StateData) -> tuple[Plan, Recovered]:
    """One step per marked lvm record; empty without one."""
    settled = Recovered()
    steps = tuple(
        Step(
            f"settle the lvm create of {r.name} ({r.details['vg']}/{r.details['lv']})",
            partial(_settle, ctx, r, settled),
        )
        for r in data.snapshots
        if r.method in LVM_METHODS and r.pending is Pending.CREATE
    ) + tuple(
        Step(f"settle the lvm {r.pending} of {r.name}", partial(_settle_end, ctx, r, settled))
        for r in data.snapshots
        if r.method in LVM_METHODS and r.pending in (Pending.MERGE, Pending.DISCARD)
    )
    return Plan("settle lvm verbs a crash cut short", steps), settled


def _settle(ctx: Context, record: SnapshotRecord, settled: Recovered) -> None:
    from snapkit.methods.lvm.snapshot import LvmMethod  # recover loads no method at import

    vg, name = record.details["vg"], record.details["lv"]
    try:
        with ctx.lock(record.origin, f"recover {record.name}"):
            lvm = Lvm(ctx.host.run)
            lv = lvm.get(vg, name)
            if _whole(lv):
                settled.saved.append(record.unmarked())
                settled.actions.append(f"{record.name}: the create had finished; kept")
                return
            origin = lvm.get(vg, record.details["origin_lv"])
            if origin is not None:
                LvmMethod(ctx.host).undo_create(origin, name)
            settled.drop(record.name)
            settled.actions.append(f"{record.name}: the create was cut short; undone")
    except LockedError as exc:
        settled.actions.append(f"{record.name}: not settled, {exc}")


def _settle_end(ctx: Context, record: SnapshotRecord, settled: Recovered) -> None:
    vg, name, op = record.details["vg"], record.details["lv"], record.pending
    try:
        with ctx.lock(record.origin, f"recover {record.name}"):
            lv = Lvm(ctx.host.run).get(vg, name)
            snapshot = lv is not None and (lv.is_snapshot or lv.is_thin_snapshot)
            if lv is not None and snapshot and op is Pending.MERGE:
                if lv.merging:
                    return  # LVM merges on; 'snapshot merge' or status finishes the record
                # Killed after the mark and before lvconvert changed LVM's metadata: nothing
                # merged. Clear the mark, as the flow's own rollback on SIGINT does; a stale
                # one would refuse every later discard of an untouched snapshot.
                settled.saved.append(record.unmarked())
                settled.actions.append(f"{record.name}: the merge had not started; kept")
                _activate_thin(ctx, record)  # kept: usable, as activate() makes the others
                return
            if lv is not None and not lv.is_open:
                ctx.host.run.run(["lvremove", "-f", "-y", lv.full_name])
                what = "the discard" if snapshot else "LVM's leftover of the old COW"
                settled.actions.append(f"{record.name}: removed {lv.full_name}, {what}")
            elif lv is not None:
                settled.actions.append(f"{record.name}: {lv.full_name} is open; left as it is")
                return
            settled.drop(record.name)
            settled.actions.append(f"{record.name}: the {op} had finished")
    except LockedError as exc:
        settled.actions.append(f"{record.name}: not settled, {exc}")


__all__ = ["LvmRecovery", "plan_settle"]
