"""What every method implements: the :class:`Method` protocol, its typed capabilities, and the
:class:`Host` seams a method acts through. The data they exchange lives in :mod:`snapkit.model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from snapkit.dm.control import DmControl
from snapkit.host.freezing import Guard
from snapkit.host.loopdev import Files, Loops
from snapkit.lock import origin_lock
from snapkit.model import CreateRequest, Pending, SnapshotRecord, SnapshotStatus, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor
from snapkit.settings import Settings
from snapkit.state import StateData


@dataclass(frozen=True)
class Host:
    """The system a method acts on: every side effect goes through one of these seams, so unit
    tests hand in fakes (``FakeDm`` and friends) that share one fault counter."""

    dm: DmControl
    run: Executor
    loops: Loops
    files: Files
    # The process that resumes a suspended dm origin if snapkit dies inside the window
    # (snapkit.methods.dm.window); None: no watchdog, for hosts of fakes that suspend nothing.
    resume_watchdog: Callable[[Sequence[str]], Guard] | None = None


class Method(Protocol):
    """A way of taking snapshots. Plans are built from validated input and touch nothing."""

    name: ClassVar[str]
    records_first: ClassVar[bool]
    """Whether the flow saves the record, marked ``pending``, *before* each verb's plan runs:
    for a method whose plan leaves something no record would name if cut short (dm-direct's
    COW holding the origin's newest writes, LVM's own LVs), so recover finds and settles it."""

    def unsuitable(self, target: Target) -> str | None:
        """Why this method cannot snapshot ``target``, or None if it can."""

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]: ...

    def status(self, record: SnapshotRecord) -> SnapshotStatus: ...

    def plan_merge(self, record: SnapshotRecord) -> Plan: ...

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan: ...


@runtime_checkable
class KernelMerge(Protocol):
    """A method whose merge (or discard) hands the copying to the kernel's ``snapshot-merge``.

    ``plan_merge``/``plan_discard`` then only *start* the work and can be rolled back; once the
    kernel merges, there is no undo, so the flow waits for ``status`` to say MERGED and applies
    ``plan_finish``, which puts the plain table back and frees the COW. It is built from what the
    kernel shows, so it can be re-run after an interruption or a crash.
    """

    def plan_finish(self, record: SnapshotRecord) -> Plan: ...

    def mark_pending(self, record: SnapshotRecord, operation: Pending) -> SnapshotRecord:
        """``record`` as it must be saved *before* ``operation`` (merge or discard) starts,
        remembering what the status needs later (e.g. the COW usage the merge started from)."""

    def started(self, record: SnapshotRecord) -> bool:
        """Whether the kernel has taken over the pending operation of ``record``. False when
        the mark was saved but the start plan never got as far (a crash, a kill): the flow
        then runs the start again instead of finishing a merge that never happened."""


@runtime_checkable
class ForcedMerge(Protocol):
    """A method whose merge can destroy more than the snapshot (zfs: ``zfs rollback -r``
    destroys every later snapshot). ``plan_merge`` refuses that, naming what would go;
    ``plan_forced_merge``, asked for by ``snapshot merge --force``, goes ahead."""

    def plan_forced_merge(self, record: SnapshotRecord) -> Plan: ...


@runtime_checkable
class Extendable(Protocol):
    """A method whose snapshot keeps its changes in a COW of fixed size that can be grown
    while in use, as dmeventd's autoextend does: ``snapshot watch`` grows it before it fills
    (a full COW invalidates the snapshot for good)."""

    def plan_extend(self, record: SnapshotRecord, by_bytes: int) -> Plan: ...


@dataclass(frozen=True)
class Phases:
    """A create split around its window, so that a snapshot group
    (:mod:`snapkit.methods.group`) can line its members up: every member's ``prepare`` (tables
    loaded, COW made: nothing a writer waits on), then every member's ``hold`` (the suspend
    that freezes it), then every member's ``release``. The point in time the group shares is
    the moment the last ``hold`` returns. Every step of ``release`` that commits something
    carries its own undo, so that a later member's failure takes every member back."""

    title: str
    prepare: tuple[Step, ...]
    hold: tuple[Step, ...]
    release: tuple[Step, ...]
    record: SnapshotRecord
    after: tuple[Step, ...] = ()  # once every member is released (dm-direct: set base ro)
    # The dm devices a watchdog resumes, in order, if snapkit dies while this member is held
    # (the origin last; snapkit.methods.dm.window): every member's, under one deadline.
    resumes: tuple[str, ...] = ()


