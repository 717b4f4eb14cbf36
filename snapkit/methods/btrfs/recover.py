"""``recover`` for btrfs: settle a merge that a power cut or a SIGKILL cut short.

Nothing of a btrfs snapshot lives in kernel memory, so a reboot takes nothing away but the
private top-level mount. What a crash can leave is on disk, and its names say what it is
(:mod:`snapkit.methods.btrfs.merge`), so recover needs no mark in the state file (the flow
saves none for btrfs, whose merge is one plan):

* ``ORIG.snapkit-new-NAME`` with a *lower* subvolume ID than ``ORIG``: the exchange happened,
  ``ORIG`` holds the snapshot's content and the spare the old origin. The merge is finished:
  the spare and the snapshot are deleted, the record is dropped;
* ``ORIG.snapkit-new-NAME`` with a higher ID: a copy made before the exchange. It is deleted;
  the origin and the snapshot are as they were, the record stays;
* ``ORIG.snapkit-old-NAME`` (the earlier, rename-based merge): put back as ``ORIG`` if ``ORIG``
  is missing; beside an ``ORIG`` that is a copy of the snapshot (see the next case), the merge
  is finished as above; beside any other ``ORIG`` (made by hand since?) recover refuses;
* no spare, but ``ORIG``'s Parent UUID is the snapshot's UUID: ``ORIG`` is a copy of the
  snapshot and the old origin is deleted (cut short between the two deletes). The snapshot is
  deleted and the record dropped;
* a record whose snapshot subvolume is gone (the merge had deleted it, the state was not saved
  yet) is dropped: the snapshot is cleanly absent;
* private mounts ``/run/snapkit/btrfs-NAME-PID`` a killed snapkit left are unmounted and removed.

Each record is settled under its origin's lock, so a merge still running is never touched.
Idempotent: a second run finds nothing to do.
"""

from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

from snapkit.errors import OperationError
from snapkit.host.target import block_devnum, mounts
from snapkit.methods.base import Context, FamilyRecovery, Recovered
from snapkit.methods.btrfs import snapshot as btrfs
from snapkit.methods.btrfs.merge import legacy_name, spare_name
from snapkit.model import SnapshotRecord
from snapkit.plan import Plan, Step
from snapkit.run import Executor
from snapkit.state import StateData


class BtrfsRecovery(FamilyRecovery):
    """btrfs: nothing lives in kernel memory (a snapshot is a subvolume, there as soon as the
    disk is); a merge a crash cut short is settled on disk."""

    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        return plan_settle(self.ctx, data)


def plan_settle(ctx: Context, data: StateData) -> tuple[Plan, Recovered]:
    """One step per btrfs record; empty without one."""
    settled = Recovered()
    steps = tuple(
        Step(
            f"settle btrfs snapshot {r.name} of {r.details['origin_subvol'] or '/'} on {r.device}",
            partial(_settle, ctx, r, settled),
        )
        for r in data.snapshots
        if r.method == "btrfs"
    )
    return Plan("settle btrfs merges a crash cut short", steps), settled


def _settle(ctx: Context, record: SnapshotRecord, settled: Recovered) -> None:
    if block_devnum(record.device) is None:
        settled.actions.append(f"{record.name}: not checked, {record.device} is not attached")
        return
    run = ctx.host.run
    with ctx.lock(record.origin, f"recover {record.name}"):
        _drop_stale_tops(run, record, settled)
        top = btrfs.TOP_ROOT / f"btrfs-{record.name}-{os.getpid()}"
        run.run(["mkdir", "-p", str(top)])
        try:
            run.run(["mount", "-t", "btrfs", "-o", "subvolid=5", record.device, str(top)])
            try:
                _look(run, top, record, settled)
            finally:
                run.run(["umount", str(top)])
        finally:
            run.run(["rmdir", str(top)])


def _drop_stale_tops(run: Executor, record: SnapshotRecord, settled: Recovered) -> None:
    """The private mounts of a snapkit that was killed: under the lock, none is in use."""
    pattern = re.compile(rf"btrfs-{re.escape(record.name)}-\d+")
    try:
        found = sorted(p for p in btrfs.TOP_ROOT.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return
    mounted = {m.mountpoint for m in mounts()}
    for top in found:
        if top in mounted:
            run.run(["umount", str(top)])
        run.run(["rmdir", str(top)])
        settled.actions.append(f"{record.name}: removed the private mount {top} left behind")


def _look(run: Executor, top: Path, record: SnapshotRecord, settled: Recovered) -> None:
    origin, name = record.details["origin_subvol"], record.name
    current, snap = top / origin, top / record.details["subvol"]
    spare, legacy = top / spare_name(origin, name), top / legacy_name(origin, name)

    def delete(path: Path, why: str) -> None:
        run.run(["btrfs", "subvolume", "delete", str(path)])
        settled.actions.append(f"{name}: deleted {path.name}, {why}")

    if origin and os.path.lexists(legacy):
        if not os.path.lexists(current):
            run.run(["mv", "-T", str(legacy), str(current)])
            settled.actions.append(f"{name}: renamed {legacy.name} back to {origin}")
        elif _copy_of(run, current, snap):  # made in one transaction: a whole copy
            delete(legacy, f"the old origin: {origin} holds the content of {snap.name}")
        else:  # not what the merge left: someone made it since; both may hold data
            raise OperationError(
                f"{legacy.name} exists beside {origin}, which is not a copy of {snap.name}",
                hint=f"keep the one you want as {origin}, delete the other, run recover again",
            )
    merged = False
    if origin and os.path.lexists(spare):
        if not os.path.lexists(current):
            raise OperationError(
                f"{origin} is missing and {spare.name} exists",
                hint=f"rename {spare.name} to {origin} in the top-level subvolume",
            )
        merged = _rootid(run, current) > _rootid(run, spare)
        why = f"the old origin: {origin} holds the content of {snap.name}"
        delete(spare, why if merged else "a copy made before the merge's exchange")
    elif origin and os.path.lexists(current):
        merged = _copy_of(run, current, snap)
    if not os.path.lexists(snap):
        settled.drop(name)
        return
    if merged:
        delete(snap, "the merge consumes it")
        settled.drop(name)


def _rootid(run: Executor, path: Path) -> int:
    """The subvolume's ID: IDs only grow, so the one made later has the higher."""
    return int(run.run(["btrfs", "inspect-internal", "rootid", str(path)]).stdout.strip())


def _copy_of(run: Executor, current: Path, snap: Path) -> bool:
    """Whether ``current`` is a snapshot of ``snap``: its Parent UUID is the snapshot's UUID.
    So is ``ORIG`` once the merge has put a copy of the snapshot in its place -- also after it
    deleted the old origin, when nothing else is left to tell."""
    if not os.path.lexists(snap):
        return False
    uuid = _show(run, snap).get("UUID", "-")  # never "-": a snapshot has its own
    return uuid != "-" and _show(run, current).get("Parent UUID") == uuid


def _show(run: Executor, path: Path) -> dict[str, str]:
    """``btrfs subvolume show``'s ``Key: value`` lines."""
    out = run.run(["btrfs", "subvolume", "show", str(path)]).stdout
    pairs = (line.strip().split(":", 1) for line in out.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


__all__ = ["BtrfsRecovery", "plan_settle"]
