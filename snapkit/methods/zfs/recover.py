"""``recover`` for zfs: settle a verb a crash or a SIGKILL cut short.

A ZFS snapshot lives in the pool, not in kernel memory, so a reboot takes nothing away (a pool
on a file is not imported again by itself: its records are then left alone, "not checked").
Every verb is marked in the record before its plan runs (``records_first``), so the mark says
what was under way:

* ``create``: the snapshot is destroyed if ``zfs snapshot`` got as far, and the record dropped:
  a create cut short is made gone, as for every method;
* ``merge``: the merge is finished: ``zfs rollback`` (again: it is idempotent while nothing
  wrote since) and ``zfs destroy``, then the record is dropped. Without ``-r``: a merge that
  needs it and was cut short is refused with the hint to run the merge again;
* ``discard``: the snapshot is destroyed if it is still there, and the record dropped;
* no mark, and the snapshot is gone (destroyed by hand, or by a forced merge of an earlier
  one): the record is dropped, the snapshot is cleanly absent.

Each record is settled under its origin's lock. Idempotent: a second run finds nothing to do.
"""

from __future__ import annotations

from functools import partial

from snapkit.errors import CommandError, OperationError
from snapkit.methods.base import Context, FamilyRecovery, Recovered
from snapkit.methods.zfs import tool
from snapkit.model import Pending, SnapshotRecord
from snapkit.plan import Plan, Step
from snapkit.state import StateData


class ZfsRecovery(FamilyRecovery):
    """zfs: nothing to re-assemble; marked verbs are settled in the pool."""

    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        settled = Recovered()
        steps = tuple(
            Step(
                f"settle zfs snapshot {r.name} of {r.origin}",
                partial(_settle, self.ctx, r, settled),
            )
            for r in data.snapshots
            if r.method == "zfs"
        )
        return Plan("settle zfs verbs a crash cut short", steps), settled


def _settle(ctx: Context, record: SnapshotRecord, settled: Recovered) -> None:
    run = ctx.host.run
    dataset, full = record.details["dataset"], record.details["snapshot"]
    if not tool.pool_imported(run, dataset):
        pool = dataset.split("/")[0]
        settled.actions.append(f"{record.name}: not checked, pool {pool} is not imported")
        return
    with ctx.lock(record.origin, f"recover {record.name}"):
        there = tool.snapshot(run, full) is not None
        if record.pending is Pending.MERGE and there:
            try:
                run.run(["zfs", "rollback", full])
            except CommandError as exc:
                raise OperationError(
                    f"{record.name}: the merge cut short cannot roll {dataset} back: {exc}",
                    hint=f"'snapkit snapshot merge {record.name} --force' finishes it",
                ) from None
            settled.actions.append(f"{record.name}: finished the merge, {dataset} rolled back")
        if there and record.pending is not None:
            run.run(["zfs", "destroy", full])
            settled.actions.append(f"{record.name}: destroyed {full} ({record.pending} cut short)")
            settled.drop(record.name)
        elif not there:
            settled.drop(record.name)


__all__ = ["ZfsRecovery"]
