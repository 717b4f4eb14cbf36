"""Histories of dm-snapshot operations: typed records, their JSON, and a hypothesis strategy.

A history is what ``vmtest difftest`` runs on both sides: an origin of some size, then
snapshots (``P``, ``PO``, ``N``), writes, reads, reloads and merges. The strategy only draws
operations that make sense where they stand (a write goes to a device that exists, a merge to a
persistent snapshot that is active), so every history hypothesis shrinks to is still runnable
and a reproducer never holds an operation that both sides would just skip.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import hypothesis.strategies as st

Kind = Literal["P", "PO", "N"]
ORIGIN = -1  # the ``dev`` of an operation on the origin; snapshots are 0, 1, ...
CHUNKS = (8, 16, 32, 64, 128, 256, 512, 1024)
MAX_SNAPSHOTS = 3
MAX_ORIGIN_SECTORS = 8192  # 4 MiB: room for more exceptions than one metadata area holds
MAX_COW_SECTORS = 8192
SECTOR = 512
MAX_OPS = 16


@dataclass(frozen=True)
class Snap:
    """Take snapshot number ``len(snapshots so far)`` with a COW of ``cow_sectors``."""

    kind: Kind
    chunk: int
    cow_sectors: int


@dataclass(frozen=True)
class Write:
    dev: int
    sector: int
    sectors: int
    tag: int  # which pattern: see vmtests.guest.difftest.dmexec.pattern
    direct: bool  # O_DIRECT, or buffered + fsync


@dataclass(frozen=True)
class Read:
    dev: int
    sector: int
    sectors: int


@dataclass(frozen=True)
class Reload:
    """Remove every dm device and build them again: persistent stores are read back."""


@dataclass(frozen=True)
class Merge:
    """Merge snapshot ``snap`` into the origin; with ``stop`` (eighths of the work, 0 = at
    once) the merge is interrupted and the snapshot put back over its partly merged COW."""

    snap: int
    stop: int | None


Op = Snap | Write | Read | Reload | Merge
_TYPES: dict[str, type[Op]] = {
    "snap": Snap,
    "write": Write,
    "read": Read,
    "reload": Reload,
    "merge": Merge,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


@dataclass(frozen=True)
class History:
    origin_sectors: int
    ops: tuple[Op, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "origin_sectors": self.origin_sectors,
            "ops": [op_to_json(op) for op in self.ops],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        ops = tuple(op_from_json(op) for op in data["ops"])
        return cls(int(data["origin_sectors"]), ops)

    def dumps(self) -> str:
        """One operation a line, so a reproducer reads (and edits) as a list of steps."""
        lines = [json.dumps(op_to_json(op)) for op in self.ops]
        body = ",\n    ".join(lines)
        head = f'{{"origin_sectors": {self.origin_sectors},'
        return f'{head}\n  "ops": [\n    {body}\n  ]\n}}\n' if lines else f'{head} "ops": []}}\n'


def op_to_json(op: Op) -> dict[str, Any]:
    return {"op": _NAMES[type(op)], **asdict(op)}


def op_from_json(data: dict[str, Any]) -> Op:
    fields = dict(data)
    try:
        cls = _TYPES[fields.pop("op")]
    except KeyError:
        raise ValueError(f"not a difftest operation: {data!r}") from None
    return cls(**fields)


@dataclass
class _Shape:
    """What the strategy needs to know of the state so far: which devices exist."""

    snapshots: int = 0
    active: dict[int, Kind] = field(default_factory=dict)
    chunks: dict[int, int] = field(default_factory=dict)


def well_formed(history: History) -> bool:
    """Could :func:`histories` have drawn this? (Used to drop operations from a reproducer
    without leaving one that names a device that no longer exists.)"""
    if not 1 <= history.origin_sectors <= MAX_ORIGIN_SECTORS:
        return False
    shape = _Shape()
    for op in history.ops:
        if isinstance(op, Snap):
            if shape.snapshots >= MAX_SNAPSHOTS:
                return False
            shape.active[shape.snapshots] = op.kind
            shape.snapshots += 1
        elif isinstance(op, Write | Read):
            if op.dev != ORIGIN and op.dev not in shape.active:
                return False
            if op.sector + op.sectors > history.origin_sectors:
                return False
        elif isinstance(op, Reload):
            shape.active = {i: k for i, k in shape.active.items() if k != "N"}
        else:
            if shape.active.get(op.snap, "N") == "N":
                return False
            if op.stop is None:
                del shape.active[op.snap]
    return True


def _extent(draw: st.DrawFn, sectors: int) -> tuple[int, int]:
    """Small I/O inside a chunk or two, any I/O, or the whole device (which is what fills a
    COW and crosses into a second metadata area)."""
    shape = draw(st.sampled_from(["small", "any", "whole"]))
    if shape == "whole":
        return 0, sectors
    first = draw(st.integers(0, sectors - 1))
    room = sectors - first
    return first, draw(st.integers(1, min(16, room) if shape == "small" else room))


def _scattered(
    draw: st.DrawFn, sectors: int, chunk: int, counts: st.SearchStrategy[int] | None = None
) -> list[Write]:
    """Small origin writes going down the device, chunks apart: each new exception's origin
    chunk is below the last one's, so no two make a run, and a merge takes one batch per
    exception and can be caught between two of them."""
    count = draw(counts if counts is not None else st.integers(2, 8))
    stride = chunk * draw(st.integers(2, 16))
    start = draw(st.integers(0, sectors - 1))
    tag = draw(st.integers(0, 255))
    spots = sorted({(start + i * stride) % sectors for i in range(count)}, reverse=True)
    return [Write(ORIGIN, spot, min(8, sectors - spot), tag, True) for spot in spots]


def _cow_sectors(origin_sectors: int, chunk: int) -> st.SearchStrategy[int]:
    """A COW that fills up soon, one of any size, or one that never fills (as LVM sizes a
    snapshot of the whole origin); sometimes not a whole number of chunks."""
    data = -(-origin_sectors // chunk)
    roomy = data + -(-data // (chunk * SECTOR // 16)) + 2
    most = max(3, MAX_COW_SECTORS // chunk)
    chunks = st.one_of(st.integers(3, 12), st.integers(3, most), st.just(max(3, roomy)))
    extra = st.one_of(st.just(0), st.integers(0, chunk - 1))
    return st.builds(lambda n, e: n * chunk + e, chunks, extra)


# A third of the histories open with a merge stopped midway: the state in which a model is most
# likely to differ from the kernel. Left to chance, one history in 200 had one.
MIDWAY_SHARE = 3
MIDWAY_SECTORS = (2056, 8192)


def _midway(draw: st.DrawFn, sectors: int, shape: _Shape) -> list[Op]:
    """Snapshot 0 (persistent, a COW that never fills), 6-12 scattered exceptions, then its
    merge stopped at 2/8-6/8 of the work: with at least six one-chunk batches, that target is
    one batch in at least and one short of the end, so the kernel stops between two batches,
    and the stop point is spread over the merge."""
    chunk = 8
    data = -(-sectors // chunk)
    cow = (data + -(-data // (chunk * SECTOR // 16)) + 2) * chunk
    ops: list[Op] = [Snap("P", chunk, cow)]
    ops += _scattered(draw, sectors, chunk, st.integers(6, 12))
    ops.append(Merge(0, draw(st.integers(2, 6))))
    shape.active[0], shape.chunks[0], shape.snapshots = "P", chunk, 1
    return ops


@st.composite
def histories(draw: st.DrawFn, max_ops: int = MAX_OPS) -> History:
    shape = _Shape()
    ops: list[Op] = []
    # The last value, not 0: hypothesis shrinks towards 0, so a shrunk reproducer leaves the
    # midway prefix out unless the failure needs it.
    if draw(st.integers(0, MIDWAY_SHARE - 1)) == MIDWAY_SHARE - 1:
        sectors = draw(st.sampled_from(MIDWAY_SECTORS))
        ops += _midway(draw, sectors, shape)
    else:
        # 2056 sectors: one 4 KiB chunk more than a metadata area of that chunk size describes.
        sectors = draw(st.one_of(st.integers(1, MAX_ORIGIN_SECTORS), st.sampled_from([2056, 8192])))
    for _ in range(draw(st.integers(1, max_ops))):
        devices = [ORIGIN, *shape.active]
        mergeable = [i for i, kind in shape.active.items() if kind != "N"]
        choices = ["write", "write", "write", "read", "reload"]  # writes make batches
        if shape.snapshots < MAX_SNAPSHOTS:
            choices.insert(0, "snap")
        if mergeable:
            choices += ["merge", "merge"]
        what = draw(st.sampled_from(choices))
        if what == "snap":
            kind: Kind = draw(st.sampled_from(["P", "PO", "N"]))
            chunk = draw(st.one_of(st.just(8), st.sampled_from(CHUNKS)))
            ops.append(Snap(kind, chunk, draw(_cow_sectors(sectors, chunk))))
            shape.active[shape.snapshots] = kind
            shape.chunks[shape.snapshots] = chunk
            shape.snapshots += 1
        elif what in ("write", "read"):
            dev = draw(st.sampled_from(devices))
            first, size = _extent(draw, sectors)
            if what == "write":
                tag = draw(st.integers(0, 255))
                ops.append(Write(dev, first, size, tag, draw(st.booleans())))
            else:
                ops.append(Read(dev, first, size))
        elif what == "reload":
            ops.append(Reload())
            shape.active = {i: k for i, k in shape.active.items() if k != "N"}
        else:
            snap = draw(st.sampled_from(mergeable))
            stop = draw(st.integers(0, 7)) if draw(st.booleans()) else None
            if stop is not None:
                ops.extend(_scattered(draw, sectors, shape.chunks[snap]))
            ops.append(Merge(snap, stop))
            if stop is None:
                del shape.active[snap]
    return History(sectors, tuple(ops))


__all__ = [
    "CHUNKS",
    "ORIGIN",
    "History",
    "Kind",
    "Merge",
    "Op",
    "Read",
    "Reload",
    "Snap",
    "Write",
    "histories",
    "op_from_json",
    "op_to_json",
    "well_formed",
]
