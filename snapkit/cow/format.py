"""The bytes of dm-snapshot's persistent exception store (drivers/md/dm-snap-persistent.c).

Everything here is pure: records, their packing, and the geometry of where things sit on the
COW device. Reading and writing a device is the store's job, so that the rules that say what a
valid layout is live in one place and can be tested without any I/O.

On disk, all integers are little-endian. Chunk 0 is the header; metadata area *k* sits at chunk
``1 + (epa + 1) * k`` and is followed by the ``epa`` data chunks it describes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from functools import cached_property

from snapkit.errors import CowFormatError

SECTOR_SIZE = 512
SNAP_MAGIC = 0x70416E53
DISK_VERSION = 1
HEADER_CHUNKS = 1
ENTRY_SIZE = 16
# LVM refuses a COW of fewer than three chunks: header, one metadata area, one data chunk.
MIN_COW_CHUNKS = 3
# The kernel keeps the chunk size in bytes in an int (dm_exception_store_set_chunk_size).
MAX_CHUNK_SECTORS = (2**31 - 1) >> 9
DEFAULT_CHUNK_SECTORS = 8

_HEADER = struct.Struct("<4I")


def check_chunk_sectors(chunk_sectors: int) -> int:
    """Apply the kernel's chunk-size rule, so a size it would reject never reaches the model."""
    if chunk_sectors <= 0 or chunk_sectors & (chunk_sectors - 1):
        raise CowFormatError(
            f"chunk size {chunk_sectors} sectors is not a power of two",
            hint="dm-snapshot chunk sizes are powers of two, e.g. 8 (4 KiB)",
        )
    if chunk_sectors > MAX_CHUNK_SECTORS:
        raise CowFormatError(f"chunk size {chunk_sectors} sectors is too large for the kernel")
    return chunk_sectors


@dataclass(frozen=True)
class Header:
    """Chunk 0 of a persistent store. ``magic == 0`` marks a store the kernel initialises."""

    magic: int
    valid: bool
    version: int
    chunk_sectors: int

    @classmethod
    def fresh(cls, chunk_sectors: int, *, valid: bool = True) -> Header:
        return cls(SNAP_MAGIC, valid, DISK_VERSION, chunk_sectors)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        if len(raw) < _HEADER.size:
            raise CowFormatError(
                f"COW is truncated: {len(raw)} bytes, too short for a snapshot header"
            )
        magic, valid, version, chunk = _HEADER.unpack_from(raw, 0)
        return cls(magic, valid != 0, version, chunk)

    @property
    def is_new(self) -> bool:
        return self.magic == 0

    def pack(self, chunk_bytes: int) -> bytes:
        """The whole header chunk: write_header() zeroes everything after the four fields."""
        head = _HEADER.pack(self.magic, int(self.valid), self.version, self.chunk_sectors)
        return head + bytes(chunk_bytes - len(head))

    def check(self) -> None:
        """Refuse what persistent_read_metadata() refuses, in the kernel's order."""
        if self.is_new:
            return
        if self.magic != SNAP_MAGIC:
            raise CowFormatError(
                f"not a snapshot store: magic {self.magic:#010x}, expected {SNAP_MAGIC:#010x}"
            )
        check_chunk_sectors(self.chunk_sectors)
        if self.version != DISK_VERSION:
            raise CowFormatError(
                f"unsupported snapshot disk version {self.version}, only {DISK_VERSION} exists"
            )


@dataclass(frozen=True)
class Geometry:
    """Where the header, areas and data chunks sit for one chunk size and COW size."""

    chunk_sectors: int
    cow_sectors: int

    @cached_property
    def chunk_bytes(self) -> int:
        return self.chunk_sectors * SECTOR_SIZE

    @cached_property
    def cow_chunks(self) -> int:
        return self.cow_sectors // self.chunk_sectors

    @cached_property
    def entries_per_area(self) -> int:
        return self.chunk_bytes // ENTRY_SIZE

    @cached_property
    def stride(self) -> int:
        return self.entries_per_area + 1

    def area_location(self, area: int) -> int:
        return HEADER_CHUNKS + self.stride * area

    def is_metadata_chunk(self, chunk: int) -> bool:
        return chunk < HEADER_CHUNKS or chunk % self.stride == HEADER_CHUNKS

    def skip_metadata(self, next_free: int) -> int:
        """The kernel's skip_metadata(): a free pointer never rests on an area chunk."""
        return next_free + 1 if next_free % self.stride == HEADER_CHUNKS else next_free

    def check_size(self) -> None:
        if self.cow_chunks < MIN_COW_CHUNKS:
            raise CowFormatError(
                f"COW of {self.cow_sectors} sectors is smaller than three chunks of "
                f"{self.chunk_sectors} sectors",
                hint="a persistent store needs a header, a metadata area and a data chunk",
            )


@dataclass(frozen=True)
class Entry:
    """One exception: origin chunk ``old_chunk`` lives in COW chunk ``new_chunk``."""

    old_chunk: int
    new_chunk: int


def _as_le(values: array[int]) -> array[int]:
    if sys.byteorder == "big":
        values.byteswap()
    return values


def area_pairs(raw: bytes | bytearray | memoryview) -> tuple[array[int], array[int]]:
    """All ``epa`` slots of an area as (old, new) columns, decoded in one C-speed step."""
    words = _as_le(array("Q"))
    words.frombytes(raw)
    return words[0::2], words[1::2]


def live_count(news: array[int]) -> int:
    """insert_exceptions(): the list ends at the first entry whose new chunk is 0."""
    try:
        return news.index(0)
    except ValueError:
        return len(news)


def pack_entry(entry: Entry) -> bytes:
    return struct.pack("<QQ", entry.old_chunk, entry.new_chunk)


def pack_entries(olds: array[int], news: array[int]) -> bytes:
    words = array("Q", bytes(16 * len(olds)))
    words[0::2] = olds
    words[1::2] = news
    return _as_le(words).tobytes()


__all__ = [
    "DEFAULT_CHUNK_SECTORS",
    "DISK_VERSION",
    "ENTRY_SIZE",
    "HEADER_CHUNKS",
    "MIN_COW_CHUNKS",
    "SECTOR_SIZE",
    "SNAP_MAGIC",
    "Entry",
    "Geometry",
    "Header",
    "area_pairs",
    "check_chunk_sectors",
    "live_count",
    "pack_entries",
    "pack_entry",
]
