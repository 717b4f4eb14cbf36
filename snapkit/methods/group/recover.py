"""``recover`` for snapshot groups: a group whose create a crash cut short is made *gone*, and
a group whose merge or discard a crash cut short is *finished*, member by member.

The flow saves the group's entry, with its planned member records and ``pending`` create,
before the plan runs, and the member records only after it ran. So an entry still pending
means the plan did not finish (or finished with nothing recorded): whatever exists of any
planned member is discarded the way its own method discards, and the entry goes. A whole
group (no mark) needs nothing here: its members are ordinary records that their families
re-assemble.

Runs last, after the families have re-assembled, settled or dropped what they know, and each
member is judged *as they left it* (the record read again from the state file when the step
runs, as :mod:`snapkit.methods.stack.recover` does): the plan is built before any family's
plan ran, and a member record saved up front (``records_first``: dm-direct, lvm) may have
been settled since -- kept with its mark cleared (a dm-direct member switched before the
cut: its origin's newest writes live in its COW), or dropped (never switched: nothing of it
is left). Found by a dm-direct group's crash states (issue 17), reproduced on the fakes: the
record as planned was discarded, which failed on a member its family had already dropped
("snapshot ... is invalid"), so recover exited non-zero and left the group.

A member that is live is not discarded here but marked ``pending discard`` and handed to the
flow to finish (``Recovered.merging``), as any discard: dm-direct's discard is a kernel merge
of the COW into the base, which must end before the origin's table goes back.

A group marked ``pending merge`` or ``pending discard`` (:meth:`snapkit.flow.Flow._end_group`
marks the group before any member) is rolled forward: every member still recorded is marked
with the group's verb and handed to the flow, which finishes it and then drops the entry. So a
cut between two members never leaves some rolled back and the others not.
"""

from __future__ import annotations

from snapkit.methods import registry
from snapkit.methods.base import FamilyRecovery, KernelMerge, Method, Recovered
from snapkit.model import MERGE_OR_DISCARD, Group, Pending, SnapshotRecord, State
from snapkit.plan import Plan, Step, apply
from snapkit.state import StateData, StateFile


class GroupRecovery(FamilyRecovery):
    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        done = Recovered()
        s: list[Step] = []
        for group in data.groups:
            if group.pending in MERGE_OR_DISCARD:
                s.append(
                    Step(
                        f"finish the {group.pending} of group {group.name}: every member",
                        lambda g=group: self._roll_forward(g, done),  # type: ignore[misc]
                    )
                )
                continue
            if group.pending is not Pending.CREATE:
                continue
            for planned in group.planned:
                s.append(
                    Step(
                        f"discard {planned.name} ({planned.method}), a member of group "
                        f"{group.name} whose create was cut short",
                        lambda r=planned: self._unmake(r, done),  # type: ignore[misc]
                    )
                )
            done.groups_gone.append(group.name)
            done.dropped.append(group.name)
            done.actions.append(f"group {group.name}: create cut short, every member removed")
        return Plan("settle snapshot groups cut short (whole or gone)", tuple(s)), done

    def _fresh(self, name: str) -> SnapshotRecord | None:
        """The record as the families before this one left it (their plans ran and were saved
        since this plan was built)."""
        return StateFile(self.ctx.settings.state_dir).load().snapshot(name)

    def _unmake(self, planned: SnapshotRecord, done: Recovered) -> None:
        impl = registry.get(planned.method, self.ctx.host)
        fresh = self._fresh(planned.name)
        if fresh is None and impl.records_first:
            return  # saved up front and dropped by its family: nothing of it is left
        record = (fresh or planned).unmarked()
        if isinstance(impl, KernelMerge):
            if impl.status(record).state is State.ACTIVE:  # live: the flow discards it
                done.saved.append(impl.mark_pending(record, Pending.DISCARD))
                done.merging.append(record.name)
                return
            apply(impl.plan_finish(impl.mark_pending(record, Pending.DISCARD)))
        else:
            apply(impl.plan_discard(record, force=True))
        if fresh is not None:
            done.gone.append(record.name)

    def _roll_forward(self, group: Group, done: Recovered) -> None:
        op = group.pending
        assert op is not None
        for name in group.members:
            fresh = self._fresh(name)
            if fresh is None:
                continue  # this member's verb is done
            if fresh.pending is not op:
                fresh = _marked(registry.get(fresh.method, self.ctx.host), fresh, op)
                done.saved.append(fresh)
            done.merging.append(name)
        done.actions.append(f"group {group.name}: {op} cut short, finished on every member")


def _marked(impl: Method, record: SnapshotRecord, op: Pending) -> SnapshotRecord:
    if isinstance(impl, KernelMerge):
        return impl.mark_pending(record.unmarked(), op)
    return record.marked(op)


__all__ = ["GroupRecovery"]
