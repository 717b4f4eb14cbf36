"""Kernel behaviours of the model that the vectors do not exercise."""

from __future__ import annotations

import struct

import pytest

from snapkit.cow.device import MemDevice
from snapkit.cow.format import Geometry, Header, area_pairs, live_count
from snapkit.cow.model import Origin, SnapshotIOError
from snapkit.cow.store import PersistentStore
from snapkit.errors import CowFormatError, RefusedError

CS = 8
CSB = CS * 512


def _origin(chunks: int = 16, extra_sectors: int = 0) -> Origin:
    size = chunks * CSB + extra_sectors * 512
    return Origin(MemDevice(bytes(i % 253 for i in range(size))))


def test_new_store_is_what_the_kernel_writes_and_reports() -> None:
    origin = _origin()
    cow = MemDevice(10 * CSB)
    snap = origin.snapshot(cow, "P", CS)
    assert Header.unpack(cow.read(0, 16)) == Header.fresh(CS)
    assert cow.read(16, CSB - 16) == bytes(CSB - 16)
    assert snap.status() == f"{2 * CS}/{10 * CS} {2 * CS}"  # "2c/<cow> 2c"


def test_header_chunk_size_wins_over_the_table() -> None:
    origin = _origin()
    cow = MemDevice(40 * CSB)
    origin.snapshot(cow, "P", 16)
    assert origin.snapshot(cow, "P", 8).chunk_sectors == 16


def test_origin_write_copies_into_every_snapshot_once() -> None:
    origin = _origin()
    before = origin.read(0, origin.size)
    snaps = [origin.snapshot(MemDevice(20 * CSB), kind, CS) for kind in ("P", "PO", "N")]
    origin.write(CSB + 100, b"x" * 10)
    origin.write(CSB + 200, b"y" * 10)
    for snap in snaps:
        assert snap.exceptions.keys() == {1}
        assert snap.read(0, origin.size) == before
    assert snaps[2].status() == f"{CS}/{20 * CS} 0"  # transient: from chunk 0, no metadata


def test_a_full_chunk_snapshot_write_does_not_copy() -> None:
    origin = _origin()
    cow = MemDevice(10 * CSB)
    snap = origin.snapshot(cow, "P", CS)
    snap.write(3 * CSB, b"z" * CSB)
    assert cow.read(2 * CSB, CSB) == b"z" * CSB
    snap.write(4 * CSB, b"q" * 512)
    assert cow.read(3 * CSB, CSB) == b"q" * 512 + origin.read(4 * CSB + 512, CSB - 512)


def test_overflow_on_origin_write_invalidates_even_under_po() -> None:
    origin = _origin()
    cow = MemDevice(3 * CSB)  # header, area, one data chunk
    snap = origin.snapshot(cow, "PO", CS)
    origin.write(0, b"a")
    origin.write(CSB, b"b")  # no room: invalid, and the origin write still succeeds
    assert snap.status() == "Invalid"
    assert origin.read(CSB, 1) == b"b"
    assert not Header.unpack(cow.read(0, 16)).valid
    with pytest.raises(SnapshotIOError):
        snap.read(0, 512)


def test_overflow_on_snapshot_write_under_po_keeps_reads_working() -> None:
    origin = _origin()
    cow = MemDevice(3 * CSB)
    snap = origin.snapshot(cow, "PO", CS)
    snap.write(0, b"a" * 512)
    header_before = cow.read(0, CSB)
    with pytest.raises(SnapshotIOError):
        snap.write(CSB, b"b" * 512)
    assert snap.status() == "Overflow"
    assert snap.read(0, 1) == b"a"
    assert cow.read(0, CSB) == header_before  # nothing on disk says so
    with pytest.raises(SnapshotIOError):
        snap.write(0, b"c")  # every write fails once overflowed


def test_overflow_on_snapshot_write_under_p_invalidates() -> None:
    origin = _origin()
    snap = origin.snapshot(MemDevice(3 * CSB), "P", CS)
    snap.write(0, b"a" * 512)
    with pytest.raises(SnapshotIOError):
        snap.write(CSB, b"b" * 512)
    assert snap.status() == "Invalid"


def test_allocation_skips_the_next_area_and_zeroes_it_first() -> None:
    geo = Geometry(1, 0)  # 1-sector chunks: 32 entries per area
    origin = Origin(MemDevice(bytes(range(256)) * 2 * 40))
    cow = MemDevice(80 * 512)
    cow.data[geo.area_location(1) * 512] = 0xEE  # junk where area 1 will go
    snap = origin.snapshot(cow, "P", 1)
    for sector in range(33):
        origin.write(sector * 512, b"w")
    assert snap.store.current_area == 1
    _olds, news = area_pairs(cow.read(geo.area_location(1) * 512, 512))
    assert live_count(news) == 1
    assert news[0] == geo.area_location(1) + 1  # chunk 34, after area 1 at chunk 33
    again = PersistentStore.load(cow)
    assert dict(zip(again.olds, again.news, strict=True)) == snap.exceptions


