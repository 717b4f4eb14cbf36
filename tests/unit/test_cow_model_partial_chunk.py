"""A merge next to a sibling snapshot on an origin whose last chunk is partial.

Found by the state machine: merging a snapshot with 16-sector chunks COWed, into a sibling with
8-sector chunks, a chunk lying wholly past the origin's end; merging the sibling then wrote past
the end. The kernel's __origin_write skips sectors beyond the snapshot's end.
"""

from __future__ import annotations

from snapkit.cow.device import MemDevice
from snapkit.cow.model import Origin

SECTOR = 512


def test_merging_beside_a_smaller_chunk_sibling_stays_inside_the_origin() -> None:
    size = 129 * SECTOR  # 16-sector chunk 8 covers sectors 128..143: only 128 exists
    before = bytes((i * 7) % 251 for i in range(size))
    origin = Origin(MemDevice(before))
    big = origin.snapshot(MemDevice(5 * 16 * SECTOR), "P", 16)
    small = origin.snapshot(MemDevice(8 * 8 * SECTOR), "P", 8)
    origin.write(107 * SECTOR, bytes(22 * SECTOR))  # touches the last, partial chunk
    assert origin.merge(big)
    assert origin.read(0, size) == before
    assert origin.merge(small)  # raised "write past the end" before the fix
    assert origin.read(0, size) == before
