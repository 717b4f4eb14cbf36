"""Write the point-in-time image: the bytes a read of the whole snapshot device returns.

One sequential pass over the origin in large blocks: each block is read once (or skipped when
the origin has a hole there), the exception chunks that fall in it are read from the COW
straight into the same buffer, and the block is written once. Blocks that end up all zero are
not written to a regular-file output, so a sparse origin gives a sparse image.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from snapkit.cow.format import DEFAULT_CHUNK_SECTORS, SECTOR_SIZE
from snapkit.cow.image import Pair, device_sectors, file_identity, open_pair
from snapkit.cow.store import PersistentStore
from snapkit.errors import OperationError, RefusedError, ValidationError

BLOCK_BYTES = 8 << 20
SEGMENT_BYTES = 64 << 10  # hole granularity where the origin is partly sparse


@dataclass(frozen=True)
class ExportResult:
    size: int
    written: int  # bytes actually written; less than size when holes were skipped


def exception_runs(store: PersistentStore) -> Iterator[tuple[int, int, int]]:
    """(old, new, count) runs, by origin chunk, where both sides are consecutive."""
    olds, news = store.olds, store.news
    order = sorted(range(len(olds)), key=olds.__getitem__)
    run_old = run_new = count = 0
    for i in order:
        old, new = olds[i], news[i]
        if count and old == run_old + count and new == run_new + count:
            count += 1
            continue
        if count:
            yield run_old, run_new, count
        run_old, run_new, count = old, new, 1
    if count:
        yield run_old, run_new, count


class _HoleMap:
    """Where the origin has data, with few lseek calls; a file without SEEK_HOLE is all data."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.data_at = self.hole_at = -1  # the data extent [data_at, hole_at) seen last
        try:
            os.lseek(fd, 0, os.SEEK_HOLE)
        except OSError:
            self.data_at, self.hole_at = 0, size

    def _extent_from(self, start: int) -> None:
        try:
            self.data_at = os.lseek(self.fd, start, os.SEEK_DATA)
            self.hole_at = os.lseek(self.fd, self.data_at, os.SEEK_HOLE)
        except OSError:  # ENXIO: nothing but a hole from here to the end
            self.data_at = self.hole_at = self.size

    def coverage(self, start: int, end: int) -> str:
        """'none', 'full' or 'partial': how much of [start, end) holds data."""
        if not self.data_at <= start < self.hole_at and not start < self.data_at:
            self._extent_from(start)
        if self.data_at >= end:
            return "none"
        return "full" if self.data_at <= start and self.hole_at >= end else "partial"


def _is_zero(buf: bytearray, length: int, zero: bytes) -> bool:
    """bytearray == bytes is a memcmp; a memoryview comparison would go element by element."""
    if length == len(buf):
        return buf == zero
    return buf[:length] == zero[:length]


def _write_nonzero(fd: int, buf: bytearray, length: int, pos: int, zero: bytes) -> int:
    """Write only the segments that hold data, so holes in the origin stay holes."""
    written = 0
    view = memoryview(buf)
    for seg in range(0, length, SEGMENT_BYTES):
        stop = min(seg + SEGMENT_BYTES, length)
        if buf[seg:stop] != zero[: stop - seg]:
            _write_all(fd, view[seg:stop], pos + seg)
            written += stop - seg
    return written


def _write_all(fd: int, view: memoryview, offset: int | None) -> None:
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def export(
    origin_path: str,
    cow_path: str,
    output: str,
    table_chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
    *,
    force: bool = False,
) -> ExportResult:
    """Refuses (and writes nothing) for an invalid snapshot or an output that is an input.

    A file output is written beside itself under a temporary name and renamed over ``output``
    only once it is complete and fsync'd, so a failure part way (a full disk, a read error,
    Ctrl-C) leaves whatever was at ``output`` byte for byte as it was. Replacing an existing
    file needs ``force``. An existing device output (a block device, /dev/null) cannot be
    renamed over: it is written in place, and also only with ``force``.
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
        return _export_beside(pair, output, target, size, mode)


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
    pair: Pair, output: str, target: str, size: int, mode: int | None
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
            result = _stream(pair, out_fd, size, sparse=True, sequential=False)
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


def _stream(pair: Pair, out_fd: int, size: int, *, sparse: bool, sequential: bool) -> ExportResult:
    """Holes are skipped only in a regular file, which ftruncate has made read as zeros."""
    origin_fd, cow_fd, store = pair.origin.fd, pair.cow.fd, pair.store
    csb = store.geometry.chunk_bytes
    block = max(BLOCK_BYTES, csb)
    if sparse:
        os.ftruncate(out_fd, size)
    buf = bytearray(block)
    view = memoryview(buf)
    zero = bytes(block)
    holes = _HoleMap(origin_fd, size)
    runs = exception_runs(store)
    pending = next(runs, None)
    written = 0
    buf_is_zero = True
    for pos in range(0, size, block):
        end = min(pos + block, size)
        length = end - pos
        coverage = holes.coverage(pos, end)
        if coverage != "none":
            got = os.preadv(origin_fd, [view[:length]], pos)
            if got < length:
                view[got:length] = zero[: length - got]
            buf_is_zero = False
        elif not buf_is_zero:
            view[:length] = zero[:length]
            buf_is_zero = True
        while pending is not None and pending[0] * csb < end:
            old, new, count = pending
            first = max(old * csb, pos)
            last = min((old + count) * csb, end)
            at = new * csb + (first - old * csb)
            got = os.preadv(cow_fd, [view[first - pos : last - pos]], at)
            if got < last - first:
                view[first - pos + got : last - pos] = zero[: last - first - got]
            buf_is_zero = False
            if (old + count) * csb > end:
                break  # the rest of this run belongs to the next block
            pending = next(runs, None)
        if not sparse:
            _write_all(out_fd, view[:length], None if sequential else pos)
            written += length
        elif coverage == "full" or buf_is_zero:
            if not buf_is_zero and not _is_zero(buf, length, zero):
                _write_all(out_fd, view[:length], pos)
                written += length
        else:
            written += _write_nonzero(out_fd, buf, length, pos, zero)
    if sparse:
        os.fsync(out_fd)  # an image that may vanish on a crash is not an export
    return ExportResult(size, written)


__all__ = ["ExportResult", "exception_runs", "export"]
