"""Write the point-in-time image: the bytes a read of the whole snapshot device returns.

The image is the origin with every exception chunk replaced by its COW chunk, so each output
byte is copied exactly once, from a mapping of the origin or of the COW, by ``pwritev``
calls that each write up to ``IOV_MAX`` pieces of one contiguous output range: a piece of the
origin between two exceptions, then an exception chunk, and so on. The iovecs are (address,
length) pairs in an ``array`` handed to libc through ctypes, not memoryview slices: one
Python object per piece cost a third of the export's CPU. The old way, one ``preadv`` per
exception run into an 8 MiB buffer and then a write, made 100,000 syscalls for 100,000
scattered chunks and copied every byte twice.

Per-exception Python work is kept to C-speed ``map`` calls: the exceptions are sorted by
origin chunk through a table (``sorted_exceptions``) and the iovec tables are built in bulk,
a window of the image at a time, while a writer thread writes the window before. The kernel
only ever reads the mappings (Python never touches their bytes, but for the rest of a short
write), so an input that shrinks under the export is an ``EFAULT`` from ``pwritev``, an
error, not a ``SIGBUS``.

What still costs more than ``cp`` (BENCHMARKS.md): the kernel's copy from user mappings is
slower than cp's in-kernel one. A huge-page buffer filled by ``preadv`` in COW order measured
slower still: fresh memory is dear on the project's VM.

Holes: into a regular file, only the origin's data extents (``SEEK_DATA``/``SEEK_HOLE``) and
the exception chunks are written, and ``ftruncate`` sets the size at the end, so a sparse
origin gives an equally sparse image. A device or a pipe gets every byte (a hole maps as
zeros).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import mmap
import os
import queue
import secrets
import stat
import sys
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, compress, pairwise, repeat
from operator import add, mul, sub

from snapkit.cow.format import DEFAULT_CHUNK_SECTORS, SECTOR_SIZE
from snapkit.cow.image import Pair, device_sectors, file_identity, open_pair
from snapkit.cow.store import PersistentStore
from snapkit.errors import OperationError, RefusedError, ValidationError

IOV_MAX = 1024  # Linux's limit on the pieces of one pwritev
BATCH_BYTES = 8 << 20  # at most this much per pwritev, so Ctrl-C and errors land early
WINDOW_BYTES = 8 * BATCH_BYTES  # the image is built and handed to the writer this much at a time


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
    """Builds the iovec tables of the image, zone by zone, from the addresses of the two
    mappings: plain integers made by C-speed ``map`` passes, because a memoryview slice per
    piece (230,000 of them for the benchmark) cost more CPU than the kernel's copy of the
    bytes they name."""

    def __init__(
        self, origin_addr: int, cow_addr: int, olds: list[int], news: list[int], csb: int
    ) -> None:
        self.origin_addr, self.csb = origin_addr, csb
        self.starts = list(map(mul, olds, repeat(csb)))
        self.cow_addrs = list(map(add, map(mul, news, repeat(csb)), repeat(cow_addr)))

    def _chunks(self, z0: int, z1: int) -> tuple[list[int], list[int], list[int]]:
        """Output start, output end and COW address of each exception chunk overlapping
        [z0, z1), clipped to it; only the first and the last can stick out."""
        csb = self.csb
        lo = bisect.bisect_right(self.starts, z0 - csb)
        hi = bisect.bisect_left(self.starts, z1)
        starts = self.starts[lo:hi]
        addrs = self.cow_addrs[lo:hi]
        ends = list(map(add, starts, repeat(csb)))
        if starts:
            if starts[0] < z0:
                addrs[0] += z0 - starts[0]
                starts[0] = z0
            ends[-1] = min(ends[-1], z1)
        return starts, ends, addrs

    def data_zone(self, z0: int, z1: int) -> list[tuple[int, Views]]:
        """All of [z0, z1): origin pieces between the exceptions, interleaved with them (an
        origin piece may be empty; an empty iovec costs nothing)."""
        starts, ends, addrs = self._chunks(z0, z1)
        gap_starts = [z0, *ends]
        count = 2 * len(starts) + 1
        bases, lens = [0] * count, [0] * count
        bases[0::2] = map(add, gap_starts, repeat(self.origin_addr))
        bases[1::2] = addrs
        lens[0::2] = map(sub, chain(starts, (z1,)), gap_starts)
        lens[1::2] = map(sub, ends, starts)
        return _batches(z0, bases, lens)

    def hole_zone(self, z0: int, z1: int) -> list[tuple[int, Views]]:
        """Only the exception chunks in a hole of the origin, as runs of adjacent chunks."""
        starts, ends, addrs = self._chunks(z0, z1)
        lens = list(map(sub, ends, starts))
        cuts = [i for i in range(1, len(starts)) if starts[i] != ends[i - 1]]
        batches: list[tuple[int, Views]] = []
        for a, b in pairwise([0, *cuts, len(starts)]):
            if b > a:
                batches += _batches(starts[a], addrs[a:b], lens[a:b])
        return batches


@dataclass(frozen=True)
class Views:
    """``count`` iovecs from entry ``first`` of ``table`` ((address, length) pairs): the
    pieces of one contiguous output range of ``size`` bytes, for one pwritev."""

    table: array[int]
    first: int
    count: int
    size: int


def _batches(offset: int, bases: list[int], lens: list[int]) -> list[tuple[int, Views]]:
    """The pieces of [offset, offset + sum(lens)) cut into pwritev calls of at most IOV_MAX
    pieces and about BATCH_BYTES, each with its output offset."""
    pairs = [0] * (2 * len(bases))
    pairs[0::2], pairs[1::2] = bases, lens
    table = array("Q", pairs)
    ends = list(accumulate(lens))
    batches: list[tuple[int, Views]] = []
    i = 0
    while i < len(lens):
        base = ends[i - 1] if i else 0
        j = max(i + 1, min(i + IOV_MAX, bisect.bisect_right(ends, base + BATCH_BYTES, i)))
        batches.append((offset + base, Views(table, i, j - i, ends[j - 1] - base)))
        i = j
    return batches


_libc = ctypes.CDLL(None, use_errno=True)
_pwritev = _libc.pwritev
_pwritev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
_pwritev.restype = ctypes.c_ssize_t
_writev = _libc.writev
_writev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_writev.restype = ctypes.c_ssize_t


def _write_views(fd: int, views: Views, offset: int | None) -> int:
    """One pwritev (or writev at ``offset`` None) through libc, finished if the kernel wrote
    less. ctypes releases the GIL for the call, as os.pwritev does."""
    iov = views.table.buffer_info()[0] + 16 * views.first
    while True:
        done: int
        if offset is None:
            done = _writev(fd, iov, views.count)
        else:
            done = _pwritev(fd, iov, views.count, offset)
        if done >= 0:
            break
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))
    if done < views.size:  # rare (a signal, a full disk): the rest as bytes, written plainly
        # (read here by Python: an input cut short exactly now would be a SIGBUS, not EFAULT)
        pairs = views.table[2 * views.first : 2 * (views.first + views.count)]
        rest: list[bytes] = []
        skip = done
        for address, length in zip(pairs[0::2], pairs[1::2], strict=True):
            if skip < length:
                rest.append(ctypes.string_at(address + skip, length - skip))
            skip = max(0, skip - length)
        left = memoryview(b"".join(rest))
        while left:
            n = os.write(fd, left) if offset is None else os.pwrite(fd, left, offset + done)
            left = left[n:]
            done += n
    return done


MADV_POPULATE_READ = 22  # Linux 5.14; Python 3.11's mmap module does not name it


def _map(fd: int, length: int) -> mmap.mmap:
    """A private mapping, writable only so that ctypes can take its address (``from_buffer``
    wants a writable buffer); nothing writes to it, so every page stays the page cache's."""
    try:
        return mmap.mmap(fd, length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
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
    """Writes the batches the export builds, in order, so that building the tables of window
    N+1 (Python, under the GIL) overlaps writing window N (pwritev, without it)."""

    def __init__(self, fd: int, sequential: bool) -> None:
        super().__init__(name="snapkit-export-writer", daemon=True)
        self.fd, self.sequential = fd, sequential
        self.runs: queue.Queue[list[tuple[int, Views]] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.stop = False
        self.written = 0

    def run(self) -> None:
        while (batch := self.runs.get()) is not None:
            if self.error is not None or self.stop:
                continue  # drain, so the producer never blocks on a dead writer
            try:
                for start, views in batch:
                    offset = None if self.sequential else start
                    self.written += _write_views(self.fd, views, offset)
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
        # The addresses the iovecs name stay valid while these two hold the mappings open:
        # they are released only after the writer has stopped.
        origin_at = ctypes.c_char.from_buffer(origin_map)
        cow_at = ctypes.c_char.from_buffer(cow_map)
        csb = store.geometry.chunk_bytes
        olds, news = sorted_exceptions(store, -(-size // csb))
        image = _Image(ctypes.addressof(origin_at), ctypes.addressof(cow_at), olds, news, csb)
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
            del origin_at, cow_at
            origin_map.close()
            cow_map.close()
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
) -> Iterator[list[tuple[int, Views]]]:
    """The batches to write, a window of at most WINDOW_BYTES of the image at a time, so the
    tables held at once stay bounded for any size of origin."""
    for z0, z1, has_data in zones:
        for lo in range(z0, z1, WINDOW_BYTES):
            hi = min(lo + WINDOW_BYTES, z1)
            if has_data:
                _populate(origin_map, lo, hi)
                yield image.data_zone(lo, hi)
            else:
                yield image.hole_zone(lo, hi)


__all__ = ["ExportResult", "data_zones", "export", "sorted_exceptions"]
