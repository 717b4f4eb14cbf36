"""Which crash states to judge, from a recorded log (pure: no I/O, so it is unit-tested).

A state is named by its *cut* (the log index of the power cut: nothing after it landed), what
landed for sure (every entry up to ``upto``) and, for a reordered state, which later writes of
the same epoch landed too (``extra``). Three kinds, ``method``:

* ``flush``: the cut is a FLUSH entry; everything before it landed (a cut just after the
  flush completed).
* ``fua``: the cut is a FUA write that is not a flush; replayed like fstests' replay-log does,
  every entry up to it.
* ``reorder``: a cut inside an epoch (between two FLUSH entries). The FLUSH before it landed
  with all before it; of the writes after it up to the cut, every FUA write landed (it was on
  the disk when it completed) and a seeded subset of the plain ones did -- a disk's volatile
  cache may have written back any of them, in any order.

The labels come from the recorder's marks (``NAME.start`` / ``NAME.done`` around each
operation, ``ack:TAG:N`` after each acknowledged write): :func:`situation` says which
operation a cut falls in, whether it had returned, and what had been acknowledged.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from vmtests.guest.crashstates.logwrites import FLUSH, FUA, MARK, Entry

_T = TypeVar("_T")
REORDER_SHARE = 0.3  # of a kind's states, when there are epochs to draw them from


@dataclass(frozen=True)
class CrashState:
    cut: int
    upto: int
    method: str  # "flush" | "fua" | "reorder"
    extra: tuple[int, ...] = ()
    seed: int = 0
    control: str = ""  # "" or the negative control this replay plants


@dataclass(frozen=True)
class Situation:
    """What had happened by a cut: the operation it falls in (the last one started), whether
    that operation had returned, every mark seen, and the highest N acknowledged per tag."""

    operation: str
    acked: bool
    seen: frozenset[str]
    acks: dict[str, int] = field(default_factory=dict)

    def did(self, mark: str) -> bool:
        return mark in self.seen


def situation(marks: Sequence[tuple[int, str]], cut: int) -> Situation:
    op, acked = "setup", False
    seen: set[str] = set()
    acks: dict[str, int] = {}
    for index, mark in marks:
        if index > cut:
            break
        if mark.startswith("ack:"):
            _, tag, n = mark.split(":")
            acks[tag] = max(acks.get(tag, 0), int(n))
            continue
        seen.add(mark)
        name, _, what = mark.rpartition(".")
        if what == "start":
            op, acked = name, False
        elif what == "done" and name == op:
            acked = True
    return Situation(op, acked, frozenset(seen), acks)


def operation_at(marks: Sequence[tuple[int, str]]) -> Callable[[int], str]:
    """``situation(marks, cut).operation`` for any cut, by a binary search over the start
    marks: :func:`choose` names the operation of every durable point and epoch of a log
    (thousands), and a walk over every mark for each cost ~7 s a kind under TCG."""
    starts = [
        (index, name)
        for index, mark in marks
        if not mark.startswith("ack:")
        for name, _, what in [mark.rpartition(".")]
        if what == "start"
    ]
    at = [index for index, _ in starts]

    def operation(cut: int) -> str:
        n = bisect_right(at, cut)
        return starts[n - 1][1] if n else "setup"

    return operation


def marks_of(entries: Sequence[Entry]) -> list[tuple[int, str]]:
    return [(e.index, e.mark) for e in entries if e.flags & MARK]


def window(entries: Sequence[Entry], first: str, last: str) -> tuple[int, int]:
    """The indexes of marks ``first`` and ``last`` (the judged part of the log)."""
    where = {e.mark: e.index for e in entries if e.flags & MARK}
    if first not in where:
        raise ValueError(f"the log has no mark {first!r}")
    return where[first], where.get(last, entries[-1].index if entries else 0)


def durable_points(entries: Sequence[Entry], lo: int, hi: int) -> list[CrashState]:
    """Every FLUSH or FUA point in (lo, hi], less those that would replay the very same disk
    and marks as the point before them (nothing written or marked in between)."""
    out: list[CrashState] = []
    changed = True
    for e in entries:
        if e.index <= lo or e.index > hi:
            continue
        if e.flags & MARK or e.is_write:
            changed = True
        if e.durable_point and not e.flags & MARK:
            if changed or not out:
                method = "flush" if e.flags & FLUSH else "fua"
                out.append(CrashState(e.index, e.index, method))
            changed = False  # the point's own data is in its state
    return out


def epochs(entries: Sequence[Entry], lo: int, hi: int) -> list[tuple[int, list[Entry]]]:
    """(the FLUSH index that opens it, the writes after it up to the next FLUSH) for every
    epoch in (lo, hi] with at least two plain writes: room for a subset that is no prefix."""
    out: list[tuple[int, list[Entry]]] = []
    opened: int | None = None
    writes: list[Entry] = []
    for e in entries:
        if e.index > hi:
            break
        if e.flags & FLUSH and not e.flags & MARK:
            if opened is not None and sum(1 for w in writes if not w.flags & FUA) >= 2:
                out.append((opened, writes))
            opened, writes = (e.index if e.index > lo else None), []
        elif opened is not None and e.is_write:
            writes.append(e)
    return out


def reordered(opened: int, writes: list[Entry], seed: int) -> CrashState:
    """One seeded state of an epoch: a cut among its writes, every FUA write up to the cut
    and a random subset of the plain ones -- never all of them (that is a prefix).

    A cut drawn before the epoch's first plain write would leave nothing to leave out (every
    write up to it is FUA, so the state is a prefix, and the subset's draw had an empty range
    to draw from: ``randrange(0)``); such a cut moves on to that first plain write. The other
    draws are the same as before, so the states of a seed stay the states it names. An epoch
    without two writes or without a plain write has no reordered state: refused."""
    plain_at = [n for n, w in enumerate(writes) if not w.flags & FUA]
    if len(writes) < 2 or not plain_at:
        raise ValueError(
            f"the epoch after entry {opened} has no reordered state: it needs two writes, "
            f"one of them plain (it has {len(writes)}, {len(plain_at)} plain)"
        )
    rng = random.Random(seed)
    cut_at = max(rng.randrange(1, len(writes)), plain_at[0])  # two writes, one plain, up to it
    upto_cut = writes[: cut_at + 1]
    plain = [w.index for w in upto_cut if not w.flags & FUA]
    keep = [i for i in plain if rng.random() < 0.5]
    if len(keep) == len(plain):
        keep.pop(rng.randrange(len(keep)))
    fua = [w.index for w in upto_cut if w.flags & FUA]
    extra = tuple(sorted(keep + fua))
    return CrashState(upto_cut[-1].index, opened, "reorder", extra, seed)


def choose(
    entries: Sequence[Entry], budget: int, seed: int, *, first: str = "base", last: str = "end"
) -> list[CrashState]:
    """Up to ``budget`` states of the log between marks ``first`` and ``last``: durable points
    spread evenly over the operations (each gets its share; a short one gives its rest to the
    others), then reordered states from the epochs, drawn the same way. Sorted by ``upto``, the
    order a replay that only moves forward needs."""
    lo, hi = window(entries, first, last)
    marks = marks_of(entries)
    points = durable_points(entries, lo, hi)
    eps = epochs(entries, lo, hi)
    n_reorder = min(len(eps), int(budget * REORDER_SHARE)) if eps else 0
    picked = _spread(points, budget - n_reorder, marks, random.Random(seed))
    rng = random.Random(seed + 1)
    operation = operation_at(marks)
    by_op: dict[str, list[tuple[int, list[Entry]]]] = {}
    for opened, writes in eps:
        by_op.setdefault(operation(writes[-1].index), []).append((opened, writes))
    drawn = _round_robin(by_op, n_reorder, rng)
    picked += [reordered(o, w, rng.randrange(1 << 30)) for o, w in drawn]
    return sorted(picked, key=lambda s: (s.upto, s.cut, s.extra))


def _spread(
    points: list[CrashState], n: int, marks: Sequence[tuple[int, str]], rng: random.Random
) -> list[CrashState]:
    operation = operation_at(marks)
    by_op: dict[str, list[CrashState]] = {}
    for p in points:
        by_op.setdefault(operation(p.cut), []).append(p)
    return _round_robin(by_op, n, rng)


def _round_robin(groups: dict[str, list[_T]], n: int, rng: random.Random) -> list[_T]:
    """``n`` items, as evenly over the groups as they allow, evenly spaced within each group
    (a seeded offset), so a long idle stretch cannot starve a short operation."""
    share: dict[str, int] = {k: 0 for k in groups}
    left = min(n, sum(len(v) for v in groups.values()))
    while left:
        for k in sorted(groups):
            if left and share[k] < len(groups[k]):
                share[k] += 1
                left -= 1
    out: list[_T] = []
    for k in sorted(groups):
        items, m = groups[k], share[k]
        if not m:
            continue
        step = len(items) / m
        offset = rng.random() * step
        out += [items[min(len(items) - 1, int(offset + i * step))] for i in range(m)]
    return out


__all__ = [
    "CrashState",
    "Situation",
    "choose",
    "durable_points",
    "epochs",
    "marks_of",
    "operation_at",
    "reordered",
    "situation",
    "window",
]
