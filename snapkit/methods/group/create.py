"""The plan of a group create: every member at one point in time, all or nothing.

Why per method, and what was measured (6.1 guest kernel, bookworm's lvm2):

- ``dm`` and ``dm-direct``: each member's create split into
  :class:`~snapkit.methods.base.Phases`; the plan loads every member's tables first, then
  suspends every origin (lockfs: each suspend freezes its filesystem), then resumes them all
  -- dm ioctls from this one process, nothing spawned inside the window. The shared point in
  time is the moment the last suspend returns: a write acknowledged on any member before then
  is in its snapshot, and a write that started after a member was suspended waits for the
  resumes, which come only after every suspend. (dm-direct then sets each base read-only,
  after every resume: ``blockdev`` is a process.)
- ``freeze``: every member frozen (one watchdog each, one deadline for all), the user's
  command once, every member thawed.
- ``lvm``: every member frozen (FIFREEZE, one watchdog each, one deadline for all: the shared
  point in time is the moment the last freeze returns), then for each member in turn its
  origin suspended without lockfs and ``lvcreate -s`` run, then every member thawed.
  ``lvcreate``'s own suspend uses lockfs, which on a frozen filesystem fails (measured:
  ``suspend ioctl ... failed: Device or resource busy``, ``Aborting. Manual intervention
  required.``); but LVM skips its suspend of an LV that is already suspended, then loads the
  snapshot's tables and resumes the origin itself (:meth:`LvmMethod.plan_frozen`). Each
  watchdog also resumes its member's origin, if snapkit's suspend is still there, before it
  thaws.
- ``lvm-thin``: refused. The same route was measured to leave a thin snapshot LVM records but
  the pool does not have: with the origin already suspended, LVM never sends the pool its
  ``create_snap`` message (the pool's transaction id stays put), the snapshot cannot be
  activated (``reload ioctl ... failed: No data available``), and the next member's
  ``lvcreate`` fails on the mismatch (``Thin pool ... has unexpected transaction id``).
- ``btrfs``: refused; each btrfs snapshot is its own transaction, there is no shared one.
- ``remount-ro``: not yet.

A failure at any step of any member undoes every member: the plan is one plan, and the dm
release steps that commit carry undos (:meth:`DmMethod.plan_phases`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from snapkit.errors import RefusedError, UsageError
from snapkit.host.freezing import Freezer, Guard, GuardMaker, Outcome, freeze_all_around
from snapkit.methods.base import FrozenGroupable, Groupable, Method
from snapkit.methods.group import GROUP_KEY
from snapkit.model import CreateRequest, SnapshotRecord, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor

GROUP_METHODS = ("dm", "dm-direct", "lvm", "freeze")

_REFUSED = {
    "btrfs": (
        "btrfs cannot snapshot several filesystems at one point in time: each btrfs snapshot "
        "is its own transaction",
        "snapshot each subvolume on its own, or freeze them together with --method freeze "
        "and a snapshot command",
    ),
    "lvm-thin": (
        "lvm-thin cannot take a group: a thin snapshot taken while its origin is held for the "
        "group's shared point in time is recorded by LVM but never made in the pool (measured: "
        "its create_snap message is not sent)",
        "use --method freeze with a snapshot command, or put the members on classic LVs "
        "(--method lvm)",
    ),
}


def refuse_method(method: str) -> None:
    """A method that cannot give a group one point in time: refused, saying why and what
    can."""
    if method in _REFUSED:
        why, hint = _REFUSED[method]
        raise RefusedError(why, hint=hint)
    if method not in GROUP_METHODS:
        raise RefusedError(
            f"--method {method} does not take a group of snapshots",
            hint=f"use one of: {', '.join(GROUP_METHODS)}",
        )


def member_names(group: str, targets: Sequence[Target]) -> list[str]:
    """``GROUP-SUFFIX`` per member, the suffix from its mount point's last part (``/home``
    -> ``home``, ``/`` -> ``root``), made a valid dm name and unique within the group."""
    names: list[str] = []
    for target in targets:
        base = target.mountpoint.name if target.mountpoint else target.device.name
        suffix = re.sub(r"[^A-Za-z0-9+_.-]", "_", base or "root") or "root"
        name, n = f"{group}-{suffix}", 2
        while name in names:
            name, n = f"{group}-{suffix}{n}", n + 1
        names.append(name)
    return names


WindowGuard = Callable[[Sequence[Sequence[str]], Sequence[Step]], tuple[Step, ...]]


def plan_block(
    group: str,
    method: str,
    members: Sequence[tuple[Method, CreateRequest]],
    *,
    guard: WindowGuard | None = None,
) -> tuple[Plan, tuple[SnapshotRecord, ...]]:
    """dm, dm-direct: every member's prepare, every hold, every release, as one plan. With
    ``guard`` (the flow's: the dm family's watchdogs), the holds and releases go inside it, so
    that a SIGKILL of snapkit in the window leaves no member suspended past --max-freeze."""
    prepare: list[Step] = []
    hold: list[Step] = []
    release: list[Step] = []
    after: list[Step] = []
    records: list[SnapshotRecord] = []
    resumes: list[tuple[str, ...]] = []
    for impl, request in members:
        if not isinstance(impl, Groupable):
            raise RefusedError(f"--method {method} does not take a group of snapshots")
        phases = impl.plan_phases(request)
        prepare += phases.prepare
        hold += phases.hold
        release += phases.release
        after += phases.after
        resumes += [phases.resumes] if phases.resumes else []
        records.append(_member(phases.record, group, request))
    where = ", ".join(str(r.target.mountpoint) for _, r in members)
    title = (
        f"create snapshot group {group} ({method}) of {where}: every member's tables loaded, "
        "then every origin suspended (the shared point in time), then every one resumed"
    )
    window = (*hold, *release)
    if guard is not None:
        window = guard(resumes, window)
    return Plan(title, (*prepare, *window, *after)), tuple(records)


def plan_frozen(
    group: str,
    method: str,
    members: Sequence[tuple[Method, CreateRequest]],
    max_freeze: float,
    *,
    freezer: Freezer,
    watchdog: GuardMaker,
) -> tuple[Plan, tuple[SnapshotRecord, ...]]:
    """lvm: every member frozen, each member's create in turn, every member thawed."""
    inner: list[Step] = []
    guards: list[tuple[Path, Guard]] = []
    records: list[SnapshotRecord] = []
    for impl, request in members:
        if not isinstance(impl, FrozenGroupable):
            raise RefusedError(f"--method {method} does not take a group of snapshots")
        frozen = impl.plan_frozen(request)
        inner += frozen.steps
        mountpoint = Path(str(request.target.mountpoint))
        guards.append((mountpoint, watchdog(mountpoint, resume=frozen.suspends)))
        records.append(_member(frozen.record, group, request))
    steps = freeze_all_around(guards, inner, max_freeze, freezer=freezer, outcome=Outcome())
    where = ", ".join(str(m) for m, _ in guards)
    title = (
        f"create snapshot group {group} ({method}) of {where}: every member frozen (the shared "
        "point in time), each member's snapshot taken, every member thawed"
    )
    return Plan(title, steps), tuple(records)