def test_last_partial_chunk_is_copied_and_merged_only_up_to_the_origin_end() -> None:
    origin = _origin(chunks=4, extra_sectors=3)  # chunk 4 holds 3 sectors
    cow = MemDevice(10 * CSB)
    cow.data[:] = b"\xaa" * len(cow.data)
    cow.data[:CSB] = bytes(CSB)  # magic 0: a new store
    snap = origin.snapshot(cow, "P", CS)
    before = origin.read(0, origin.size)
    origin.write(4 * CSB, b"n" * 1536)
    assert snap.read(0, origin.size) == before
    new = snap.exceptions[4]
    assert cow.read(new * CSB + 1536, 16) == b"\xaa" * 16  # past the origin end: untouched
    assert origin.merge(snap)
    assert origin.read(0, origin.size) == before


def test_transient_and_invalid_snapshots_cannot_merge() -> None:
    origin = _origin()
    with pytest.raises(RefusedError):
        origin.merge(origin.snapshot(MemDevice(10 * CSB), "N", CS))
    snap = origin.snapshot(MemDevice(3 * CSB), "P", CS)
    origin.write(0, b"1")
    origin.write(CSB, b"2")
    with pytest.raises(RefusedError):
        origin.merge(snap)


def test_merge_copies_into_the_other_snapshots_first() -> None:
    origin = _origin()
    first_view = origin.read(0, origin.size)
    merging = origin.snapshot(MemDevice(20 * CSB), "P", CS)
    merging.write(2 * CSB, b"m" * CSB)
    later_view = origin.read(0, origin.size)
    other = origin.snapshot(MemDevice(20 * CSB), "P", 16)
    assert origin.merge(merging)
    assert origin.read(0, origin.size) != first_view
    assert other.read(0, origin.size) == later_view
    assert 1 in other.exceptions  # 16-sector chunk 1 holds 8-sector chunk 2


def test_merge_batches_are_consecutive_runs_at_the_tail() -> None:
    origin = _origin(chunks=32)
    cow = MemDevice(40 * CSB)
    snap = origin.snapshot(cow, "P", CS)
    origin.write(10 * CSB, b"x" * 3 * CSB)  # chunks 10, 11, 12 -> new 2, 3, 4
    origin.write(5 * CSB, b"y")  # chunk 5 -> new 5
    origin.write(6 * CSB, b"y")  # chunk 6 -> new 6: consecutive with the one before
    store = snap.store
    assert isinstance(store, PersistentStore)
    batch = store.prepare_merge()
    assert batch is not None and (batch.old_chunk, batch.new_chunk, batch.count) == (5, 5, 2)
    store.commit_merge(batch.count)
    batch = store.prepare_merge()
    assert batch is not None and (batch.old_chunk, batch.new_chunk, batch.count) == (10, 2, 3)


def test_entries_after_the_end_marker_are_kept_byte_for_byte() -> None:
    """The kernel never rewrites stale slots after the terminator; neither may a merge."""
    origin = _origin()
    cow = MemDevice(10 * CSB)
    snap = origin.snapshot(cow, "P", CS)
    origin.write(0, b"x")
    struct.pack_into("<QQ", cow.data, CSB + 16 * 5, 9, 0)  # junk with new = 0 past the end
    reloaded = Origin(origin.dev)
    snap = reloaded.snapshot(cow, "P", CS)
    assert reloaded.merge(snap)
    assert struct.unpack_from("<QQ", cow.data, CSB + 16 * 5) == (9, 0)
    assert struct.unpack_from("<QQ", cow.data, CSB) == (0, 0)


def test_store_load_refuses_contradictions() -> None:
    cow = MemDevice(10 * CSB)
    PersistentStore.create(cow, CS)
    struct.pack_into("<QQQQ", cow.data, CSB, 3, 2, 3, 4)
    with pytest.raises(CowFormatError, match="same origin chunk 3"):
        PersistentStore.load(cow)


def test_a_merge_run_is_whole_batches_of_the_current_area() -> None:
    """prepare_merge_run() takes what successive prepare_merge() calls would, never half a batch."""
    origin = _origin(chunks=32)
    cow = MemDevice(40 * CSB)
    snap = origin.snapshot(cow, "P", CS)
    origin.write(10 * CSB, b"x" * 3 * CSB)  # batch (10, 2, 3)
    origin.write(5 * CSB, b"y")
    origin.write(6 * CSB, b"y")  # batch (5, 5, 2)
    origin.write(20 * CSB, b"z")  # batch (20, 7, 1)
    store = snap.store
    assert isinstance(store, PersistentStore)
    assert store.prepare_merge_run(1) == 1  # the newest batch alone
    assert store.prepare_merge_run(2) == 1  # adding (5, 5, 2) would pass the limit
    assert store.prepare_merge_run(3) == 3
    assert store.prepare_merge_run(100) == 6
    store.clear_merged(3)
    assert store.prepare_merge_run(1) == 3  # a batch larger than the limit is taken whole
    store.clear_merged(3)
    assert store.prepare_merge_run(1) == 0
