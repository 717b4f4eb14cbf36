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
3. the watchdog (:mod:`snapkit.watchdog`), a separate process started *before* the freeze, thaws
   at the deadline or at once when snapkit dies without saying "done" (SIGKILL, OOM).

Application hooks run outside the window: the shared flow runs ``--pre`` before the plan (so
before the watchdog and the freeze) and ``--post`` after it, on failure too; the plan itself
ends with the filesystem thawed, whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from snapkit import fs
from snapkit.errors import OperationError, RefusedError, UsageError
from snapkit.methods.base import CreateRequest, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import Completed, Executor

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host


class Freezer(Protocol):
    """The two ioctls, as a seam for tests."""

    def freeze(self, mountpoint: Path) -> None: ...

    def thaw(self, mountpoint: Path) -> bool: ...


class IoctlFreezer:
    def freeze(self, mountpoint: Path) -> None:
        fs.freeze(mountpoint)

    def thaw(self, mountpoint: Path) -> bool:
        return fs.thaw(mountpoint)


class Guard(Protocol):
    """What the plan needs of a watchdog (:class:`snapkit.watchdog.Watchdog`)."""

    def start(self) -> None: ...

    def arm(self, deadline: float) -> None: ...

    def stop(self) -> bool: ...

    def abandon(self) -> None: ...


def unsuitable(target: Target) -> str | None:
    if target.mountpoint is None:
        return f"{target.device} is not mounted: there is no filesystem to freeze"
    if target.fstype not in fs.FREEZABLE:
        return f"{target.fstype} cannot be frozen"
    return None


def real_watchdog(mountpoint: Path) -> Guard:
    from snapkit.watchdog import Watchdog

    return Watchdog(mountpoint)


@dataclass
class Outcome:
    """Filled in as the plan runs: the command's result and when the window opened and closed."""

    result: Completed | None = None
    frozen_at: float | None = None
    thawed_at: float | None = None
    deadline: float = 0.0

    @property
    def window(self) -> float | None:
        if self.frozen_at is None or self.thawed_at is None:
            return None
        return self.thawed_at - self.frozen_at


def freeze_around(
    mountpoint: Path,
    inner: Sequence[Step],
    max_freeze: float,
    *,
    freezer: Freezer,
    watchdog: Guard,
    outcome: Outcome,
) -> tuple[Step, ...]:
    """Watchdog, FIFREEZE, ``inner``, FITHAW, stop the watchdog: the steps that hold a
    filesystem frozen around others and guarantee the thaw whatever fails, even a SIGKILL of
    snapkit (the watchdog process thaws at the deadline). ``outcome.frozen_at`` gives the
    deadline, so inner steps can bound themselves to what is left of it."""
    if max_freeze <= 0:
        raise UsageError(f"--max-freeze must be positive, not {max_freeze:g}")

    def do_freeze() -> None:
        outcome.deadline = time.monotonic() + max_freeze
        watchdog.arm(outcome.deadline)
        freezer.freeze(mountpoint)
        outcome.frozen_at = time.monotonic()

    def do_thaw() -> None:
        freezer.thaw(mountpoint)
        outcome.thawed_at = time.monotonic()

    def do_stop() -> None:
        if watchdog.stop():
            raise OperationError(
                f"the watchdog thawed {mountpoint} before snapkit did",
                hint=f"the window passed --max-freeze {max_freeze:g}: the copy may be torn",
            )

    return (
        Step(f"start the watchdog for {mountpoint}", watchdog.start, watchdog.abandon,
             "stop the watchdog (it thaws if armed)", must_undo=True),
        Step(f"freeze {mountpoint} (FIFREEZE; watchdog thaws after {max_freeze:g} s)",
             do_freeze, lambda: freezer.thaw(mountpoint), f"thaw {mountpoint}",
             must_undo=True),
        *inner,
        Step(f"thaw {mountpoint} (FITHAW)", do_thaw),
        Step("stop the watchdog", do_stop),
    )  # fmt: skip


def guard_suspend(
    target: Target,
    inner: Sequence[Step],
    max_freeze: float,
    *,
    freezer: Freezer | None = None,
    watchdog: Callable[[Path], Guard] = real_watchdog,
) -> tuple[Step, ...]:
    """``inner`` (steps that suspend the origin's dm device and rely on that to freeze the
    filesystem), made to freeze it explicitly where the kernel's suspend does not."""
    if target.mountpoint is None or target.fstype not in fs.SUSPEND_DOES_NOT_FREEZE:
        return tuple(inner)
    return freeze_around(
        target.mountpoint,
        inner,
        max_freeze,
        freezer=freezer or IoctlFreezer(),
        watchdog=watchdog(target.mountpoint),
        outcome=Outcome(),
    )


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
            record, State.ACTIVE, None, None,
            f"taken outside this machine by: {record.details.get('command', '?')}",
        )  # fmt: skip

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
