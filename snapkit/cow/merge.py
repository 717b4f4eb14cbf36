"""Merge a COW into its origin in place, leaving the bytes the kernel's snapshot-merge leaves.

Order. Exactly the kernel's: newest entry first, in batches of entries whose old and new chunks
both run on, never crossing a metadata area (``PersistentStore.prepare_merge_run`` walks the
same batches as ``prepare_merge``).

Commit discipline. The kernel copies one batch, flushes the origin, then clears the batch's
entries and writes its area with flush+FUA: two flushes per batch, minutes for 100,000
scattered chunks. Here whole batches are committed in groups (up to ``GROUP_BYTES`` of data,
across as many areas as that takes):

1. copy the data of every batch in the group COW -> origin;
2. flush the origin once;
3. write the metadata the group changed: the areas it emptied (highest first, as zeros or as
   the stale bytes the kernel would write back), then the area it stopped in, each write
   followed by a flush of the COW.

Why it is safe. An entry is cleared on disk only after its data is durable (step 2 precedes
step 3), so at any moment, even across a power cut, every entry still on disk points at COW
data the merge never changes, and every cleared entry's data is in the origin. Step 3 keeps one
flush per area, in order, because a power cut must never let a lower area become non-full on
disk while a higher one is still full: the kernel stops reading at the first non-full area, so
the higher one would stay on disk, stale, for ever, and the COW would no longer end
byte-identical to the kernel's. One COW flush per group for all of step 3 would survive a
killed process (the page cache keeps its writes, in order) but not a power cut, whose disk may
keep any subset of unflushed writes; tests/unit/test_cow_merge_crash.py cuts the merge at
every write and flush and shows both. So every state on disk, at any cut, is a kernel batch
boundary plus at most some batches copied but not yet cleared (the state a kernel stopped
mid-copy leaves, for more than one batch); resuming copies those again, which is harmless
because a merge never writes the COW data it reads. After each group it is exactly a batch
boundary.

Data path. All copies of a group precede its origin flush, so their order is free: the group's
chunks get buffer slots in origin order, each run of consecutive COW chunks is one scattered
read (preadv) into its slots, and each run of consecutive origin chunks one plain write.

Overlap. What is left is the origin's write-back and one COW flush per metadata area, mostly
waiting, so steps 2 and 3 of group N run on a committer thread while group N+1 is copied.
Group N+1's copies may then reach the origin before group N's metadata (more batches copied
but not cleared, as above), and group N+1's metadata is written only after group N's and after
its own data is flushed. ``CommitMode.LAGGED`` replays the slowest such order without a thread
for the crash tests.
"""

from __future__ import annotations

import enum
import os
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from snapkit.cow.device import BlockDevice, FileDevice
from snapkit.cow.format import DEFAULT_CHUNK_SECTORS, SECTOR_SIZE
from snapkit.cow.image import device_sectors, open_pair
from snapkit.cow.store import PersistentStore
from snapkit.errors import OperationError

GROUP_BYTES = 128 << 20  # data merged between two flushes of the origin
IOV_MAX = 1024  # os.preadv takes at most this many buffers

Progress = Callable[[int, int], None]


class CommitMode(enum.Enum):
    """Where steps 2 and 3 of a group run. Every mode leaves the same bytes."""

    THREAD = "thread"  # on a committer thread, overlapping the copy of the next group
    INLINE = "inline"  # before the next group is copied
    LAGGED = "lagged"  # after the next group is copied: the slowest order THREAD can take


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
            return merge_store(
                pair.origin,
                pair.store,
                device_sectors(pair.origin) * SECTOR_SIZE,
                progress,
                stop_after_groups=stop_after_groups,
            )
        except OSError as exc:
            raise OperationError(f"merge failed: {exc.strerror or exc}") from exc


