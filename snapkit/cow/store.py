"""The persistent exception store over a device, behaving as dm-snap-persistent.c does.

The kernel's in-memory state is mirrored field by field (``current_area``,
``current_committed``, ``next_free`` and the raw bytes of the current area), because the bytes a
merge or a commit leaves on disk depend on it: stale bytes after the end-of-list entry survive,
emptied areas are rewritten as zeros, the header is never touched by a merge. Any layout the
kernel would load but that contradicts itself (an entry past the end, on a metadata chunk, or a
second entry for the same origin chunk) is refused here, before anything is written.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from snapkit.cow.device import BlockDevice
from snapkit.cow.format import (
    DEFAULT_CHUNK_SECTORS,
    ENTRY_SIZE,
    HEADER_CHUNKS,
    SECTOR_SIZE,
    Entry,
    Geometry,
    Header,
    area_pairs,
    check_chunk_sectors,
    live_count,
    pack_entry,
)
from snapkit.errors import CowFormatError


@dataclass(frozen=True)
class Usage:
    """The three numbers of a snapshot's ``dmsetup status`` line, in sectors."""

    allocated_sectors: int
    total_sectors: int
    metadata_sectors: int

    @property
    def status(self) -> str:
        return f"{self.allocated_sectors}/{self.total_sectors} {self.metadata_sectors}"


@dataclass(frozen=True)
class MergeBatch:
    """One kernel merge step: ``count`` exceptions whose old and new chunks both run on."""

    old_chunk: int
    new_chunk: int
    count: int


@dataclass
class Areas:
    """What read_exceptions() leaves behind."""

    olds: array[int]
    news: array[int]
    current_area: int
    current_committed: int
    area: bytearray
    next_free: int


SCAN_GROUP = 256  # metadata areas decoded together: one frombytes for 1 MiB of entries


