"""Group-committed merge against the kernel's per-batch merge, under kills and power cuts.

The oracle is the model's merge (one kernel batch at a time, metadata committed after each):
its final bytes, and the COW bytes at every batch boundary. The group merge is cut at every
write and flush it issues; what survives is everything issued (a killed process) or the
flushed bytes plus any subset of the unflushed writes (a power cut). Every surviving COW must
be one of the kernel's batch-boundary states, the snapshot read from the surviving pair must
still be the data being merged, and a resumed merge must end on the kernel's bytes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapkit.cow import merge as merge_module
from snapkit.cow.device import MemDevice
from snapkit.cow.merge import CommitMode, merge_store
from snapkit.cow.model import Origin
from snapkit.cow.store import PersistentStore

SECTOR = 512


@dataclass(frozen=True)
class Case:
    origin: bytes
    cow: bytes
    chunk_sectors: int
    final_origin: bytes  # the kernel's, from the model's per-batch merge
    final_cow: bytes
    boundaries: frozenset[bytes]  # the COW at every kernel batch boundary


def make_case(seed: int, chunk_sectors: int) -> Case:
    """Exceptions over several areas (32 or 64 entries each), with runs of consecutive chunks.

    The origin ends in a partial chunk, so the copy of the last one is cut as the kernel's is.
    """
    rng = random.Random(seed)
    csb = chunk_sectors * SECTOR
    origin_chunks = 150
    origin_dev = MemDevice(rng.randbytes(origin_chunks * csb - SECTOR // 2 * chunk_sectors))
    cow_dev = MemDevice((origin_chunks + origin_chunks // 16 + 4) * csb)
    origin = Origin(origin_dev)
    snap = origin.snapshot(cow_dev, "P", chunk_sectors)
    origin.write(origin_dev.size - 1, b"\xee")  # the partial last chunk has an exception
    while len(snap.exceptions) < 110:
        first = rng.randrange(origin_chunks - 1)
        count = rng.choice([1, 1, 1, 2, 3, 7])
        length = min(count * csb, origin_dev.size - first * csb)
        origin.write(first * csb, bytes([rng.randrange(256)]) * length)
    start_origin, start_cow = bytes(origin_dev.data), bytes(cow_dev.data)

    ref_origin = Origin(MemDevice(start_origin))
    ref_cow = MemDevice(start_cow)
    ref_snap = ref_origin.snapshot(ref_cow, "P", chunk_sectors)
    boundaries = {bytes(ref_cow.data)}
    while not ref_origin.merge(ref_snap, max_batches=1):
        boundaries.add(bytes(ref_cow.data))
    boundaries.add(bytes(ref_cow.data))
    assert isinstance(ref_origin.dev, MemDevice)
    return Case(
        start_origin,
        start_cow,
        chunk_sectors,
        bytes(ref_origin.dev.data),
        bytes(ref_cow.data),
        frozenset(boundaries),
    )


CASES = [make_case(1, 1), make_case(2, 2)]


class Cut(Exception):
    """The power went, or the process was killed, at this write or flush."""


class Clock:
    def __init__(self, cut_at: int | None) -> None:
        self.ops = 0
        self.cut_at = cut_at

    def tick(self) -> None:
        if self.ops == self.cut_at:
            raise Cut  # and every operation after it too: nothing runs after a cut
        self.ops += 1


class CutDevice(MemDevice):
    """A device with a volatile write cache: writes are durable only once flushed."""

    def __init__(self, data: bytes, clock: Clock, *, flushes: bool = True) -> None:
        super().__init__(data)
        self.durable = bytes(data)
        self.pending: list[tuple[int, bytes]] = []
        self.clock = clock
        self.flushes = flushes  # False: a flush does nothing (for a negative control)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.clock.tick()
        super().write(offset, data)
        self.pending.append((offset, bytes(data)))

    def flush(self) -> None:
        self.clock.tick()
        if self.flushes:
            self.durable = bytes(self.data)
            self.pending.clear()

    def survivors(self, rng: random.Random) -> Iterator[bytes]:
        """Everything issued (a kill), then the flushed bytes plus subsets of the rest."""
        yield bytes(self.data)
        n = len(self.pending)
        if n <= 3:
            subsets: list[tuple[int, ...]] = [
                c for k in range(n) for c in itertools.combinations(range(n), k)
            ]
        else:
            subsets = [()] + [
                tuple(sorted(rng.sample(range(n), rng.randrange(1, n)))) for _ in range(2)
            ]
        for subset in subsets:
            raw = bytearray(self.durable)
            for i in subset:
                offset, data = self.pending[i]
                raw[offset : offset + len(data)] = data
            yield bytes(raw)


def run_group_merge(
    origin: MemDevice, cow: MemDevice, chunk_sectors: int, mode: CommitMode
) -> None:
    store = PersistentStore.load(cow, chunk_sectors)
    merge_store(origin, store, origin.size, mode=mode)


def snapshot_view(origin: bytes, cow: bytes, chunk_sectors: int) -> bytes:
    """What the snapshot (and so the merged origin) reads as, from these bytes alone."""
    store = PersistentStore.load(MemDevice(cow), chunk_sectors)
    csb = chunk_sectors * SECTOR
    view = bytearray(origin)
    for old, new in zip(store.olds, store.news, strict=True):
        length = min(csb, len(view) - old * csb)
        view[old * csb : old * csb + length] = cow[new * csb : new * csb + length]
    return bytes(view)


def crash_failures(
    case: Case, mode: CommitMode, *, seed: int = 0, origin_flushes: bool = True
) -> list[str]:
    """Cut the group merge at every operation; what went wrong for each surviving state."""
    rng = random.Random(seed)
    failures: list[str] = []
    cut_at = 0
    while True:
        clock = Clock(cut_at)
        origin = CutDevice(case.origin, clock, flushes=origin_flushes)
        cow = CutDevice(case.cow, clock)
        try:
            run_group_merge(origin, cow, case.chunk_sectors, mode)
        except Cut:
            pass
        else:
            if (bytes(origin.data), bytes(cow.data)) != (case.final_origin, case.final_cow):
                failures.append("the uncut merge did not end on the kernel's bytes")
            return failures
        for o_bytes, c_bytes in itertools.product(origin.survivors(rng), list(cow.survivors(rng))):
            where = f"cut at operation {cut_at}"
            if c_bytes not in case.boundaries:
                failures.append(f"{where}: the COW on disk is no kernel batch boundary")
                continue
            if snapshot_view(o_bytes, c_bytes, case.chunk_sectors) != case.final_origin:
                failures.append(f"{where}: merged data was lost")
                continue
            again_origin, again_cow = MemDevice(o_bytes), MemDevice(c_bytes)
            run_group_merge(again_origin, again_cow, case.chunk_sectors, CommitMode.INLINE)
            if (bytes(again_origin.data), bytes(again_cow.data)) != (
                case.final_origin,
                case.final_cow,
            ):
                failures.append(f"{where}: the resumed merge ended on other bytes")
        cut_at += 1


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of ~40 entries: each spans two or three areas, and a merge makes several."""
    monkeypatch.setattr(merge_module, "GROUP_BYTES", 40 * SECTOR)