def merge_store(
    origin: BlockDevice,
    store: PersistentStore,
    origin_bytes: int,
    progress: Progress | None = None,
    *,
    stop_after_groups: int | None = None,
    mode: CommitMode = CommitMode.THREAD,
) -> MergeResult:
    """The merge on any devices, from a loaded store; the file-free core of merge()."""
    if store.is_new:
        store.initialise()  # what activating snapshot-merge on a new store writes
        return MergeResult(0, 0, store.usage().status)
    total = store.exception_count
    copier = _Copier(origin, store.dev, store.geometry.chunk_bytes, origin_bytes)
    commits = _Committer(origin, store, progress, total, mode)
    groups = 0
    try:
        while stop_after_groups is None or groups < stop_after_groups:
            olds, news = _take_group(store, max(1, GROUP_BYTES // store.geometry.chunk_bytes))
            if not olds:
                break
            copier.copy(olds, news)
            commits.submit(store.take_merge_writes(), total - store.exception_count)
            groups += 1
    finally:
        commits.wait()
    return MergeResult(total - store.exception_count, total, store.usage().status)


def _take_group(store: PersistentStore, budget: int) -> tuple[array[int], array[int]]:
    """Whole batches, newest first, up to ``budget`` entries; cleared in memory only."""
    olds: array[int] = array("Q")
    news: array[int] = array("Q")
    while len(olds) < budget:
        count = store.prepare_merge_run(budget - len(olds))
        if not count:
            break
        olds.extend(store.olds[-count:])
        news.extend(store.news[-count:])
        store.clear_merged(count)
    return olds, news


class _Committer:
    """Steps 2 and 3 of each group, one group at a time, in submission order."""

    def __init__(
        self,
        origin: BlockDevice,
        store: PersistentStore,
        progress: Progress | None,
        total: int,
        mode: CommitMode,
    ) -> None:
        self.origin = origin
        self.store = store
        self.progress = progress
        self.total = total
        self.mode = mode
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.lagging: tuple[list[tuple[int, bytes]], int] | None = None

    def submit(self, writes: list[tuple[int, bytes]], merged: int) -> None:
        self.wait()  # group N's metadata must be on disk before group N+1's is written
        if self.mode is CommitMode.INLINE:
            self._commit(writes, merged)
        elif self.mode is CommitMode.LAGGED:
            self.lagging = (writes, merged)
        else:
            self.thread = threading.Thread(target=self._guarded, args=(writes, merged))
            self.thread.start()

    def _guarded(self, writes: list[tuple[int, bytes]], merged: int) -> None:
        try:
            self._commit(writes, merged)
        except BaseException as exc:  # handed to the merging thread by wait()
            self.error = exc

    def _commit(self, writes: list[tuple[int, bytes]], merged: int) -> None:
        self.origin.flush()
        self.store.write_areas(writes)
        if self.progress is not None:
            self.progress(merged, self.total)

    def wait(self) -> None:
        """Finish the group in flight; called before the next one and at the end."""
        if self.lagging is not None:
            lagging, self.lagging = self.lagging, None
            self._commit(*lagging)
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class _Copier:
    """Step 1 of a group: the COW reads sorted and coalesced, then the origin writes."""

    def __init__(self, origin: BlockDevice, cow: BlockDevice, chunk_bytes: int, origin_bytes: int):
        self.origin = origin
        self.cow = cow
        self.csb = chunk_bytes
        self.origin_bytes = origin_bytes
        self.buf = bytearray(0)

    def copy(self, olds: array[int], news: array[int]) -> None:
        csb = self.csb
        if len(olds) * csb > GROUP_BYTES:
            # One batch larger than a group (or one chunk): stream runs where both chunks run on.
            start = 0
            while start < len(olds):
                end = start + 1
                while end < len(olds) and (olds[end], news[end]) == (
                    olds[end - 1] + 1,
                    news[end - 1] + 1,
                ):
                    end += 1
                self._stream(news[start] * csb, olds[start] * csb, (end - start) * csb)
                start = end
            return
        if len(self.buf) < len(olds) * csb:
            self.buf = bytearray(len(olds) * csb)
        view = memoryview(self.buf)
        # Slots in origin order, so that a run of consecutive origin chunks is one plain write;
        # the reads scatter each run of consecutive COW chunks into its slots.
        by_old = sorted(range(len(olds)), key=olds.__getitem__)
        slot = array("Q", bytes(8 * len(olds)))
        for rank, index in enumerate(by_old):
            slot[index] = rank * csb
        self._read_runs(news, slot, view)
        self._write_runs(array("Q", (olds[i] for i in by_old)), view)

    def _read_runs(self, news: array[int], slot: array[int], view: memoryview) -> None:
        """One scattered read per run of consecutive COW chunks."""
        csb = self.csb
        order = sorted(range(len(news)), key=news.__getitem__)
        start, n = 0, len(order)
        while start < n:
            end = start + 1
            while (
                end < n and end - start < IOV_MAX and news[order[end]] == news[order[end - 1]] + 1
            ):
                end += 1
            parts = [view[slot[i] : slot[i] + csb] for i in order[start:end]]
            self._readv(news[order[start]] * csb, parts)
            start = end

    def _readv(self, offset: int, parts: list[memoryview]) -> None:
        """Fill ``parts`` from ``offset`` on; a sparse or short COW reads as zeros."""
        if isinstance(self.cow, FileDevice):
            got = os.preadv(self.cow.fd, parts, offset)
            if got == len(parts) * self.csb:
                return
            parts = [p[max(0, got - i * self.csb) :] for i, p in enumerate(parts)]
            offset += got  # a short read: read on where it stopped, one part at a time
        for part in parts:
            if part:
                got = self.cow.readinto(offset, part)
                part[got:] = bytes(len(part) - got)
                offset += len(part)

    def _write_runs(self, olds: array[int], view: memoryview) -> None:
        """One write per run of consecutive origin chunks (``olds`` sorted), cut at the end."""
        csb, limit, write = self.csb, self.origin_bytes, self.origin.write
        fd = self.origin.fd if isinstance(self.origin, FileDevice) else -1
        start, n = 0, len(olds)
        while start < n:
            end, first = start + 1, olds[start]
            while end < n and olds[end] == first + end - start:
                end += 1
            dest = first * csb
            # dm_kcopyd_copy's dest.count stops at the origin's end
            part = view[start * csb : min(end * csb, start * csb + limit - dest)]
            done = os.pwrite(fd, part, dest) if fd >= 0 else 0  # the common case, called bare
            if done < len(part):
                write(dest + done, part[done:])
            start = end

    def _stream(self, src: int, dest: int, length: int) -> None:
        length = min(length, self.origin_bytes - dest)
        if len(self.buf) < min(length, 8 << 20):
            self.buf = bytearray(min(length, 8 << 20))
        view = memoryview(self.buf)
        done = 0
        while done < length:
            step = min(len(view), length - done)
            got = self.cow.readinto(src + done, view[:step])
            if got < step:
                view[got:step] = bytes(step - got)
            self.origin.write(dest + done, view[:step])
            done += step


__all__ = ["CommitMode", "MergeResult", "merge", "merge_store"]
