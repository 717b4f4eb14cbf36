"""Write the point-in-time image: the bytes a read of the whole snapshot device returns.

The image is the origin with every exception chunk replaced by its COW chunk, so each output
byte is copied exactly once, from a read-only mapping of the origin or of the COW, by
``pwritev`` calls that each write up to ``IOV_MAX`` pieces of one contiguous output range: a
piece of the origin between two exceptions, then an exception chunk, and so on. The old way,
one ``preadv`` per exception run into an 8 MiB buffer and then a write, made 100,000 syscalls
for 100,000 scattered chunks and copied every byte twice.

Per-exception Python work is kept to C-speed ``map`` calls: the exceptions are sorted by
origin chunk through a table (``sorted_exceptions``) and the pieces are built as slices in
bulk, a window of the image at a time, while a writer thread writes the window before. The
kernel only ever reads the mappings (Python never touches their bytes), so an input that
shrinks under the export is an ``EFAULT`` from ``pwritev``, an error, not a ``SIGBUS``.

What still costs more than ``cp`` (BENCHMARKS.md): the exception chunks are copied in origin
order, which is random order in the COW, 4 KiB at a time through a user mapping; on the
project's VM that copy runs several times slower than cp's in-kernel, in-order one.

Holes: into a regular file, only the origin's data extents (``SEEK_DATA``/``SEEK_HOLE``) and
the exception chunks are written, and ``ftruncate`` sets the size at the end, so a sparse
origin gives an equally sparse image. A device or a pipe gets every byte (a hole maps as
zeros).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import mmap
import os
import queue
import secrets
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, repeat
from operator import add, mul, sub

from snapkit.cow.format import DEFAULT_CHUNK_SECTORS, SECTOR_SIZE
from snapkit.cow.image import Pair, device_sectors, file_identity, open_pair
from snapkit.cow.store import PersistentStore
from snapkit.errors import OperationError, RefusedError, ValidationError

IOV_MAX = 1024  # Linux's limit on the pieces of one pwritev
BATCH_BYTES = 8 << 20  # at most this much per pwritev, so Ctrl-C and errors land early
WINDOW_BYTES = 8 * BATCH_BYTES  # the image is built and handed to the writer this much at a time

Piece = memoryview


@dataclass(frozen=True)
class ExportResult:
    size: int
    written: int  # bytes actually written; less than size when holes were skipped


DENSE_SORT_CHUNKS = 1 << 24  # origins of up to this many chunks are sorted by a table


def sorted_exceptions(
    store: PersistentStore, origin_chunks: int | None = None
) -> tuple[list[int], list[int]]:
    """(olds, news) sorted by origin chunk, in C-speed passes, as export needs them.

    With the origin's chunk count (every old chunk below it, as open_pair checks) and not too
    many chunks, a table indexed by origin chunk is filled and read back in order: three
    passes without one comparison, a few times faster than sorting 100,000 exceptions. A new
    chunk is never 0 (chunk 0 is the header), so 0 marks a chunk without an exception.
    Otherwise indexes are sorted by key and both columns gathered in that order.
    """
    olds, news = store.olds, store.news
    if origin_chunks is not None and origin_chunks <= max(DENSE_SORT_CHUNKS, 4 * len(olds)):
        table = [0] * origin_chunks
        deque(map(table.__setitem__, olds, news), maxlen=0)
        return list(compress(range(origin_chunks), table)), list(filter(None, table))
    order = sorted(range(len(olds)), key=olds.__getitem__)
    return list(map(olds.__getitem__, order)), list(map(news.__getitem__, order))


def data_zones(fd: int, size: int) -> list[tuple[int, int, bool]]:
    """[start, end, has_data) zones covering [0, size), from SEEK_DATA/SEEK_HOLE; a file
    system without them is all data."""
    zones: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < size:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # no SEEK_DATA here: the rest counts as data
                return [*zones, (pos, size, True)]
            data = size  # ENXIO: only a hole from pos to the end
        if data > pos:
            zones.append((pos, data, False))
        if data >= size:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        zones.append((data, hole, True))
        pos = hole
    return zones


class _Image:
    """Builds the pieces of the image, zone by zone, from the two mappings."""

    def __init__(
        self, origin: memoryview, cow: memoryview, olds: list[int], news: list[int], csb: int
    ) -> None:
        self.origin, self.cow, self.csb = origin, cow, csb
        self.starts = list(map(mul, olds, repeat(csb)))
        self.cow_starts = list(map(mul, news, repeat(csb)))

    def _chunks(self, z0: int, z1: int) -> tuple[list[int], list[int], list[int]]:
        """Output start, output end and COW start of each exception chunk overlapping
        [z0, z1), clipped to it; only the first and the last can stick out."""
        csb = self.csb
        lo = bisect.bisect_right(self.starts, z0 - csb)
        hi = bisect.bisect_left(self.starts, z1)
        starts = self.starts[lo:hi]
        cstarts = self.cow_starts[lo:hi]
        ends = list(map(add, starts, repeat(csb)))
        if starts:
            if starts[0] < z0:
                cstarts[0] += z0 - starts[0]
                starts[0] = z0
            ends[-1] = min(ends[-1], z1)
        return starts, ends, cstarts

    def _cow_pieces(self, starts: list[int], ends: list[int], cstarts: list[int]) -> list[Piece]:
        cow_ends = map(add, cstarts, map(sub, ends, starts))
        return list(map(self.cow.__getitem__, map(slice, cstarts, cow_ends)))

    def data_zone(self, z0: int, z1: int) -> tuple[int, list[Piece]]:
        """All of [z0, z1): origin pieces between the exceptions, interleaved with them (an
        origin piece may be empty; an empty iovec costs nothing)."""
        starts, ends, cstarts = self._chunks(z0, z1)
        gap_starts = chain((z0,), ends)
        gaps = map(self.origin.__getitem__, map(slice, gap_starts, chain(starts, (z1,))))
        chunks = self._cow_pieces(starts, ends, cstarts)
        pieces = list(
            chain.from_iterable(zip(gaps, chain(chunks, (self.origin[0:0],)), strict=True))
        )
        return z0, pieces

    def hole_zone(self, z0: int, z1: int) -> list[tuple[int, list[Piece]]]:
        """Only the exception chunks in a hole of the origin, as runs of adjacent chunks."""
        starts, ends, cstarts = self._chunks(z0, z1)
        chunks = self._cow_pieces(starts, ends, cstarts)
        runs: list[tuple[int, list[Piece]]] = []
        run_end = -1
        for start, end, piece in zip(starts, ends, chunks, strict=True):
            if start != run_end:
                runs.append((start, []))
            runs[-1][1].append(piece)
            run_end = end
        return runs


def _write_views(fd: int, pieces: Sequence[Piece], offset: int | None) -> int:
    """One pwritev (or writev at ``offset`` None), finished if the kernel wrote less."""
    total = sum(map(len, pieces))
    done = os.writev(fd, pieces) if offset is None else os.pwritev(fd, pieces, offset)
    if done < total:
        rest: list[Piece] = []
        skip = done
        for piece in pieces:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            rest.append(piece[skip:])
            skip = 0
        left = memoryview(b"".join(rest))
        while left:
            n = os.write(fd, left) if offset is None else os.pwrite(fd, left, offset + done)
            left = left[n:]
            done += n
    return done


def _write_run(fd: int, start: int, pieces: list[Piece], sequential: bool) -> int:
    """Write one contiguous run in batches of at most IOV_MAX pieces and about BATCH_BYTES."""
    ends = list(accumulate(map(len, pieces)))
    written = 0
    i = 0
    while i < len(pieces):
        base = ends[i - 1] if i else 0
        j = min(i + IOV_MAX, bisect.bisect_right(ends, base + BATCH_BYTES, i))
        j = max(j, i + 1)
        written += _write_views(fd, pieces[i:j], None if sequential else start + base)
        i = j
    return written


MADV_POPULATE_READ = 22  # Linux 5.14; Python 3.11's mmap module does not name it


def _map(fd: int, length: int) -> mmap.mmap:
    try:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except (OSError, ValueError) as exc:
        raise OperationError(f"export failed: cannot map an input: {exc}") from exc


def _populate(mapped: mmap.mmap, start: int, end: int) -> None:
    """Map [start, end) of an input before pwritev reads it. A page the kernel must fault in
    during the copy makes the copy stop short; the write then zero-fills the rest of its new
    page-cache folio and starts again, which more than doubled the cost of a write. Reading the
    pages in here (MADV_POPULATE_READ) is one pass; an older kernel just does without it."""
    start -= start % mmap.PAGESIZE
    end = min(end, len(mapped))
    if end > start:
        with contextlib.suppress(OSError):
            mapped.madvise(MADV_POPULATE_READ, start, end - start)


class _Writer(threading.Thread):
    """Writes the runs the export builds, in order, so that building the pieces of window
    N+1 (Python, under the GIL) overlaps writing window N (pwritev, without it)."""

    def __init__(self, fd: int, sequential: bool) -> None:
        super().__init__(name="snapkit-export-writer", daemon=True)
        self.fd, self.sequential = fd, sequential
        self.runs: queue.Queue[list[tuple[int, list[Piece]]] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.stop = False
        self.written = 0

    def run(self) -> None:
        while (batch := self.runs.get()) is not None:
            if self.error is not None or self.stop:
                continue  # drain, so the producer never blocks on a dead writer
            try:
                for start, pieces in batch:
                    self.written += _write_run(self.fd, start, pieces, self.sequential)
            except BaseException as exc:  # handed to the main thread, which raises it
                self.error = exc


def export(
    origin_path: str,
    cow_path: str,
    output: str,
    table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
    *,
    force: bool = False,
    fsync: bool = True,
) -> ExportResult:
    """Refuses (and writes nothing) for an invalid snapshot or an output that is an input.

    A file output is written beside itself under a temporary name and renamed over ``output``
    only once it is complete (and fsync'd, unless ``fsync`` is false), so a failure part way (a
    full disk, a read error, Ctrl-C) leaves whatever was at ``output`` byte for byte as it was.
    Replacing an existing file needs ``force``. An existing device output (a block device,
    /dev/null) cannot be renamed over: it is written in place, and also only with ``force``.

    ``fsync=False`` leaves the image in the page cache, as ``cp`` does: a crash soon after may
    lose it (the rename still never exposes a partial file to a running system). The default
    stays durable because an image that may vanish on a crash is not much of an export.
    """
    with open_pair(origin_path, cow_path, table_chunk_sectors=table_chunk_sectors) as pair:
        inputs = {file_identity(os.fstat(pair.origin.fd)), file_identity(os.fstat(pair.cow.fd))}
        size = device_sectors(pair.origin) * SECTOR_SIZE
        if output == "-":
            out_fd = sys.stdout.fileno()
            if file_identity(os.fstat(out_fd)) in inputs:
                raise ValidationError("standard output is the origin or the COW itself")
            if os.isatty(out_fd):
                raise ValidationError(
                    "refusing to write an image to a terminal", hint="redirect it to a file"
                )
            return _guarded(lambda: _stream(pair, out_fd, size, sparse=False, sequential=True))
        target = os.path.realpath(output)  # through a symlink: replace the file it names
        try:
            existing: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if file_identity(existing) in inputs:
                raise ValidationError(f"output {output} is the origin or the COW itself")
            if stat.S_ISDIR(existing.st_mode):
                raise RefusedError(
                    f"output {output} is a directory", hint="name the image file to write"
                )
            if not force:
                raise RefusedError(f"output {output} exists", hint="pass --force to replace it")
            if not stat.S_ISREG(existing.st_mode):
                return _export_in_place(pair, output, size)
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else None
        return _export_beside(pair, output, target, size, mode, fsync=fsync)


def _guarded(run: Callable[[], ExportResult]) -> ExportResult:
    """An OS error while streaming becomes one OperationError line."""
    try:
        return run()
    except OSError as exc:
        raise OperationError(f"export failed: {exc.strerror or exc}") from exc


def _export_in_place(pair: Pair, output: str, size: int) -> ExportResult:
    """A device output: written where it is, from the start, every byte (no holes to skip)."""
    try:
        out_fd = os.open(output, os.O_WRONLY)
    except OSError as exc:
        raise OperationError(f"cannot open {output}: {exc.strerror}") from exc
    try:
        return _guarded(lambda: _stream(pair, out_fd, size, sparse=False, sequential=False))
    finally:
        os.close(out_fd)


def _export_beside(
    pair: Pair, output: str, target: str, size: int, mode: int | None, *, fsync: bool
) -> ExportResult:
    """Write a temporary file in ``target``'s folder, then rename it over ``target``; a file
    replaced keeps its permission bits, as it did when it was truncated and rewritten."""
    folder, name = os.path.split(target)
    while True:
        temp = os.path.join(folder, f".{name}.snapkit-{secrets.token_hex(4)}.tmp")
        try:
            out_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise OperationError(f"cannot create {output}: {exc.strerror}") from exc

    def write_and_rename() -> ExportResult:
        try:
            if mode is not None:
                os.fchmod(out_fd, mode)
            result = _stream(pair, out_fd, size, sparse=True, sequential=False, fsync=fsync)
        finally:
            os.close(out_fd)
        os.replace(temp, target)
        return result

    try:
        return _guarded(write_and_rename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _stream(
    pair: Pair, out_fd: int, size: int, *, sparse: bool, sequential: bool, fsync: bool = False
) -> ExportResult:
    """Holes are skipped only in a regular file: pwritev past the end leaves a hole, and
    ftruncate at the end makes the size right when the image ends in one. (A write into a
    file already truncated to its size, rather than past its end, cost a fifth more.)"""
    written = 0
    if size:
        store = pair.store
        origin_map = _map(pair.origin.fd, size)
        # Not populated: its chunks are read in random order, and populating it first (or
        # reading it into a buffer of huge pages) measured no faster, for more memory.
        cow_map = _map(pair.cow.fd, pair.cow.size)
        csb = store.geometry.chunk_bytes
        olds, news = sorted_exceptions(store, -(-size // csb))
        image = _Image(
            memoryview(origin_map), memoryview(cow_map), olds, news, store.geometry.chunk_bytes
        )
        zones = data_zones(pair.origin.fd, size) if sparse else [(0, size, True)]
        writer = _Writer(out_fd, sequential)
        writer.start()
        try:
            for batch in _windows(image, zones, origin_map):
                if writer.error is not None:
                    break
                writer.runs.put(batch)
        except BaseException:
            writer.stop = True
            raise
        finally:
            writer.runs.put(None)
            writer.join()
        if writer.error is not None:
            raise writer.error
        written = writer.written
    if sparse:
        os.ftruncate(out_fd, size)
    if fsync:
        os.fsync(out_fd)  # an image that may vanish on a crash is not an export
    return ExportResult(size, written)


def _windows(
    image: _Image, zones: list[tuple[int, int, bool]], origin_map: mmap.mmap
) -> Iterator[list[tuple[int, list[Piece]]]]:
    """The runs to write, a window of at most WINDOW_BYTES of the image at a time, so the
    pieces held at once stay bounded for any size of origin."""
    for z0, z1, has_data in zones:
        for lo in range(z0, z1, WINDOW_BYTES):
            hi = min(lo + WINDOW_BYTES, z1)
            if has_data:
                _populate(origin_map, lo, hi)
                yield [image.data_zone(lo, hi)]
            else:
                yield image.hole_zone(lo, hi)


__all__ = ["ExportResult", "data_zones", "export", "sorted_exceptions"]
