"""``recover`` for stacked snapshots: the layers above the base, after a crash or a reboot.

Runs after the dm and lvm recoveries (registry order), which bring back the base snapshot
(the LV, or the dm snapshot device). Decided when its step runs, not when planned, because
those earlier plans create what this one looks at -- and settle the record (read again from
the state file then). Per stacked record:

* the origin's lowest layer parked on ``NAME-park`` (a merge cut short between park and
  unpark, by a SIGKILL or an error whose undo did not run): move it back over the base and
  remove the park device. The merge itself is the inner method's: its recovery, or ``merge``
  again, settles it. After a power cut nothing is parked: the mapping and its key are gone
  with the kernel's memory, and the user opens it again as at every boot;
* the snapshot's rebuilt layers missing (after a reboot) while the base snapshot is there and
  no merge or discard is pending: rebuild them, with the key read from the origin's live
  layer. If that layer is not open yet, say so: open it, then run recover again.
"""

from __future__ import annotations

from functools import partial

from snapkit.dm.naming import Role, uuid
from snapkit.errors import RefusedError
from snapkit.methods.base import Context, FamilyRecovery, Recovered
from snapkit.methods.stack import STACK_KEY, luks
from snapkit.methods.stack import layers as L
from snapkit.model import Pending, SnapshotRecord
from snapkit.plan import Plan, Step
from snapkit.state import StateData, StateFile


class StackRecovery(FamilyRecovery):
    """The layers snapkit rebuilt over stacked snapshots, and origins parked by a merge."""

    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        done = Recovered()
        steps = tuple(
            Step(f"settle the stack of {r.name}", partial(_settle, self.ctx, r, done))
            for r in data.snapshots
            if r.details.get(STACK_KEY)
        )
        return Plan("re-assemble the layers of stacked snapshots", steps), done


def _settle(ctx: Context, record: SnapshotRecord, done: Recovered) -> None:
    dm = ctx.host.dm
    info = L.StackInfo.of(record.details, STACK_KEY)
    low = info.uppers[0]
    with ctx.lock(record.origin, f"recover {record.name}"):
        if L.parked(dm, info) and dm.info(info.base.removeprefix(L.MAPPER)) is not None:
            L.move(dm, low, info.base)
            done.actions.append(f"{record.name}: moved {low.name} back over {info.base}")
        if dm.info(info.park) is not None and not L.parked(dm, info):
            dm.remove(info.park)
            done.actions.append(f"{record.name}: removed {info.park}")
        # The record as the families before this one left it (their plans ran and were
        # saved since this plan was built): lvm's recovery may have settled a create or a
        # merge, clearing its mark, or dropped the record. Measured (issue 19's power cuts):
        # the mark read at planning time skipped the rebuild of a settled create's layer.
        fresh = StateFile(ctx.settings.state_dir).load().snapshot(record.name)
        if fresh is None:
            return
        record = fresh
        if info.key_file:
            _settle_luks(ctx, record, info, done)
            return
        if record.pending is not None:
            return
        if dm.info(info.base_snapshot.removeprefix(L.MAPPER)) is None:
            return
        below = info.base_snapshot
        read_only = record.method == "dm-direct"
        for u in info.uppers:
            if dm.info(u.upper) is None:
                try:
                    table = L.moved(L.live_table(dm, u), below)
                except RefusedError as exc:
                    done.actions.append(f"{record.name}: {exc.message} ({exc.hint})")
                    return
                dm.create(u.upper, uuid=uuid(u.upper, Role.UPPER))
                dm.load(u.upper, table, read_only=read_only)
                dm.resume(u.upper)
                done.actions.append(f"{record.name}: rebuilt {L.MAPPER}{u.upper} over {below}")
            below = L.MAPPER + u.upper


def _settle_luks(ctx: Context, record: SnapshotRecord, info: L.StackInfo, done: Recovered) -> None:
    """``--key-file``: cryptsetup opens what is missing. The origin's mapping only when a
    merge was under way (snapkit closed it; otherwise it is the user's, opened at boot by
    their crypttab), the snapshot's when its copy is there and no verb is pending."""
    dm, run, kf = ctx.host.dm, ctx.host.run, info.key_file
    origin = info.uppers[0].name
    base = info.base.removeprefix(L.MAPPER)
    if record.pending is Pending.MERGE and dm.info(origin) is None and dm.info(base):
        luks.open_mapping(run, kf, info.base, origin)
        done.actions.append(f"{record.name}: opened {origin} again over {info.base}")
    upper = info.uppers[0].upper
    snap = dm.info(info.base_snapshot.removeprefix(L.MAPPER))
    if record.pending is None and snap is not None and dm.info(upper) is None:
        luks.open_mapping(run, kf, info.base_snapshot, upper)
        done.actions.append(f"{record.name}: opened {L.MAPPER}{upper} with its key file")


__all__ = ["StackRecovery"]
