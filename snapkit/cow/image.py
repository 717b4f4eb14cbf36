"""Image files as the kernel would see them: opening a COW/origin pair, inspect and diff.

Every check that can refuse runs here, before any byte is written, so the tools that change
files (export, merge) either refuse cleanly or run to the end. Files are compared by
``(st_dev, st_ino)``, never by name, so a symlink or a second path to the same image is caught.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapkit.cow.device import FileDevice
from snapkit.cow.format import (
    DEFAULT_CHUNK_SECTORS,
    SECTOR_SIZE,
    SNAP_MAGIC,
    Geometry,
    Header,
    check_chunk_sectors,
)
from snapkit.cow.store import PersistentStore, Usage, scan_areas
from snapkit.errors import (
    CowFormatError,
    OperationError,
    RefusedError,
    SnapkitError,
    ValidationError,
)


def open_device(path: str, *, writable: bool = False) -> FileDevice:
    """Open an image or block device, turning OS errors into one-line refusals."""
    try:
        return FileDevice(path, writable=writable)
    except IsADirectoryError as exc:
        raise RefusedError(
            f"{path} is a directory, not an image or a block device",
            hint="name the image file or the device itself",
        ) from exc
    except OSError as exc:
        raise OperationError(f"cannot open {path}: {exc.strerror}") from exc


def load_store(
    cow: FileDevice, table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS
) -> PersistentStore:
    try:
        return PersistentStore.load(cow, table_chunk_sectors)
    except CowFormatError as exc:
        raise CowFormatError(f"{cow.path}: {exc.message}", hint=exc.hint) from exc


def file_identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def refuse_same_file(first: FileDevice, second: FileDevice) -> None:
    if file_identity(os.fstat(first.fd)) == file_identity(os.fstat(second.fd)):
        raise ValidationError(f"{first.path} and {second.path} are the same file")


def device_sectors(dev: FileDevice) -> int:
    """A loop device or dm device sees whole sectors only."""
    return dev.size // SECTOR_SIZE


def check_origin_fits(store: PersistentStore, origin: FileDevice) -> None:
    """Every exception must name a chunk that starts inside the origin."""
    if not store.olds:
        return
    top = max(store.olds)
    if top * store.geometry.chunk_sectors >= device_sectors(origin):
        raise CowFormatError(
            f"{origin.path} is smaller than the exceptions require: chunk {top} of "
            f"{store.geometry.chunk_sectors} sectors starts past its {device_sectors(origin)} "
            "sectors",
            hint="is this the origin that belongs to this COW?",
        )


@dataclass
class Pair:
    """An origin and its COW, loaded and checked against each other."""

    origin: FileDevice
    cow: FileDevice
    store: PersistentStore

    def close(self) -> None:
        self.origin.close()
        self.cow.close()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pair(
    origin_path: str,
    cow_path: str,
    *,
    writable: bool = False,
    table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
    need_valid: bool = True,
) -> Pair:
    origin = open_device(origin_path, writable=writable)
    try:
        cow = open_device(cow_path, writable=writable)
    except SnapkitError:
        origin.close()
        raise
    try:
        refuse_same_file(origin, cow)
        store = load_store(cow, table_chunk_sectors)
        if need_valid and not store.valid:
            raise RefusedError(
                f"{cow_path}: the snapshot is invalid (the kernel marked it so, usually because "
                "the COW overflowed); its data cannot be trusted"
            )
        check_origin_fits(store, origin)
    except BaseException:
        origin.close()
        cow.close()
        raise
    return Pair(origin, cow, store)


@dataclass(frozen=True)
class Inspection:
    """What ``cow inspect`` reports; ``status`` is the text ``dmsetup status`` would show."""

    valid: bool
    new: bool
    version: int
    chunk_sectors: int
    exceptions: int
    metadata_areas: int
    allocated_sectors: int
    total_sectors: int
    metadata_sectors: int
    status: str


def inspect(cow_path: str, table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS) -> Inspection:
    with open_device(cow_path) as cow:
        store = load_store(cow, table_chunk_sectors)
        usage = store.usage()
        exceptions, areas = store.exception_count, store.current_area + 1
        if store.is_new:
            areas = 0
        elif not store.valid:
            # The kernel reads nothing of an invalid store; count what is there anyway.
            try:
                found = scan_areas(cow, store.geometry)
            except CowFormatError:
                exceptions, areas = 0, 0
            else:
                exceptions, areas = len(found.olds), found.current_area + 1
                cs = store.geometry.chunk_sectors
                usage = Usage(found.next_free * cs, usage.total_sectors, (areas + 1) * cs)
        return Inspection(
            valid=store.valid,
            new=store.is_new,
            version=store.header.version,
            chunk_sectors=store.geometry.chunk_sectors,
            exceptions=exceptions,
            metadata_areas=areas,
            allocated_sectors=usage.allocated_sectors,
            total_sectors=usage.total_sectors,
            metadata_sectors=usage.metadata_sectors,
            status=usage.status if store.valid else "Invalid",
        )


@dataclass(frozen=True)
class Run:
    """A run of origin sectors whose snapshot content lives in the COW."""

    start_sector: int
    sectors: int


def diff(
    cow_path: str,
    origin_path: str | None = None,
    table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
) -> tuple[int, list[Run]]:
    """The chunks with an exception, coalesced; clipped to the origin's end when given."""
    with open_device(cow_path) as cow:
        store = load_store(cow, table_chunk_sectors)
        if not store.valid:
            raise RefusedError(f"{cow_path}: the snapshot is invalid; it has no usable exceptions")
        limit: int | None = None
        if origin_path is not None:
            with open_device(origin_path) as origin:
                check_origin_fits(store, origin)
                limit = device_sectors(origin)
        cs = store.geometry.chunk_sectors
        runs: list[Run] = []
        start = count = 0
        for old in sorted(store.olds):
            if count and old == start + count:
                count += 1
                continue
            if count:
                runs.append(Run(start * cs, count * cs))
            start, count = old, 1
        if count:
            runs.append(Run(start * cs, count * cs))
        if limit is not None and runs:
            last = runs[-1]
            runs[-1] = Run(last.start_sector, min(last.sectors, limit - last.start_sector))
        return cs, runs


__all__ = [
    "Inspection",
    "Pair",
    "Run",
    "check_origin_fits",
    "device_sectors",
    "diff",
    "file_identity",
    "format_cow",
    "inspect",
    "load_store",
    "open_device",
    "open_pair",
    "refuse_same_file",
]


def format_cow(cow_path: str, chunk_sectors: int, *, force: bool = False) -> None:
    """Prepare a COW as LVM does: zero the first chunk so the kernel sees magic 0, a new store.

    Nothing else is written: the kernel writes the header and zeroes area 0 itself when the
    snapshot is first activated.
    """
    with open_device(cow_path, writable=True) as cow:
        geometry = Geometry(check_chunk_sectors(chunk_sectors), device_sectors(cow))
        geometry.check_size()
        header = Header.unpack(cow.read(0, 16)) if cow.size >= 16 else None
        if header is not None and header.magic == SNAP_MAGIC and not force:
            raise RefusedError(
                f"{cow_path} already holds a snapshot store",
                hint="pass --force to discard it",
            )
        cow.write(0, bytes(geometry.chunk_bytes))
        cow.flush()
