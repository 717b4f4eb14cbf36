"""``zfs``: a ZFS snapshot of a mounted dataset, with ZFS's own commands.

* create = ``zfs snapshot DATASET@NAME``: atomic, instant, no COW to size (ZFS shares blocks);
  ``--cow-size`` and ``--cow-dir`` mean nothing here. A name already in use on the dataset
  is refused before anything changes.
* merge = ``zfs rollback DATASET@NAME``, then ``zfs destroy DATASET@NAME``: after it the
  snapshot is gone, as after every other method's merge. ZFS rolls back only to the latest
  snapshot unless ``-r`` destroys the later ones, so a merge across later snapshots is refused
  naming them, unless forced (``snapshot merge --force``). The rollback works on a mounted
  dataset (ZFS suspends and resumes it); open files see the rolled-back content.
* discard = ``zfs destroy DATASET@NAME``; refused while the snapshot is mounted (``--force``
  tries anyway: ZFS then says it is busy).
* mount: ``mount -t zfs -o ro DATASET@NAME DIR`` (the flow's generic mount, read-only: ZFS
  snapshots are).
* status: ``used`` (the bytes only this snapshot holds, freed by a discard) and
  ``referenced`` (the bytes it shows), as ``zfs list -p`` reports them.

``records_first``: the record is saved, marked, before each verb's plan runs, so a crash
between ``zfs snapshot`` and the record (or inside a merge) leaves a mark that
:mod:`snapkit.methods.zfs.recover` settles. No step has a real undo once ZFS has done it
(a rollback cannot be taken back, a destroyed snapshot cannot be made again); those steps
say so and name the way out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import OperationError, RefusedError
from snapkit.host.target import mounts
from snapkit.methods.zfs import tool
from snapkit.model import CreateRequest, Pending, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor
from snapkit.validate import zfs_dataset, zfs_snapshot_name

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host


class ZfsMethod:
    name: ClassVar[str] = "zfs"
    records_first: ClassVar[bool] = True

    def __init__(self, host: Host) -> None:
        self.run: Executor = host.run

    def unsuitable(self, target: Target) -> str | None:
        if target.fstype != "zfs":
            what = target.fstype or "no mounted filesystem"
            return f"{target.mountpoint or target.device} holds {what}, not a ZFS dataset"
        if target.mountpoint is None:
            return f"{target.device} is not mounted"
        return None

    # --- create --------------------------------------------------------------------------------

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        target = request.target
        reason = self.unsuitable(target)
        if reason:
            raise RefusedError(reason)
        dataset = zfs_dataset(str(target.device))
        full = zfs_snapshot_name(dataset, request.name)
        if not tool.dataset_exists(self.run, dataset):
            raise RefusedError(
                f"the ZFS dataset {dataset} does not exist",
                hint="is its pool imported? see 'zfs list'",
            )
        if tool.snapshot(self.run, full) is not None:
            raise RefusedError(
                f"the snapshot name {request.name} is in use on {dataset} ({full})",
                hint=f"choose another --name, or 'zfs destroy {full}' if it is not needed",
            )
        step = Step(
            f"zfs snapshot {full}",
            lambda: self._zfs("snapshot", full),
            lambda: self._destroy_if_there(full),
            f"zfs destroy {full}",
        )
        record = SnapshotRecord(
            name=request.name,
            method=self.name,
            origin=dataset,
            device=full,
            created_at=time.time(),
            details={
                "dataset": dataset,
                "snapshot": full,
                "mountpoint": str(target.mountpoint),
                "fstype": "zfs",
                "mount_options": "ro",
            },
        )
        return Plan(f"zfs snapshot of {target.mountpoint} ({dataset}) as {full}", (step,)), record

    # --- status --------------------------------------------------------------------------------

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        full = record.details["snapshot"]
        if not tool.pool_imported(self.run, record.details["dataset"]):
            pool = record.details["dataset"].split("/")[0]
            return SnapshotStatus(
                record, State.ACTIVE, None, None, f"pool {pool} is not imported: not checked"
            )
        snap = tool.snapshot(self.run, full)
        if snap is None and record.pending in (Pending.MERGE, Pending.DISCARD):
            return SnapshotStatus(record, State.MERGED, None, 100.0, f"{record.pending} done")
        if snap is None:
            return SnapshotStatus(
                record,
                State.INVALID,
                None,
                None,
                f"the ZFS snapshot {full} is gone; 'snapkit snapshot discard {record.name}' "
                "forgets it",
            )
        return SnapshotStatus(
            record, State.ACTIVE, None, None, used_bytes=snap.used, referenced_bytes=snap.referenced
        )

    # --- merge and discard ---------------------------------------------------------------------

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        return self._plan_rollback(record, force=False)

    def plan_forced_merge(self, record: SnapshotRecord) -> Plan:
        """The merge even across later snapshots: ``zfs rollback -r`` destroys them."""
        return self._plan_rollback(record, force=True)

    def _plan_rollback(self, record: SnapshotRecord, *, force: bool) -> Plan:
        full = record.details["snapshot"]
        if tool.snapshot(self.run, full) is None:
            raise RefusedError(
                f"the ZFS snapshot {full} is gone: there is nothing to roll back to",
                hint=f"'snapkit snapshot discard {record.name}' forgets it",
            )
        self._refuse_mounted(record, "merge")
        later = tool.later(self.run, full)
        if later and not force:
            names = ", ".join(s.short for s in later)
            raise RefusedError(
                f"rolling {record.details['dataset']} back to {record.name} would destroy the "
                f"{len(later)} later snapshot(s) {names}",
                hint=f"discard them first, or 'snapkit snapshot merge {record.name} --force' "
                "to destroy them",
            )
        argv = ["zfs", "rollback", *(["-r"] if later else []), full]

        def not_undone() -> None:
            raise OperationError(
                f"not undone: {record.details['dataset']} is rolled back to {record.name}",
                hint=f"run 'snapkit snapshot merge {record.name}' again to finish it",
            )

        steps = (
            Step(" ".join(argv), lambda: self._zfs(*argv[1:]), not_undone),
            Step(f"zfs destroy {full}", lambda: self._destroy_if_there(full)),
        )
        return Plan(f"roll {record.details['dataset']} back to {full}", steps)

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        full = record.details["snapshot"]
        if not force:
            self._refuse_mounted(record, "discard")

        def gone() -> None:
            raise OperationError(
                f"not undone: the snapshot {full} is destroyed",
                hint=f"run 'snapkit snapshot discard {record.name}' again to forget it",
            )

        step = Step(f"zfs destroy {full}", lambda: self._destroy_if_there(full), gone)
        return Plan(f"discard {full}", (step,))

    # --- helpers -------------------------------------------------------------------------------

    def _zfs(self, *args: str) -> None:
        self.run.run(["zfs", *args])

    def _destroy_if_there(self, full: str) -> None:
        """Idempotent, so that a merge or discard cut short can be run again."""
        if "@" not in full:  # never a dataset: only ever one of snapkit's snapshots
            raise AssertionError(f"refusing to destroy {full}: not a snapshot")
        if tool.snapshot(self.run, full) is not None:
            self._zfs("destroy", full)

    def _refuse_mounted(self, record: SnapshotRecord, verb: str) -> None:
        full = record.details["snapshot"]
        where = [m.mountpoint for m in mounts() if m.fstype == "zfs" and m.source == full]
        if where:
            raise RefusedError(
                f"the snapshot {full} is mounted at {where[0]}: {verb} would find it busy",
                hint=f"'snapkit snapshot umount {record.name}' first",
            )


__all__ = ["ZfsMethod"]
