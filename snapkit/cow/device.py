"""Block devices for the model: a file (streaming, never read whole) or memory (for tests).

The store and the model see only this interface, so the same kernel logic runs on a 1 GiB image
file and on a few kilobytes in a hypothesis test. Reads past the end come back short, as
``pread`` does; the callers decide whether that is a truncated store.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from typing import Protocol

BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t): a block device's size in bytes


class BlockDevice(Protocol):
    """What a dm target needs from the device under it."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def readinto(self, offset: int, buf: memoryview) -> int: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...


class MemDevice:
    """A device held in a bytearray of fixed size; writes past the end are a bug."""

    def __init__(self, size_or_data: int | bytes | bytearray) -> None:
        if isinstance(size_or_data, int):
            self.data = bytearray(size_or_data)
        else:
            self.data = bytearray(size_or_data)

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset + len(data) > len(self.data):
            raise ValueError(f"write past the end of a {len(self.data)}-byte device")
        self.data[offset : offset + len(data)] = data

    def flush(self) -> None:
        return None


def block_device_bytes(fd: int) -> int:
    """The kernel's size of an open block device: its inode's st_size is 0, so ask BLKGETSIZE64."""
    raw = fcntl.ioctl(fd, BLKGETSIZE64, bytes(8))
    size: int = struct.unpack("=Q", raw)[0]
    return size


def device_bytes(
    fd: int, st: os.stat_result, block_bytes: Callable[[int], int] = block_device_bytes
) -> int:
    """How many bytes a reader of ``fd`` sees: st_size for a file, the ioctl for a block device.

    ``block_bytes`` is a seam, so the choice is testable without a block device.
    """
    if stat.S_ISBLK(st.st_mode):
        return block_bytes(fd)
    return st.st_size


class FileDevice:
    """A device backed by an open file or block device; its size is fixed when opened, like a
    loop device's. A directory is refused here (IsADirectoryError), since a read-only open of one
    succeeds and would only fail at the first read."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        writable: bool = False,
        block_bytes: Callable[[int], int] = block_device_bytes,
    ) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.path)
            self._size = device_bytes(self.fd, st, block_bytes)
        except BaseException:
            os.close(self.fd)
            raise
        self.writable = writable

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        while length > 0:
            got = os.pread(self.fd, length, offset)
            if not got:
                break
            parts.append(got)
            offset += len(got)
            length -= len(got)
        return b"".join(parts)

    def readinto(self, offset: int, buf: memoryview) -> int:
        done = 0
        while done < len(buf):
            got = os.preadv(self.fd, [buf[done:]], offset + done)
            if got <= 0:
                break
            done += got
        return done

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset + len(data) > self._size:
            raise ValueError(f"write past the end of {self.path}")
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "BLKGETSIZE64",
    "BlockDevice",
    "FileDevice",
    "MemDevice",
    "block_device_bytes",
    "device_bytes",
]
