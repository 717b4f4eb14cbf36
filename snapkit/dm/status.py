"""Device-mapper status lines (``dmsetup status``, ``DM_TABLE_STATUS``) parsed into records.

The snapshot figures follow the kernel (``drivers/md/dm-snap.c``, ``snapshot_status``): a valid
snapshot reports ``<sectors allocated>/<cow sectors> <metadata sectors>``, otherwise one of the
words ``Invalid``, ``Merge failed``, ``Overflow`` or ``Unknown``. ``snapshot-merge`` reports the
same, and its merge is done when allocated == metadata.

The percentages are computed as lvm2 computes them, so that what snapkit prints can be compared
with ``lvs``:

* ``Data%`` of a snapshot (lvm2 ``lib/snapshot/snapshot.c``, ``_snap_target_percent``) is
  allocated / cow sectors, *metadata included*; it is exactly 0 when allocated == metadata (a
  fresh snapshot), exactly 100 only when allocated == cow sectors, and otherwise never rounds
  to 0 or 100 (``libdm``, ``dm_make_percent``). ``lvs`` prints it with two decimals, showing
  anything in (0, 0.01) as 0.01 and anything in (99.99, 100) as 99.99
  (``dm_percent_to_round_float``). An ``Overflow`` snapshot parses as 0/0 there, which lvm
  reports as 100.
* ``lvconvert --merge`` progress (lvm2 ``tools/lvconvert_poll.c``, ``poll_merge_progress``) is
  100 - Data%: it starts well above 0 because the COW is rarely full. :func:`merge_progress`
  instead measures from the first sample, so it runs from 0 to 100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from snapkit.dm.table import split_line
from snapkit.errors import FormatError

_USAGE = re.compile(r"(0|[1-9][0-9]*)/(0|[1-9][0-9]*)(?: (0|[1-9][0-9]*))?")


class SnapshotFailure(Enum):
    """A snapshot that reports a word instead of figures."""

    INVALID = "Invalid"
    MERGE_FAILED = "Merge failed"
    OVERFLOW = "Overflow"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class SnapshotUsage:
    """``X/Y Z`` of a snapshot or snapshot-merge target, in sectors."""

    allocated: int
    total: int
    metadata: int | None  # kernels before dm-snapshot 1.8 did not report it

    @property
    def usage_percent(self) -> float:
        """lvs ``Data%``, unrounded (see the module docstring)."""
        if self.metadata is not None and self.allocated == self.metadata:
            return 0.0
        if self.allocated == self.total or self.total == 0:
            return 100.0
        percent = 100.0 * self.allocated / self.total
        return min(max(percent, 1e-6), 100.0 - 1e-6)

    @property
    def merge_done(self) -> bool:
        """For snapshot-merge: every exception has been copied back to the origin."""
        return self.metadata is not None and self.allocated == self.metadata


SnapshotStatus = SnapshotUsage | SnapshotFailure


def lvs_percent(status: SnapshotStatus) -> str | None:
    """``Data%`` as ``lvs`` prints it (two decimals, never falsely 0.00 or 100.00).

    None for ``Invalid``, ``Merge failed`` and ``Unknown``: lvm maps those to special percent
    values, not figures, so there is nothing to compare.
    """
    if isinstance(status, SnapshotFailure):
        return "100.00" if status is SnapshotFailure.OVERFLOW else None
    percent = status.usage_percent
    if 0.0 < percent < 0.01:
        percent = 0.01
    elif 99.99 < percent < 100.0:
        percent = 99.99
    return f"{percent:.2f}"


def merge_progress(first: SnapshotUsage, now: SnapshotUsage) -> float:
    """How far a merge has come, 0-100, measured from the first status sampled after it began."""
    if now.merge_done:
        return 100.0
    meta = now.metadata or 0
    todo = first.allocated - meta
    if todo <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * (first.allocated - now.allocated) / todo))


# Measured on the 6.1 guest (tests/vm/test_io_errors.py, tests/vm/test_overflow.py): a full COW,
# or an I/O error on the COW or on the origin while a snapshot lives, invalidates it ("Invalid";
# dmesg: "Invalidating snapshot: Error reading/writing") and the origin's own writes go on; a
# write error on the origin during a merge stops it ("Write error: shutting down merge",
# status "Merge failed"), and reads of unmerged chunks still go to the COW, so the origin still
# reads as the snapshot. The merge does not resume by itself, nor on a reload of the same table.
_WORDS = {
    SnapshotFailure.INVALID: (
        "invalid: the kernel dropped this snapshot (its COW filled up, or an I/O error hit the "
        "COW or the origin: see dmesg); its point-in-time copy is lost, the origin is intact; "
        "discard it: snapkit snapshot discard {name}"
    ),
    SnapshotFailure.OVERFLOW: (
        "overflow: the COW is full; writes to the snapshot fail, reads still work and the "
        "origin is intact; copy what you need, then discard it: snapkit snapshot discard {name}"
    ),
    SnapshotFailure.MERGE_FAILED: (
        "Merge failed: the kernel stopped copying the snapshot back after an I/O error (see "
        "dmesg); nothing is lost, the origin still reads as the snapshot; fix the device, then "
        "run '{retry}' again"
    ),
    SnapshotFailure.UNKNOWN: "unknown: the kernel cannot say what state the snapshot is in",
}


def explain(failure: SnapshotFailure, name: str, retry: str = "") -> str:
    """The status word in plain words, with what to do next. ``retry`` is the command that
    restarts a failed merge (default: snapkit's own ``merge --wait``)."""
    return _WORDS[failure].format(name=name, retry=retry or f"snapkit snapshot merge {name} --wait")


def parse_snapshot_status(params: str) -> SnapshotStatus:
    text = params.strip()
    try:
        return SnapshotFailure(text)
    except ValueError:
        pass
    match = _USAGE.fullmatch(text)
    if match is None:
        raise FormatError(f"snapshot status {params!r} is neither X/Y Z nor a known word")
    meta = int(match[3]) if match[3] is not None else None
    return SnapshotUsage(int(match[1]), int(match[2]), meta)


@dataclass(frozen=True)
class ThinPoolStatus:
    """The leading fields of a thin-pool status (counts in blocks), or ``failed`` on ``Fail``."""

    transaction_id: int
    metadata_used: int
    metadata_total: int
    data_used: int
    data_total: int
    mode: str  # rw, ro, out_of_data_space
    failed: bool = False
    rest: tuple[str, ...] = ()


def parse_thin_pool_status(params: str) -> ThinPoolStatus:
    words = params.split()
    if words == ["Fail"] or words == ["Error"]:
        return ThinPoolStatus(0, 0, 0, 0, 0, "fail", failed=True)
    try:
        meta_used, meta_total = (int(v) for v in words[1].split("/"))
        data_used, data_total = (int(v) for v in words[2].split("/"))
        return ThinPoolStatus(
            int(words[0]),
            meta_used,
            meta_total,
            data_used,
            data_total,
            words[4],
            rest=tuple(words[5:]),
        )
    except (IndexError, ValueError):
        raise FormatError(f"thin-pool status {params!r} is not in the kernel's form") from None


@dataclass(frozen=True)
class ThinStatus:
    """``<mapped sectors> <highest mapped sector>``; highest is None when nothing is mapped."""

    mapped_sectors: int
    highest_mapped: int | None
    failed: bool = False


def parse_thin_status(params: str) -> ThinStatus:
    words = params.split()
    if words == ["Fail"]:
        return ThinStatus(0, None, failed=True)
    if len(words) != 2:
        raise FormatError(f"thin status {params!r} is not '<mapped> <highest>'")
    try:
        highest = None if words[1] == "-" else int(words[1])
        return ThinStatus(int(words[0]), highest)
    except ValueError:
        raise FormatError(f"thin status {params!r} has a non-number") from None


@dataclass(frozen=True)
class NoStatus:
    """Targets whose status is empty: linear, snapshot-origin, error, zero, flakey."""


@dataclass(frozen=True)
class RawStatus:
    """A target snapkit does not model; the text is kept as the kernel gave it."""

    text: str


TargetStatus = SnapshotStatus | ThinPoolStatus | ThinStatus | NoStatus | RawStatus

_EMPTY = frozenset({"linear", "snapshot-origin", "error", "zero", "flakey"})


def parse_target_status(type_name: str, params: str) -> TargetStatus:
    if type_name in ("snapshot", "snapshot-merge"):
        return parse_snapshot_status(params)
    if type_name == "thin-pool":
        return parse_thin_pool_status(params)
    if type_name == "thin":
        return parse_thin_status(params)
    if type_name in _EMPTY and not params.strip():
        return NoStatus()
    return RawStatus(params)


@dataclass(frozen=True)
class StatusLine:
    start: int
    length: int
    type_name: str
    status: TargetStatus


def parse_status_line(line: str) -> StatusLine:
    start, length, type_name, params = split_line(line)
    return StatusLine(start, length, type_name, parse_target_status(type_name, params))


def parse_status(text: str) -> tuple[StatusLine, ...]:
    """Parse ``dmsetup status`` output for one device."""
    return tuple(parse_status_line(line) for line in text.split("\n") if line.strip())


__all__ = [
    "NoStatus",
    "RawStatus",
    "SnapshotFailure",
    "SnapshotStatus",
    "SnapshotUsage",
    "StatusLine",
    "TargetStatus",
    "ThinPoolStatus",
    "ThinStatus",
    "explain",
    "lvs_percent",
    "merge_progress",
    "parse_snapshot_status",
    "parse_status",
    "parse_status_line",
    "parse_target_status",
    "parse_thin_pool_status",
    "parse_thin_status",
]
