"""The transient (``N``) exception store: the same allocation contract, nothing on disk.

dm-snap-transient.c counts its free pointer in sectors from chunk 0, with no header or
metadata, so it is lost on reload and can never be merged.
"""

from __future__ import annotations

from snapkit.cow.format import SECTOR_SIZE, Entry, check_chunk_sectors
from snapkit.cow.store import Usage


class TransientStore:
    """Allocation and usage only; ``commit_exception`` has nothing to persist."""

    def __init__(self, cow_size: int, chunk_sectors: int) -> None:
        self.chunk_sectors = check_chunk_sectors(chunk_sectors)
        self.cow_sectors = cow_size // SECTOR_SIZE
        self.next_free = 0  # in sectors, as the kernel keeps it
        self.valid = True

    def prepare_exception(self) -> int | None:
        if self.cow_sectors < self.next_free + self.chunk_sectors:
            return None
        new_chunk = self.next_free // self.chunk_sectors
        self.next_free += self.chunk_sectors
        return new_chunk

    def commit_exception(self, entry: Entry) -> bool:
        del entry
        return self.valid

    def invalidate(self) -> None:
        self.valid = False

    def usage(self) -> Usage:
        return Usage(self.next_free, self.cow_sectors, 0)


__all__ = ["TransientStore"]