@runtime_checkable
class Groupable(Protocol):
    """A method whose create can share one point in time with other members of a group."""

    def plan_phases(self, request: CreateRequest) -> Phases: ...


@dataclass(frozen=True)
class FrozenCreate:
    """A create that runs while its filesystem is already frozen: a group's FIFREEZE of every
    member is then the shared point in time, and each member's ``steps`` run inside it, one
    member after another. ``suspends`` names the dm devices those steps may hold suspended
    themselves; the freeze watchdog resumes them before it thaws (a thaw writes the
    superblock, which waits on a suspended device), so one deadline covers every member."""

    steps: tuple[Step, ...]
    record: SnapshotRecord
    suspends: tuple[str, ...]


@runtime_checkable
class FrozenGroupable(Protocol):
    """A method whose create can join a group whose members are all frozen first (lvm:
    ``lvcreate`` cannot be split around one shared suspend the way dm's tables can)."""

    def plan_frozen(self, request: CreateRequest) -> FrozenCreate: ...


@dataclass(frozen=True)
class Context:
    """What a method's recovery acts on: the host's seams, and the :class:`Settings` that name
    the lock and COW directories. Recoveries sit below the flow, so they get this instead of
    a ``Flow``; the flow holds one too, so both lock in the same place."""

    host: Host
    settings: Settings

    def lock(self, origin: str, operation: str) -> AbstractContextManager[Path]:
        """The origin's lock, in the one lock directory."""
        return origin_lock(origin, operation=operation, lock_dir=self.settings.lock_dir)

    @property
    def cow_dir(self) -> Path:
        """Where snapkit keeps the COW files (and layer files) it creates."""
        return self.settings.state_dir / "cow"


@dataclass
class Recovered:
    """What one family's recovery did, or would do. Filled in as its plan runs where what is
    on disk is seen only then (btrfs, lvm), or up front where the plan says it all (dm)."""

    actions: list[str] = field(default_factory=list)  # one line per thing done
    dropped: list[str] = field(default_factory=list)  # reported as cleanly absent
    merging: list[str] = field(default_factory=list)  # resumed: the flow finishes them
    saved: list[SnapshotRecord] = field(default_factory=list)  # records to save as they are
    gone: list[str] = field(default_factory=list)  # records to remove from the state
    groups_gone: list[str] = field(default_factory=list)  # group entries to remove

    def drop(self, name: str) -> None:
        """The record ``name`` goes: its snapshot is cleanly absent, and recover says so."""
        self.gone.append(name)
        self.dropped.append(name)

    def kept(self, data: StateData) -> StateData:
        """``data`` as it must be saved once the plan has run."""
        for record in self.saved:
            data = data.with_snapshot(record)
        for name in self.gone:
            data = data.without_snapshot(name)
        for name in self.groups_gone:
            data = data.without_group(name)
        return data


class FamilyRecovery:
    """What every family's :class:`Recoverable` shares: its :class:`Context`, and nothing to
    activate unless the family's own tools keep something across a reboot."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def activate(self, data: StateData) -> None:
        """Nothing: the family keeps nothing of its own that needs bringing back first."""


class Recoverable(Protocol):
    """A method family that can bring what a crash or a reboot left back to a known state:
    every snapshot present and usable or cleanly absent, every verb cut short settled.
    :mod:`snapkit.recover` runs each family listed in the registry, in its order."""

    def activate(self, data: StateData) -> None:
        """Bring back what the family's own tools keep (LVM's ``vgchange -ay``), before any
        family plans: another family's devices may sit on it."""

    def plan_recover(self, data: StateData) -> tuple[Plan, Recovered]:
        """The plan that settles the family's records in ``data``, and what it does."""


__all__ = [
    "Context",
    "Extendable",
    "FamilyRecovery",
    "ForcedMerge",
    "FrozenCreate",
    "FrozenGroupable",
    "Groupable",
    "Host",
    "KernelMerge",
    "Method",
    "Phases",
    "Recoverable",
    "Recovered",
]
