"""``recover`` for snapshot groups: a group whose create a crash cut short is made *gone*.

The flow saves the group's entry, with its planned member records and ``pending`` create,
before the plan runs, and the member records only after it ran. So an entry still pending
means the plan did not finish (or finished with nothing recorded): whatever exists of any
planned member is discarded the way its own method discards (for dm: the snapshot device
removed, then the finish that puts the origin's table back and frees the COW), and the
entry goes. A whole group (no mark) needs nothing here: its members are ordinary records
that their families re-assemble. Runs last: after the families have re-assembled or dropped
what they know; each discard is planned when it runs, from what is there then, so it does
nothing for a member that never came to be.
"""

from __future__ import annotations

from snapkit.methods import registry
from snapkit.methods.base import FamilyRecovery, KernelMerge, Recovered
from snapkit.model import Pending, SnapshotRecord
from snapkit.plan import Plan, Step, apply
from snapkit.state import StateData


class GroupRecovery(FamilyRecovery):
    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        done = Recovered()
        s: list[Step] = []
        for group in data.groups:
            if group.pending is not Pending.CREATE:
                continue
            for planned in group.planned:
                record = data.snapshot(planned.name) or planned
                s.append(
                    Step(
                        f"discard {record.name} ({record.method}), a member of group "
                        f"{group.name} whose create was cut short",
                        lambda r=record: self._unmake(r),  # type: ignore[misc]
                    )
                )
                if data.snapshot(planned.name) is not None:
                    done.gone.append(planned.name)
            done.groups_gone.append(group.name)
            done.dropped.append(group.name)
            done.actions.append(f"group {group.name}: create cut short, every member removed")
        return Plan("settle snapshot groups cut short (whole or gone)", tuple(s)), done

    def _unmake(self, record: SnapshotRecord) -> None:
        impl = registry.get(record.method, self.ctx.host)
        apply(impl.plan_discard(record.unmarked(), force=True))
        if isinstance(impl, KernelMerge):
            apply(impl.plan_finish(impl.mark_pending(record.unmarked(), Pending.DISCARD)))


__all__ = ["GroupRecovery"]
