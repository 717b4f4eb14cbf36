"""The domain every layer shares: what the user named, what they asked for, what snapkit
created and how it stands now.

Plain data with no behaviour that touches the system, so that the lowest layers (the state
file, target resolution, freezing) can speak of a :class:`Target` or a
:class:`SnapshotRecord` without importing the methods that produce them. This module imports
nothing from snapkit.

One meaning for every method, whatever the mechanism underneath:

- ``merge`` rolls the origin back to the snapshot's content and removes the snapshot (as
  ``lvconvert --merge`` does);
- ``discard`` removes the snapshot and keeps the origin's current content.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path


class Pending(enum.StrEnum):
    """A verb saved in the state file *before* it ran, so that a crash in the middle of it is
    found and settled (``recover``, or the verb run again). Kept in ``details["pending"]`` as
    its value: the state file holds the same strings it always did."""

    CREATE = "create"
    MERGE = "merge"
    DISCARD = "discard"


# The verbs that end a snapshot: a record marked with one is going, whatever else it says.
MERGE_OR_DISCARD = (Pending.MERGE, Pending.DISCARD)


class State(enum.StrEnum):
    ACTIVE = "active"
    INVALID = "invalid"
    OVERFLOW = "overflow"
    MERGING = "merging"
    MERGED = "merged"


@dataclass(frozen=True)
class Target:
    """What the user named, resolved: the block device, and where it is mounted if it is."""

    device: Path
    mountpoint: Path | None
    fstype: str | None
    devnum: tuple[int, int]


@dataclass(frozen=True)
class CreateRequest:
    target: Target
    name: str
    cow_size: int | None = None  # bytes; None: the method's default
    cow_dir: Path | None = None
    chunk_sectors: int = 8
    pre: str | None = None
    post: str | None = None
    max_freeze: float = 10.0
    command: tuple[str, ...] = ()  # the user's snapshot command, for the freeze method
    # The filesystem is on a layer above the target and snapkit froze it (a stacked origin,
    # snapkit.methods.stack): suspend the target without lockfs.
    frozen_above: bool = False
    # Take the risk of a COW that may outgrow the free space under cow_dir (--force).
    force: bool = False


@dataclass(frozen=True)
class SnapshotRecord:
    """What snapkit created, as kept in the state file. ``details`` is method-specific."""

    name: str
    method: str
    origin: str
    device: str
    created_at: float
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> Pending | None:
        """The verb marked before it ran and not settled yet, or None."""
        value = self.details.get("pending", "")
        return Pending(value) if value else None

    def marked(self, pending: Pending | None) -> SnapshotRecord:
        """This record with ``pending`` saved (None: an empty mark, as a dm record keeps)."""
        return replace(self, details={**self.details, "pending": pending.value if pending else ""})

    def unmarked(self) -> SnapshotRecord:
        """This record with no ``pending`` key at all (as an lvm record is saved)."""
        return replace(self, details={k: v for k, v in self.details.items() if k != "pending"})


@dataclass(frozen=True)
class Group:
    """A snapshot group: one snapshot per member filesystem, all taken at one point in time,
    and so only meaningful together (``merge`` and ``discard`` act on all of them).

    ``members`` are the member records' names (``G-home``: a valid dm name too). ``planned``
    holds the member records *before* the create's plan runs, with ``pending`` create: a crash
    inside the plan leaves this entry and no member records, and ``recover`` then removes
    whatever of the planned members exists, so the group is whole or gone, never half."""

    name: str
    method: str
    members: tuple[str, ...]
    pending: Pending | None = None
    planned: tuple[SnapshotRecord, ...] = ()


@dataclass(frozen=True)
class SnapshotStatus:
    record: SnapshotRecord
    state: State
    usage_percent: float | None
    merge_progress: float | None
    message: str = ""
    # Space, where the method's tool reports it (zfs: ``used``, the bytes only this snapshot
    # holds; ``referenced``, the bytes it shows). None where the COW usage says it instead.
    used_bytes: int | None = None
    referenced_bytes: int | None = None


@dataclass(frozen=True)
class GroupStatus:
    """A group as it stands: each member's own status, and the group's state -- the members'
    common state, or ``mixed`` when they differ (a merge under way on some, say)."""

    group: Group
    members: tuple[SnapshotStatus, ...]

    @property
    def state(self) -> str:
        states = {m.state.value for m in self.members}
        return states.pop() if len(states) == 1 else "mixed"


__all__ = [
    "MERGE_OR_DISCARD",
    "CreateRequest",
    "Group",
    "GroupStatus",
    "Pending",
    "SnapshotRecord",
    "SnapshotStatus",
    "State",
    "Target",
]