def scan_areas(dev: BlockDevice, geo: Geometry) -> Areas:
    """read_exceptions(): areas in order until one is not full, refusing contradictions.

    Areas are read one pread each but decoded ``SCAN_GROUP`` at a time: one array of all
    their words, split into the old and new columns by two strided slices, and the end of the
    list found with one ``index(0)`` over the group's new chunks. Per area only the target
    check runs (a min and a max), so 1,000,000 exceptions cost a few thousand C calls, not
    a million Python steps.
    """
    epa, csb, limit = geo.entries_per_area, geo.chunk_bytes, geo.cow_chunks
    olds: array[int] = array("Q")
    news: array[int] = array("Q")
    next_free = HEADER_CHUNKS + 1
    first = 0
    while True:
        raws: list[bytes] = []
        for area_index in range(first, first + SCAN_GROUP):
            location = geo.area_location(area_index)
            raw = dev.read(location * csb, csb) if location < limit else b""
            if len(raw) < csb:
                if not raws:
                    raise CowFormatError(
                        f"COW is truncated: metadata area {area_index} (chunk {location}) "
                        f"lies past the end of a {limit}-chunk store"
                    )
                break  # decode what was read first: an earlier area may end the list
            raws.append(raw)
        group_olds, group_news = area_pairs(b"".join(raws))
        live = live_count(group_news)
        for i in range(min(len(raws), live // epa + 1)):
            count = min(epa, live - i * epa)
            if count:
                area_news = group_news[i * epa : i * epa + count]
                next_free = max(next_free, _check_targets(geo, first + i, area_news) + 1)
            if count < epa:
                olds.extend(group_olds[:live])
                news.extend(group_news[:live])
                if len(set(olds)) != len(olds):
                    raise CowFormatError(_duplicate_message(olds))
                return Areas(
                    olds, news, first + i, count, bytearray(raws[i]), geo.skip_metadata(next_free)
                )
        olds.extend(group_olds)
        news.extend(group_news)
        first += len(raws)


def _check_targets(geo: Geometry, area_index: int, news: array[int]) -> int:
    """Refuse targets past the end or on a metadata chunk; returns the highest target."""
    top, bottom = max(news), min(news)
    if top >= geo.cow_chunks:
        raise CowFormatError(
            f"exception in area {area_index} points to COW chunk {top}, past the end "
            f"({geo.cow_chunks} chunks)"
        )
    # The kernel only allocates inside the area's own data chunks; then no check per entry.
    own = geo.area_location(area_index)
    if own < bottom and top <= own + geo.entries_per_area:
        return top
    stride = geo.stride
    if bottom <= HEADER_CHUNKS or any(n % stride == HEADER_CHUNKS for n in news):
        bad = next(n for n in news if geo.is_metadata_chunk(n))
        raise CowFormatError(
            f"exception in area {area_index} points to COW chunk {bad}, a metadata chunk"
        )
    return top


def _duplicate_message(olds: array[int]) -> str:
    seen: set[int] = set()
    for old in olds:
        if old in seen:
            return f"two exceptions for the same origin chunk {old}"
        seen.add(old)
    return "duplicate exceptions"  # pragma: no cover - only called when there is one


class PersistentStore:
    """A loaded ``P``/``PO`` store. Mutations write the device exactly when the kernel would."""

    def __init__(self, dev: BlockDevice, geometry: Geometry, header: Header, areas: Areas):
        self.dev = dev
        self.geometry = geometry
        self.header = header
        self.valid = header.valid
        self.olds = areas.olds
        self.news = areas.news
        self.current_area = areas.current_area
        self.current_committed = areas.current_committed
        self.area = areas.area
        self.next_free = areas.next_free
        # Merge metadata not yet on disk: emptied areas (highest first), then the current one.
        self._emptied: list[tuple[int, bytes]] = []
        self._merge_dirty = False

    @classmethod
    def load(
        cls, dev: BlockDevice, table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS
    ) -> PersistentStore:
        """persistent_read_metadata(), minus the writes a new store gets (see initialise)."""
        cow_sectors = dev.size // SECTOR_SIZE
        header = Header.unpack(dev.read(0, 16))
        header.check()
        chunk = header.chunk_sectors if not header.is_new else table_chunk_sectors
        geometry = Geometry(check_chunk_sectors(chunk), cow_sectors)
        if dev.size < geometry.chunk_bytes:
            # Say what it is: a cut-off file, not a store of "0 sectors".
            raise CowFormatError(
                f"COW is truncated: {dev.size} bytes, too short for its header chunk of "
                f"{geometry.chunk_bytes} bytes"
            )
        geometry.check_size()
        if header.is_new:
            # The header's other fields are meaningless until initialise() writes them.
            header = Header(0, True, 0, chunk)
            return cls(dev, geometry, header, _empty_areas(geometry))
        if not header.valid:
            # The kernel stops here: an invalid store's exceptions are never read.
            return cls(dev, geometry, header, _empty_areas(geometry))
        return cls(dev, geometry, header, scan_areas(dev, geometry))

    @classmethod
    def create(cls, dev: BlockDevice, chunk_sectors: int) -> PersistentStore:
        """A new store as activation makes it: header written, area 0 zeroed."""
        geometry = Geometry(check_chunk_sectors(chunk_sectors), dev.size // SECTOR_SIZE)
        geometry.check_size()
        store = cls(dev, geometry, Header(0, True, 0, chunk_sectors), _empty_areas(geometry))
        store.initialise()
        return store

    @property
    def is_new(self) -> bool:
        return self.header.is_new

    def initialise(self) -> None:
        """What the kernel writes when it finds magic 0: a fresh header, then a zeroed area 0."""
        geo = self.geometry
        self.header = Header.fresh(geo.chunk_sectors)
        self.dev.write(0, self.header.pack(geo.chunk_bytes))
        self.dev.write(geo.area_location(0) * geo.chunk_bytes, bytes(geo.chunk_bytes))
        self.dev.flush()

    @property
    def exception_count(self) -> int:
        return len(self.olds)

    def entries(self) -> list[Entry]:
        return [Entry(o, n) for o, n in zip(self.olds, self.news, strict=True)]

    def usage(self) -> Usage:
        """persistent_usage(): next_free and the areas in use, counted in sectors."""
        cs = self.geometry.chunk_sectors
        return Usage(
            self.next_free * cs,
            self.geometry.cow_sectors,
            (self.current_area + 1 + HEADER_CHUNKS) * cs,
        )

    # -- copy-on-write ---------------------------------------------------------------------

    def prepare_exception(self) -> int | None:
        """persistent_prepare_exception(): the next free chunk, or None when the COW is full."""
        geo = self.geometry
        if geo.cow_sectors < (self.next_free + 1) * geo.chunk_sectors:
            return None
        new_chunk = self.next_free
        self.next_free = geo.skip_metadata(self.next_free + 1)
        return new_chunk

    def commit_exception(self, entry: Entry) -> bool:
        """persistent_commit_exception() with nothing else in flight; False if it invalidated."""
        geo = self.geometry
        epa = geo.entries_per_area
        offset = self.current_committed * ENTRY_SIZE
        self.area[offset : offset + ENTRY_SIZE] = pack_entry(entry)
        self.current_committed += 1
        self.olds.append(entry.old_chunk)
        self.news.append(entry.new_chunk)
        if self.current_committed == epa and not self._zero_disk_area(self.current_area + 1):
            self.valid = False
        if self.valid:
            self._write_area(self.current_area, self.area)
        if self.current_committed == epa:
            self.current_committed = 0
            self.current_area += 1
            self.area = bytearray(geo.chunk_bytes)
        return self.valid

    def invalidate(self) -> None:
        """persistent_drop_snapshot(): the header is rewritten with valid = 0, nothing else."""
        self.valid = False
        self.header = Header(
            self.header.magic, False, self.header.version, self.header.chunk_sectors
        )
        self.dev.write(0, self.header.pack(self.geometry.chunk_bytes))
        self.dev.flush()

    # -- merge -----------------------------------------------------------------------------

    def prepare_merge(self) -> MergeBatch | None:
        """persistent_prepare_merge(): the run at the tail of the current area, or None if done.

        A batch never crosses an area: the walk back stops at the area's first entry.
        """
        if not self._enter_merge_area():
            return None
        top = len(self.olds) - 1
        count = self._batch_ending_at(top, self.current_committed)
        return MergeBatch(self.olds[top] + 1 - count, self.news[top] + 1 - count, count)

    def prepare_merge_run(self, max_entries: int) -> int:
        """How many tail entries of the current area the next few prepare_merge() calls take.

        Whole batches only, at most ``max_entries`` unless the first batch alone is larger, and
        never past the area's first entry; 0 when the merge is done. Clearing them with one
        clear_merged() leaves the state that clearing them batch by batch leaves, so a caller
        that copies many batches at once still stops only at the kernel's batch boundaries.
        """
        if not self._enter_merge_area():
            return 0
        top = len(self.olds) - 1
        left = self.current_committed
        taken = 0
        while taken < left:
            count = self._batch_ending_at(top - taken, left - taken)
            if taken and taken + count > max_entries:
                break
            taken += count
            if taken >= max_entries:
                break
        return taken

    def _enter_merge_area(self) -> bool:
        """Step back to the previous area once the current one is empty; False when done."""
        if self.current_committed:
            return True
        if not self.current_area:
            return False
        if self._merge_dirty:
            self._emptied.append((self.current_area, bytes(self.area)))
            self._merge_dirty = False
        self.current_area -= 1
        geo = self.geometry
        location = geo.area_location(self.current_area)
        self.area = bytearray(self.dev.read(location * geo.chunk_bytes, geo.chunk_bytes))
        self.current_committed = geo.entries_per_area
        return True

    def _batch_ending_at(self, top: int, limit: int) -> int:
        """The kernel's walk back from entry ``top`` while old and new chunks both run on."""
        olds, news = self.olds, self.news
        last_old, last_new = olds[top], news[top]
        count = 1
        while (
            count < limit
            and olds[top - count] == last_old - count
            and news[top - count] == last_new - count
        ):
            count += 1
        return count

    def clear_merged(self, count: int) -> None:
        """The in-memory half of persistent_commit_merge(): zero the entries, move the counters."""
        if count > self.current_committed:
            raise ValueError("cannot clear more entries than the current area holds")
        start = (self.current_committed - count) * ENTRY_SIZE
        self.area[start : self.current_committed * ENTRY_SIZE] = bytes(count * ENTRY_SIZE)
        self.current_committed -= count
        del self.olds[len(self.olds) - count :]
        del self.news[len(self.news) - count :]
        self.next_free = self.geometry.area_location(self.current_area) + self.current_committed + 1
        self._merge_dirty = True

    def commit_merge(self, count: int) -> None:
        """persistent_commit_merge(): clear the batch and write the area with flush+FUA."""
        self.clear_merged(count)
        self.flush_merged()

    def flush_merged(self) -> None:
        """Write what clear_merged() changed: emptied areas first, highest first, each flushed."""
        self.write_areas(self.take_merge_writes())

    def take_merge_writes(self) -> list[tuple[int, bytes]]:
        """The area writes clear_merged() owes the disk, in the order they must reach it.

        Emptied areas come first, highest first, then the current area. Written in that order
        with a flush after each, every state on disk is one the kernel passes through: an
        area is only ever seen non-full once every area after it is zero.
        """
        writes = list(self._emptied)
        self._emptied.clear()
        if self._merge_dirty:
            writes.append((self.current_area, bytes(self.area)))
            self._merge_dirty = False
        return writes

    def write_areas(self, writes: list[tuple[int, bytes]]) -> None:
        """Write areas in the given order, each with flush+FUA as area_io() does."""
        for index, raw in writes:
            self._write_area(index, raw)

    @property
    def merge_done(self) -> bool:
        return not self.current_committed and not self.current_area

    # -- helpers ---------------------------------------------------------------------------

    def _write_area(self, index: int, raw: bytes | bytearray) -> None:
        """area_io(WRITE | PREFLUSH | FUA): the write, then a flush."""
        geo = self.geometry
        self.dev.write(geo.area_location(index) * geo.chunk_bytes, raw)
        self.dev.flush()

    def _zero_disk_area(self, area_index: int) -> bool:
        geo = self.geometry
        location = geo.area_location(area_index)
        if location >= geo.cow_chunks:
            return False  # the kernel's write past the device end fails with EIO
        self.dev.write(location * geo.chunk_bytes, bytes(geo.chunk_bytes))
        return True


def _empty_areas(geometry: Geometry) -> Areas:
    return Areas(array("Q"), array("Q"), 0, 0, bytearray(geometry.chunk_bytes), HEADER_CHUNKS + 1)


__all__ = ["MergeBatch", "PersistentStore", "Usage", "scan_areas"]
