"""What every method implements: the :class:`Method` protocol, its typed capabilities, and the
:class:`Host` seams a method acts through. The data they exchange lives in :mod:`snapkit.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from snapkit.dm.control import DmControl
from snapkit.host.loopdev import Files, Loops
from snapkit.model import CreateRequest, Pending, SnapshotRecord, SnapshotStatus, Target
from snapkit.plan import Plan
from snapkit.run import Executor


@dataclass(frozen=True)
class Host:
    """The system a method acts on: every side effect goes through one of these seams, so unit
    tests hand in fakes (``FakeDm`` and friends) that share one fault counter."""

    dm: DmControl
    run: Executor
    loops: Loops
    files: Files


class Method(Protocol):
    """A way of taking snapshots. Plans are built from validated input and touch nothing."""

    name: ClassVar[str]

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
class Extendable(Protocol):
    """A method whose snapshot keeps its changes in a COW of fixed size that can be grown
    while in use, as dmeventd's autoextend does: ``snapshot watch`` grows it before it fills
    (a full COW invalidates the snapshot for good)."""

    def plan_extend(self, record: SnapshotRecord, by_bytes: int) -> Plan: ...


__all__ = [
    "Extendable",
    "Host",
    "KernelMerge",
    "Method",
]
