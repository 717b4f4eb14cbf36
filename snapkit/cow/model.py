"""An origin with its snapshots, behaving block for block as dm-snapshot does.

This is the oracle the offline tools and the property tests are checked against: writes to the
origin copy-on-write into every active valid snapshot, writes to a snapshot allocate and copy
unless they cover the whole chunk, a full COW invalidates (``P``) or overflows (``PO``), and a
merge walks the exceptions back from the newest in the kernel's batches, committing metadata
after each. Devices are ``BlockDevice``s, so the model runs on files without loading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from snapkit.cow.device import BlockDevice
from snapkit.cow.format import SECTOR_SIZE, Entry
from snapkit.cow.store import MergeBatch, PersistentStore
from snapkit.cow.transient import TransientStore
from snapkit.errors import OperationError, RefusedError

Kind = Literal["P", "PO", "N"]


class SnapshotIOError(OperationError):
    """The EIO a snapshot device returns once it is invalid or has overflowed."""


@dataclass(frozen=True)
class Piece:
    """The part of an I/O that falls in one chunk."""

    chunk: int
    start: int  # byte offset of the piece on the device
    length: int
    offset: int  # byte offset of the piece inside the caller's buffer


def split(start: int, length: int, chunk_bytes: int) -> Iterator[Piece]:
    """The kernel splits every snapshot I/O at chunk boundaries; so does the model."""
    done = 0
    while done < length:
        pos = start + done
        chunk = pos // chunk_bytes
        take = min(length - done, (chunk + 1) * chunk_bytes - pos)
        yield Piece(chunk, pos, take, done)
        done += take


class Snapshot:
    """A ``snapshot`` target: its store, its exception table and its validity."""

    def __init__(
        self,
        origin: Origin,
        cow: BlockDevice,
        kind: Kind,
        store: PersistentStore | TransientStore,
    ) -> None:
        self.origin = origin
        self.cow = cow
        self.kind = kind
        self.store = store
        self.size = origin.size
        self.overflowed = False
        self.merging = False
        self.exceptions: dict[int, int] = {}
        if isinstance(store, PersistentStore):
            self.chunk_sectors = store.geometry.chunk_sectors
            self.exceptions = dict(zip(store.olds, store.news, strict=True))
        else:
            self.chunk_sectors = store.chunk_sectors

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_sectors * SECTOR_SIZE

    @property
    def valid(self) -> bool:
        return self.store.valid

    def status(self) -> str:
        """The snapshot's ``dmsetup status`` text (after the start/length/target fields)."""
        if not self.valid:
            return "Invalid"
        if self.overflowed:
            return "Overflow"
        return self.store.usage().status

    def read(self, start: int, length: int) -> bytes:
        """Read the point-in-time view; EIO once the snapshot is invalid."""
        if not self.valid:
            raise SnapshotIOError("snapshot is invalid: I/O error")
        out = bytearray(length)
        for piece in split(start, length, self.chunk_bytes):
            new_chunk = self.exceptions.get(piece.chunk)
            if new_chunk is None:
                data = self.origin.dev.read(piece.start, piece.length)
            else:
                cow_at = new_chunk * self.chunk_bytes + piece.start % self.chunk_bytes
                data = self.cow.read(cow_at, piece.length)
            out[piece.offset : piece.offset + piece.length] = data
        return bytes(out)

    def write(self, start: int, data: bytes) -> None:
        """Write to the snapshot device, allocating an exception per untouched chunk."""
        if start + len(data) > self.size:
            raise ValueError("write past the end of the snapshot")
        for piece in split(start, len(data), self.chunk_bytes):
            if not self.valid or self.overflowed:
                raise SnapshotIOError("snapshot is invalid or overflowed: I/O error")
            new_chunk = self.exceptions.get(piece.chunk)
            if new_chunk is None:
                full = piece.length == self.chunk_bytes
                new_chunk = self._add_exception(piece.chunk, copy=not full, from_origin_write=False)
            cow_at = new_chunk * self.chunk_bytes + piece.start % self.chunk_bytes
            self.cow.write(cow_at, data[piece.offset : piece.offset + piece.length])

    def _copy_origin_chunk(self, chunk: int, new_chunk: int) -> None:
        """start_copy(): the origin chunk, cut at the origin's end, into the COW chunk."""
        at = chunk * self.chunk_bytes
        length = min(self.chunk_bytes, self.origin.size - at)
        self.cow.write(new_chunk * self.chunk_bytes, self.origin.dev.read(at, length))

    def _add_exception(self, chunk: int, *, copy: bool, from_origin_write: bool) -> int:
        """__find_pending_exception() through pending_complete(), run one at a time."""
        new_chunk = self.store.prepare_exception()
        if new_chunk is None:
            if self.kind == "PO" and not from_origin_write:
                self.overflowed = True
            else:
                self.invalidate()
            raise SnapshotIOError("snapshot COW is full")
        if copy:
            self._copy_origin_chunk(chunk, new_chunk)
        if not self.store.commit_exception(Entry(chunk, new_chunk)):
            self.invalidate()
            raise SnapshotIOError("snapshot metadata write failed")
        self.exceptions[chunk] = new_chunk
        return new_chunk

    def invalidate(self) -> None:
        """__invalidate_snapshot(): in memory, and for a persistent store in its header."""
        if isinstance(self.store, PersistentStore):
            if self.store.header.valid:
                self.store.invalidate()
            self.store.valid = False
        else:
            self.store.invalidate()

    def cow_for_origin_write(self, start: int, length: int) -> None:
        """__origin_write() for this snapshot: keep the old data of every chunk written."""
        if self.merging or not self.valid or start >= self.size:
            return
        for piece in split(start, length, self.chunk_bytes):
            if piece.chunk * self.chunk_bytes >= self.size:
                # "Nothing to do if writing beyond end of snapshot" (__origin_write): a merge
                # of a sibling with bigger chunks passes extents that run past the origin.
                break
            if piece.chunk in self.exceptions:
                continue
            try:
                self._add_exception(piece.chunk, copy=True, from_origin_write=True)
            except SnapshotIOError:
                return  # invalidated: the origin write itself still succeeds