@pytest.mark.parametrize("case", CASES, ids=["chunk1", "chunk2"])
@pytest.mark.parametrize("mode", [CommitMode.INLINE, CommitMode.LAGGED])
def test_a_cut_anywhere_leaves_a_kernel_state_that_resumes_to_the_kernels_bytes(
    case: Case, mode: CommitMode, small_groups: None
) -> None:
    assert crash_failures(case, mode) == []


def test_negative_control_one_cow_flush_per_group_breaks_power_cut_exactness(
    small_groups: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing all of a group's areas and flushing the COW once loses exactness on a power cut.

    A lower area can reach the disk before a higher one is zeroed; the kernel stops reading at
    the lower, non-full one, and the higher area stays on disk, stale.
    """

    def write_then_flush_once(store: PersistentStore, writes: list[tuple[int, bytes]]) -> None:
        csb = store.geometry.chunk_bytes
        for index, raw in writes:
            store.dev.write(store.geometry.area_location(index) * csb, raw)
        store.dev.flush()

    monkeypatch.setattr(PersistentStore, "write_areas", write_then_flush_once)
    failures = crash_failures(CASES[0], CommitMode.INLINE)
    assert any("no kernel batch boundary" in f for f in failures)


def test_negative_control_an_origin_flush_that_does_nothing_loses_data(
    small_groups: None,
) -> None:
    """Entries cleared before their data is durable: the checker sees the data lost."""
    failures = crash_failures(CASES[0], CommitMode.INLINE, origin_flushes=False)
    assert any("merged data was lost" in f for f in failures)


@pytest.mark.parametrize("case", CASES, ids=["chunk1", "chunk2"])
def test_group_merge_ends_on_the_kernels_bytes_in_every_mode(case: Case) -> None:
    for mode in CommitMode:
        origin, cow = MemDevice(case.origin), MemDevice(case.cow)
        run_group_merge(origin, cow, case.chunk_sectors, mode)
        assert (bytes(origin.data), bytes(cow.data)) == (case.final_origin, case.final_cow)


def test_stopped_at_every_group_boundary_then_resumed_on_files(
    tmp_path: Path, small_groups: None
) -> None:
    """The CLI's path (files, committer thread): stop after k groups, run again, same bytes."""
    case = CASES[1]
    origin, cow = tmp_path / "origin", tmp_path / "cow"
    k = 0
    while True:
        origin.write_bytes(case.origin)
        cow.write_bytes(case.cow)
        first = merge_module.merge(
            str(origin), str(cow), table_chunk_sectors=case.chunk_sectors, stop_after_groups=k
        )
        assert cow.read_bytes() in case.boundaries
        merge_module.merge(str(origin), str(cow), table_chunk_sectors=case.chunk_sectors)
        assert (origin.read_bytes(), cow.read_bytes()) == (case.final_origin, case.final_cow)
        if first.merged == first.remaining:
            break
        k += 1
    assert k > 2  # really stopped at several group boundaries
