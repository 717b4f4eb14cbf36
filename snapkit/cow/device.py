"""Block devices for the model: a file (streaming, never read whole) or memory (for tests).

The store and the model see only this interface, so the same kernel logic runs on a 1 GiB image
file and on a few kilobytes in a hypothesis test. Reads past the end come back short, as
``pread`` does; the callers decide whether that is a truncated store.
"""

from __future__ import annotations

import os
from typing import Protocol


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


class FileDevice:
    """A device backed by an open file; its size is fixed when opened, like a loop device."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        self._size = os.fstat(self.fd).st_size
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


__all__ = ["BlockDevice", "FileDevice", "MemDevice"]