class Origin:
    """A ``snapshot-origin`` over a device, and the snapshots registered on it."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.size = dev.size
        self.snapshots: list[Snapshot] = []

    def snapshot(
        self,
        cow: BlockDevice,
        kind: Kind = "P",
        chunk_sectors: int = 8,
    ) -> Snapshot:
        """Activate a snapshot; a new persistent store is initialised as the kernel does."""
        store: PersistentStore | TransientStore
        if kind == "N":
            store = TransientStore(cow.size, chunk_sectors)
        else:
            store = PersistentStore.load(cow, chunk_sectors)
            if store.is_new:
                store.initialise()
        snap = Snapshot(self, cow, kind, store)
        self.snapshots.append(snap)
        return snap

    def read(self, start: int, length: int) -> bytes:
        merging = [s for s in self.snapshots if s.merging]
        if not merging:
            return self.dev.read(start, length)
        return merging[0].read(start, length)  # unmerged chunks still live in the COW

    def write(self, start: int, data: bytes) -> None:
        if any(s.merging for s in self.snapshots):
            raise RefusedError("the model does not take origin writes while a merge runs")
        if start + len(data) > self.size:
            raise ValueError("write past the end of the origin")
        for snap in self.snapshots:
            snap.cow_for_origin_write(start, len(data))
        self.dev.write(start, data)

    def merge(self, snap: Snapshot, max_batches: int | None = None) -> bool:
        """snapshot-merge: run up to ``max_batches`` kernel batches; True once all are merged.

        A stopped merge leaves the devices exactly as a stopped kernel merge would, so the
        same call (or the kernel) can resume it from a reloaded store.
        """
        store = snap.store
        if not isinstance(store, PersistentStore):
            raise RefusedError("a transient snapshot cannot be merged")
        if not snap.valid:
            raise RefusedError("snapshot is invalid: can't merge")
        snap.merging = True
        done = 0
        while max_batches is None or done < max_batches:
            batch = store.prepare_merge()
            if batch is None:
                break
            self._merge_batch(snap, batch)
            done += 1
        if not store.merge_done:
            return False
        self.snapshots.remove(snap)  # LVM drops the snapshot once X == Z
        snap.merging = False
        return True

    def _merge_batch(self, snap: Snapshot, batch: MergeBatch) -> None:
        """snapshot_merge_next_chunks() and merge_callback() for one batch."""
        assert isinstance(snap.store, PersistentStore)
        csb = snap.chunk_bytes
        at = batch.old_chunk * csb
        io_size = batch.count * csb
        for other in self.snapshots:
            if other is not snap:
                other.cow_for_origin_write(at, io_size)
        length = min(io_size, self.size - at)
        self.dev.write(at, snap.cow.read(batch.new_chunk * csb, length))
        self.dev.flush()
        snap.store.commit_merge(batch.count)
        for chunk in range(batch.old_chunk, batch.old_chunk + batch.count):
            del snap.exceptions[chunk]


__all__ = ["Kind", "Origin", "Piece", "Snapshot", "SnapshotIOError", "split"]
