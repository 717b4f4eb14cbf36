"""Merge a COW into its origin in place, leaving the bytes the kernel's snapshot-merge leaves.

The kernel copies one batch, flushes the origin, then clears the batch's entries and writes the
area with flush+FUA. Doing two flushes per batch would make a merge of 100,000 scattered chunks
take minutes, so batches are grouped: the data of several batches is copied, the origin is
flushed once, and then the metadata is written with all of them cleared: areas the group
emptied first (as zeros, highest first), then the current one, each flushed before the next.
Every state on disk between those writes is one the kernel passes through (a batch boundary),
and a kill at any moment leaves at worst batches copied but not yet cleared; copying them again
is harmless, because no batch changes the COW data it reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from snapkit.cow.format import DEFAULT_CHUNK_SECTORS, SECTOR_SIZE
from snapkit.cow.image import Pair, device_sectors, open_pair
from snapkit.cow.store import MergeBatch
from snapkit.errors import OperationError

GROUP_BYTES = 256 << 20  # data merged between two flushes of the origin
COPY_BYTES = 8 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MergeResult:
    merged: int  # exceptions merged by this run
    remaining: int  # exceptions left at the start of this run
    status: str  # the snapshot-merge status line at the end: X == Z when complete


def merge(
    origin_path: str,
    cow_path: str,
    progress: Progress | None = None,
    table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
    *,
    stop_after_groups: int | None = None,
) -> MergeResult:
    """Merge all exceptions; ``stop_after_groups`` exists so tests can stop it half way."""
    with open_pair(
        origin_path, cow_path, writable=True, table_chunk_sectors=table_chunk_sectors
    ) as pair:
        try:
            return _run(pair, progress, stop_after_groups)
        except OSError as exc:
            raise OperationError(f"merge failed: {exc.strerror or exc}") from exc


def _run(pair: Pair, progress: Progress | None, stop_after_groups: int | None) -> MergeResult:
    store = pair.store
    if store.is_new:
        store.initialise()  # what activating snapshot-merge on a new store writes
        return MergeResult(0, 0, store.usage().status)
    total = store.exception_count
    origin_bytes = device_sectors(pair.origin) * SECTOR_SIZE
    buf = bytearray(min(COPY_BYTES, max(store.geometry.chunk_bytes, 1 << 20)))
    group = groups = 0
    dirty = False

    def commit() -> None:
        nonlocal group, groups, dirty
        pair.origin.flush()
        store.flush_merged()
        group, dirty = 0, False
        groups += 1
        if progress is not None:
            progress(total - store.exception_count, total)

    while True:
        if dirty and group >= GROUP_BYTES:
            commit()
            if stop_after_groups is not None and groups >= stop_after_groups:
                break
        batch = store.prepare_merge()
        if batch is None:
            break
        group += _copy_batch(pair, batch, origin_bytes, buf)
        store.clear_merged(batch.count)
        dirty = True
    if dirty:
        commit()
    return MergeResult(total - store.exception_count, total, store.usage().status)


def _copy_batch(pair: Pair, batch: MergeBatch, origin_bytes: int, buf: bytearray) -> int:
    """dm_kcopyd_copy of the batch, cut at the origin's end as the kernel's dest.count is."""
    csb = pair.store.geometry.chunk_bytes
    dest = batch.old_chunk * csb
    length = min(batch.count * csb, origin_bytes - dest)
    src = batch.new_chunk * csb
    view = memoryview(buf)
    done = 0
    while done < length:
        step = min(len(buf), length - done)
        got = os.preadv(pair.cow.fd, [view[:step]], src + done)
        if got < step:  # a sparse or short COW reads as zeros, as the block layer does
            view[got:step] = bytes(step - got)
        pair.origin.write(dest + done, view[:step])
        done += step
    return length


__all__ = ["MergeResult", "merge"]
