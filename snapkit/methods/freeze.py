"""``freeze``: freeze the filesystem, run the user's snapshot command, thaw.

For storage snapkit cannot snapshot itself (a SAN, a hypervisor, a cloud disk): ``FIFREEZE``
flushes the filesystem and makes it consistent on disk, the user's command takes the
point-in-time copy, and ``FITHAW`` lets writers go on. The snapshot lives outside this machine,
so snapkit can neither show, merge nor remove it: the record only says when it was taken and
with which command; ``merge`` is refused and ``discard`` only forgets the record.

Nothing may stay frozen. Three layers make sure of it:

1. the plan: the thaw is a ``must_undo`` of the freeze, so a failing command, SIGINT, SIGTERM
   or the plan's timeout all thaw;
2. the command's own timeout is what remains of ``--max-freeze``, so a hung command is killed;
3. the watchdog (:mod:`snapkit.host.watchdog`), a separate process started *before* the
   freeze, thaws at the deadline or at once when snapkit dies without saying "done" (SIGKILL, OOM).

Application hooks run outside the window: the shared flow runs ``--pre`` before the plan (so
before the watchdog and the freeze) and ``--post`` after it, on failure too; the plan itself
ends with the filesystem thawed, whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import RefusedError, UsageError
from snapkit.host import fs
from snapkit.host.freezing import (
    Freezer,
    Guard,
    IoctlFreezer,
    Outcome,
    freeze_around,
    real_watchdog,
)
from snapkit.model import CreateRequest, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host


def unsuitable(target: Target) -> str | None:
    if target.mountpoint is None:
        return f"{target.device} is not mounted: there is no filesystem to freeze"
    if target.fstype not in fs.FREEZABLE:
        return f"{target.fstype} cannot be frozen"
    return None


def freeze_plan(
    mountpoint: Path,
    command: Sequence[str],
    max_freeze: float,
    *,
    executor: Executor,
    freezer: Freezer,
    watchdog: Guard,
    outcome: Outcome,
    fail_on_exit: bool = True,
    env: dict[str, str] | None = None,
) -> Plan:
    """Watchdog, freeze, command, thaw. ``fail_on_exit``: a non-zero exit fails the plan (the
    method) or is only recorded in ``outcome`` (``snapkit freeze``, which exits with it)."""
    if not command:
        raise UsageError("no snapshot command", hint="give it after '--' or with --command")
    argv = list(command)

    def do_command() -> None:
        left = max(outcome.deadline - time.monotonic(), 0.001)
        outcome.result = executor.run(argv, check=fail_on_exit, timeout=left, env=env)

    shown = " ".join(argv)
    run = Step(f"run {shown} (killed after what is left of {max_freeze:g} s)", do_command)
    steps = freeze_around(
        mountpoint, (run,), max_freeze, freezer=freezer, watchdog=watchdog, outcome=outcome
    )
    return Plan(f"freeze {mountpoint}, run {shown}, thaw", steps)


class FreezeMethod:
    name: ClassVar[str] = "freeze"
    records_first: ClassVar[bool] = False

    def __init__(
        self,
        host: Host,
        *,
        freezer: Freezer | None = None,
        watchdog: Callable[[Path], Guard] = real_watchdog,
    ) -> None:
        self.executor: Executor = host.run
        self.freezer: Freezer = freezer or IoctlFreezer()
        self.watchdog = watchdog

    def unsuitable(self, target: Target) -> str | None:
        return unsuitable(target)

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        target = request.target
        reason = self.unsuitable(target)
        if reason:
            raise RefusedError(reason)
        assert target.mountpoint is not None
        env = {"SNAPKIT_MOUNTPOINT": str(target.mountpoint), "SNAPKIT_DEVICE": str(target.device)}
        plan = freeze_plan(
            target.mountpoint,
            request.command,
            request.max_freeze,
            executor=self.executor,
            freezer=self.freezer,
            watchdog=self.watchdog(target.mountpoint),
            outcome=Outcome(),
            env=env,
        )
        record = SnapshotRecord(
            name=request.name,
            method=self.name,
            origin=str(target.device),
            device="",
            created_at=time.time(),
            details={"mountpoint": str(target.mountpoint), "command": " ".join(request.command)},
        )
        return plan, record

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        return SnapshotStatus(
            record,
            State.ACTIVE,
            None,
            None,
            f"taken outside this machine by: {record.details.get('command', '?')}",
        )

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        raise RefusedError(
            f"{record.name} was taken by an external command; snapkit cannot roll it back",
            hint="restore it with the tool that took it",
        )

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        return Plan(f"forget {record.name} (the external snapshot itself is untouched)", ())


__all__ = [
    "FreezeMethod",
    "Freezer",
    "Guard",
    "IoctlFreezer",
    "Outcome",
    "freeze_plan",
    "real_watchdog",
    "unsuitable",
]