def plan_freeze(
    group: str,
    requests: Sequence[CreateRequest],
    command: Sequence[str],
    max_freeze: float,
    *,
    executor: Executor,
    freezer: Freezer,
    watchdog: Callable[[Path], Guard],
) -> tuple[Plan, tuple[SnapshotRecord, ...]]:
    """freeze: every member frozen, the command once, every member thawed."""
    if not command:
        raise UsageError("no snapshot command", hint="give it after '--' or with --command")
    mountpoints = [r.target.mountpoint for r in requests]
    assert all(mountpoints)  # the flow refuses an unmounted member
    outcome = Outcome()
    env = {
        "SNAPKIT_GROUP": group,
        "SNAPKIT_MOUNTPOINTS": " ".join(str(m) for m in mountpoints),
        "SNAPKIT_DEVICES": " ".join(str(r.target.device) for r in requests),
    }
    argv = list(command)

    def do_command() -> None:
        left = max(outcome.deadline - time.monotonic(), 0.001)
        outcome.result = executor.run(argv, timeout=left, env=env)

    shown = " ".join(argv)
    run = Step(f"run {shown} once (killed after what is left of {max_freeze:g} s)", do_command)
    pairs = [(Path(str(m)), watchdog(Path(str(m)))) for m in mountpoints]
    steps = freeze_all_around(pairs, (run,), max_freeze, freezer=freezer, outcome=outcome)
    records = tuple(
        _member(
            SnapshotRecord(
                r.name,
                "freeze",
                str(r.target.device),
                "",
                time.time(),
                {"command": shown},
            ),
            group,
            r,
        )
        for r in requests
    )
    where = ", ".join(str(m) for m in mountpoints)
    return Plan(f"snapshot group {group}: freeze {where}, run {shown}, thaw all", steps), records


def _member(record: SnapshotRecord, group: str, request: CreateRequest) -> SnapshotRecord:
    mountpoint = str(request.target.mountpoint or "")
    return replace(record, details={**record.details, GROUP_KEY: group, "mountpoint": mountpoint})


__all__ = [
    "GROUP_METHODS",
    "member_names",
    "plan_block",
    "plan_freeze",
    "plan_frozen",
    "refuse_method",
]
