"""``auto``: pick the best method for the target, and say why.

The order is from the cheapest, safest snapshot to the last resort:

0. a ZFS dataset -> ``zfs`` (its own snapshots; asked first because no other method can take
   a filesystem with no block device, and none of their checks need to run on one);
1. a thin LV -> ``lvm-thin`` (no COW to size, metadata-only snapshot);
2. any other LV -> ``lvm`` (LVM keeps the metadata and can merge);
3. a btrfs subvolume -> ``btrfs`` (instant, shares blocks);
4. a dm ``linear`` device prepared by ``snapkit device prepare`` -> ``dm``;
5. otherwise, if a snapshot command was given -> ``freeze`` around it;
6. otherwise refuse, with a hint to prepare the device or give a command.

A method is taken when its own ``unsuitable()`` says None, so ``auto`` never second-guesses
what a method accepts. The record carries the chosen method's name, so status, merge and
discard go straight to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import OperationError, RefusedError
from snapkit.methods.base import Method
from snapkit.model import CreateRequest, SnapshotRecord, SnapshotStatus, Target
from snapkit.plan import Plan

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host

log = logging.getLogger(__name__)

ORDER = (
    ("zfs", "it is a ZFS dataset"),
    ("lvm-thin", "it is a thin LV"),
    ("lvm", "it is an LVM logical volume"),
    ("btrfs", "it is a btrfs subvolume"),
    ("dm", "it is a dm linear device prepared by snapkit"),
)


class AutoMethod:
    name: ClassVar[str] = "auto"
    records_first: ClassVar[bool] = False

    def __init__(self, host: Host) -> None:
        self.host = host

    def _method(self, name: str) -> Method:
        from snapkit.methods import registry

        return registry.get(name, self.host)

    def choose(self, target: Target, *, command: bool = False) -> tuple[Method, str]:
        """The method for ``target`` and the reason, or RefusedError listing why none fits."""
        refusals = []
        for name, why in ORDER:
            method = self._method(name)
            reason = method.unsuitable(target)
            if reason is None:
                return method, why
            refusals.append(f"{name}: {reason}")
        freeze = self._method("freeze")
        reason = freeze.unsuitable(target)
        if command and reason is None:
            return freeze, "no block-level method fits; freezing around the given command"
        raise RefusedError(
            f"no method fits {target.device} ({'; '.join(refusals)})",
            hint="run 'snapkit device prepare' on it, or give a snapshot command after '--' "
            "to use the freeze method",
        )

    def unsuitable(self, target: Target) -> str | None:
        try:
            self.choose(target, command=True)
        except (RefusedError, OperationError) as exc:
            return exc.message
        return None

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        method, why = self.choose(request.target, command=bool(request.command))
        log.info("auto: %s, because %s", method.name, why)
        plan, record = method.plan_create(request)
        return Plan(f"{plan.title} [auto: {method.name}, because {why}]", plan.steps), record

    # Records name the chosen method, so the flow never asks auto for these; if it does, pass on.
    def _owner(self, record: SnapshotRecord) -> Method:
        if record.method == self.name:
            raise RefusedError(f"the record of {record.name} names no real method")
        return self._method(record.method)

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        return self._owner(record).status(record)

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        return self._owner(record).plan_merge(record)

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        return self._owner(record).plan_discard(record, force=force)


__all__ = ["ORDER", "AutoMethod"]
