"""The bytes of the device-mapper ioctl interface: pure packing and unpacking, no syscalls.

Layouts are from ``include/uapi/linux/dm-ioctl.h`` and the kernel's reading of them in
``drivers/md/dm-ioctl.c``:

* every call passes one buffer that starts with ``struct dm_ioctl`` (312 bytes, native
  endian); ``data_size`` is the whole buffer, ``data_start`` where the payload begins;
* ``DM_TABLE_LOAD`` reads ``dm_target_spec`` records (40 bytes, then a NUL-terminated parameter
  string padded to 8 bytes) and follows ``next`` *relative to the current spec*;
* ``DM_TABLE_STATUS`` writes the same records but its ``next`` is *relative to the first spec*
  (``retrieve_status``) — the two directions differ, which is easy to get wrong;
* ``DM_LIST_DEVICES`` writes ``dm_name_list`` records (``u64 dev``, ``u32 next`` relative to
  the current record, the name at offset 12); newer kernels append fields after the name;
* when the buffer is too small the kernel sets ``DM_BUFFER_FULL_FLAG`` and the caller retries
  with a larger one;
* ``dev`` is the kernel's ``huge_encode_dev``: ``minor & 0xff | major << 8 | (minor & ~0xff)
  << 12``.

Keeping this pure lets the tests check every byte without a kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from snapkit.errors import FormatError, ValidationError

HEADER = struct.Struct("=3I3Ii3IQ128s129s7s")
TARGET_SPEC = struct.Struct("=QQiI16s")
NAME_LIST = struct.Struct("=QI")  # the name follows at offset 12
TARGET_MSG = struct.Struct("=Q")
assert HEADER.size == 312 and TARGET_SPEC.size == 40

VERSION = (4, 0, 0)  # the oldest v4 we need; the kernel answers with its own
DEFAULT_BUFFER = 16 * 1024  # what libdevmapper starts with
NAME_LEN = 128
UUID_LEN = 129
TYPE_LEN = 16
_ALIGN = 8


class Cmd(IntEnum):
    VERSION = 0
    REMOVE_ALL = 1
    LIST_DEVICES = 2
    DEV_CREATE = 3
    DEV_REMOVE = 4
    DEV_RENAME = 5
    DEV_SUSPEND = 6
    DEV_STATUS = 7
    DEV_WAIT = 8
    TABLE_LOAD = 9
    TABLE_CLEAR = 10
    TABLE_DEPS = 11
    TABLE_STATUS = 12
    LIST_VERSIONS = 13
    TARGET_MSG = 14

    @property
    def request(self) -> int:
        """``_IOWR(0xfd, nr, struct dm_ioctl)``."""
        return (3 << 30) | (HEADER.size << 16) | (0xFD << 8) | self.value


class Flag(IntFlag):
    READONLY = 1 << 0
    SUSPEND = 1 << 1
    PERSISTENT_DEV = 1 << 3
    STATUS_TABLE = 1 << 4
    ACTIVE_PRESENT = 1 << 5
    INACTIVE_PRESENT = 1 << 6
    BUFFER_FULL = 1 << 8
    SKIP_LOCKFS = 1 << 10
    NOFLUSH = 1 << 11
    QUERY_INACTIVE_TABLE = 1 << 12
    UEVENT_GENERATED = 1 << 13
    DATA_OUT = 1 << 16


NO_FLAGS = Flag(0)


@dataclass(frozen=True)
class Header:
    """``struct dm_ioctl`` without its trailing padding bytes."""

    version: tuple[int, int, int] = VERSION
    data_size: int = HEADER.size
    data_start: int = HEADER.size
    target_count: int = 0
    open_count: int = 0
    flags: Flag = NO_FLAGS
    event_nr: int = 0
    dev: int = 0
    name: str = ""
    uuid: str = ""


@dataclass(frozen=True)
class TargetSpec:
    """One ``dm_target_spec`` and its parameter (or status) string."""

    start: int
    length: int
    type_name: str
    params: str


def encode_dev(major: int, minor: int) -> int:
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_dev(dev: int) -> tuple[int, int]:
    dev &= 0xFFFFFFFF
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def _cstr(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) >= size or b"\0" in raw:
        raise ValidationError(f"{what} {text!r} does not fit in {size - 1} bytes")
    return raw


def _read_cstr(buf: bytes | bytearray, offset: int, end: int) -> str:
    stop = buf.find(b"\0", offset, end)
    if stop < 0:
        raise FormatError(f"unterminated string at offset {offset} of a dm ioctl reply")
    return bytes(buf[offset:stop]).decode("utf-8", "surrogateescape")


def pack_header(h: Header) -> bytes:
    return HEADER.pack(
        *h.version,
        h.data_size,
        h.data_start,
        h.target_count,
        h.open_count,
        int(h.flags),
        h.event_nr,
        0,
        h.dev,
        _cstr(h.name, NAME_LEN, "dm name"),
        _cstr(h.uuid, UUID_LEN, "dm uuid"),
        b"",
    )


def unpack_header(buf: bytes | bytearray) -> Header:
    if len(buf) < HEADER.size:
        raise FormatError(f"a dm ioctl buffer is {len(buf)} bytes, shorter than the header")
    v0, v1, v2, size, start, count, open_count, flags, event_nr, _pad, dev, name, uuid, _ = (
        HEADER.unpack_from(buf)
    )
    return Header(
        (v0, v1, v2),
        size,
        start,
        count,
        open_count,
        Flag(flags),
        event_nr,
        dev,
        _read_cstr(name, 0, NAME_LEN),
        _read_cstr(uuid, 0, UUID_LEN),
    )


def build(header: Header, payload: bytes = b"", *, size: int = DEFAULT_BUFFER) -> bytearray:
    """A request buffer: ``header`` (its data_size/data_start filled in) then ``payload``."""
    total = _align(max(size, HEADER.size + len(payload)))
    fixed = Header(
        header.version,
        total,
        HEADER.size,
        header.target_count,
        0,
        header.flags,
        header.event_nr,
        header.dev,
        header.name,
        header.uuid,
    )
    buf = bytearray(total)
    buf[: HEADER.size] = pack_header(fixed)
    buf[HEADER.size : HEADER.size + len(payload)] = payload
    return buf


def pack_targets(specs: list[TargetSpec]) -> bytes:
    """``DM_TABLE_LOAD`` payload; each ``next`` counts from the spec it is in."""
    out = bytearray()
    for spec in specs:
        params = _cstr(spec.params, 1 << 20, "target parameters") + b"\0"
        params += b"\0" * (_align(len(params)) - len(params))
        kind = _cstr(spec.type_name, TYPE_LEN, "target type")
        next_offset = TARGET_SPEC.size + len(params)
        out += TARGET_SPEC.pack(spec.start, spec.length, 0, next_offset, kind)
        out += params
    return bytes(out)


def unpack_targets(buf: bytes | bytearray) -> tuple[TargetSpec, ...]:
    """The specs of a ``DM_TABLE_STATUS`` reply; each ``next`` counts from the first spec."""
    header = unpack_header(buf)
    end = min(header.data_size, len(buf))
    base = offset = header.data_start
    specs = []
    for _ in range(header.target_count):
        if offset + TARGET_SPEC.size > end:
            raise FormatError("a dm table reply ends inside a target spec")
        start, length, _status, next_offset, kind = TARGET_SPEC.unpack_from(buf, offset)
        params = _read_cstr(buf, offset + TARGET_SPEC.size, end)
        specs.append(TargetSpec(start, length, _read_cstr(kind, 0, TYPE_LEN), params))
        offset = base + next_offset
    return tuple(specs)


def unpack_names(buf: bytes | bytearray) -> tuple[tuple[str, int], ...]:
    """``(name, dev)`` pairs of a ``DM_LIST_DEVICES`` reply."""
    header = unpack_header(buf)
    end = min(header.data_size, len(buf))
    offset = header.data_start
    names = []
    while offset + NAME_LIST.size <= end:
        dev, next_offset = NAME_LIST.unpack_from(buf, offset)
        if not dev:  # the kernel writes dev = 0 when there are no devices
            break
        names.append((_read_cstr(buf, offset + NAME_LIST.size, end), dev))
        if not next_offset:
            break
        offset += next_offset
    return tuple(names)


def pack_message(sector: int, message: str) -> bytes:
    return TARGET_MSG.pack(sector) + _cstr(message, 1 << 20, "target message") + b"\0"


def unpack_message_reply(buf: bytes | bytearray) -> str:
    header = unpack_header(buf)
    if not header.flags & Flag.DATA_OUT:
        return ""
    return _read_cstr(buf, header.data_start, min(header.data_size, len(buf)))


__all__ = [
    "DEFAULT_BUFFER",
    "HEADER",
    "NO_FLAGS",
    "TARGET_SPEC",
    "Cmd",
    "Flag",
    "Header",
    "TargetSpec",
    "build",
    "decode_dev",
    "encode_dev",
    "pack_header",
    "pack_message",
    "pack_targets",
    "unpack_header",
    "unpack_message_reply",
    "unpack_names",
    "unpack_targets",
]
