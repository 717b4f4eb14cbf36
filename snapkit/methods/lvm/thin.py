"""``lvm-thin``: a thin snapshot of a thin LV (``lvcreate -s VG/LV -n NAME``, no size).

Thin snapshots take their space from the pool, so there is no COW size. LVM creates them with
the skip-activation flag, so ``lvcreate`` leaves them inactive and without a device node; snapkit
activates them (``lvchange -ay -K``) so that, as with every other method, the record's device can
be checked and mounted at once. Merge and discard are those of ``lvm`` (a pending thin merge is
also started by ``lvchange --refresh`` once the origin is closed).
"""

from __future__ import annotations

from typing import ClassVar

from snapkit.errors import RefusedError
from snapkit.host.lvm import LogicalVolume
from snapkit.methods.lvm import THIN_ACTIVATE
from snapkit.methods.lvm.snapshot import LvmMethod, refuse_size
from snapkit.model import CreateRequest, SnapshotRecord, SnapshotStatus, State
from snapkit.plan import Plan, Step


class LvmThinMethod(LvmMethod):
    name: ClassVar[str] = "lvm-thin"

    def _why_not(self, lv: LogicalVolume) -> str | None:
        if not lv.is_thin:
            return f"{lv.full_name} is not a thin LV: use --method lvm"
        return None

    def _create_argv(self, request: CreateRequest, origin: LogicalVolume, name: str) -> list[str]:
        refuse_size(request, self.name)
        return ["lvcreate", "-y", "-s", "-n", name, origin.full_name]

    def _extra_create_steps(self, vg: str, name: str) -> tuple[Step, ...]:
        on = [*THIN_ACTIVATE, f"{vg}/{name}"]
        off = ["lvchange", "-an", f"{vg}/{name}"]
        return (
            Step(
                " ".join(on),
                lambda: self.executor.run(on),
                lambda: self.executor.run(off),
                " ".join(off),
            ),
        )

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        refuse_size(request, self.name)
        return super().plan_create(request)

    def plan_extend(self, record: SnapshotRecord, by_bytes: int) -> Plan:
        raise RefusedError(
            f"{record.name} is a thin snapshot: it has no COW of its own",
            hint="grow its pool instead (lvextend VG/POOL), or let dmeventd autoextend it",
        )

    def _merge_argv(self, lv: LogicalVolume) -> list[str]:
        return ["lvconvert", "--merge", lv.full_name]

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        found = super().status(record)
        if found.state is not State.ACTIVE:
            return found
        lv = self._snapshot(record)
        pool = self.lvm.get(record.details["vg"], lv.pool) if lv and lv.pool else None
        usage = pool.data_percent if pool else None
        message = f"pool {pool.name} is {usage:.2f}% full" if pool and usage is not None else ""
        return SnapshotStatus(record, State.ACTIVE, usage, None, message)


__all__ = ["LvmThinMethod"]
