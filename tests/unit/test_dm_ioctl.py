"""The dm ioctl buffers, byte for byte, against include/uapi/linux/dm-ioctl.h."""

from __future__ import annotations

import sys

import pytest

from snapkit.dm import ioctl
from snapkit.dm.ioctl import Cmd, Flag, Header, TargetSpec
from snapkit.errors import FormatError, ValidationError

ORDER = sys.byteorder


def u32(n: int) -> bytes:
    return n.to_bytes(4, ORDER)


def u64(n: int) -> bytes:
    return n.to_bytes(8, ORDER)


def test_sizes_and_requests() -> None:
    assert ioctl.HEADER.size == 312 and ioctl.TARGET_SPEC.size == 40
    assert Cmd.VERSION.request == 0xC138FD00
    assert Cmd.DEV_CREATE.request == 0xC138FD03
    assert Cmd.DEV_SUSPEND.request == 0xC138FD06
    assert Cmd.TABLE_LOAD.request == 0xC138FD09
    assert Cmd.TABLE_STATUS.request == 0xC138FD0C
    assert Cmd.TARGET_MSG.request == 0xC138FD0E
    assert (Flag.SKIP_LOCKFS, Flag.NOFLUSH, Flag.STATUS_TABLE) == (1024, 2048, 16)


def test_header_bytes() -> None:
    header = Header(
        version=(4, 0, 0),
        data_size=16384,
        data_start=312,
        target_count=2,
        open_count=-1,
        flags=Flag.SUSPEND | Flag.SKIP_LOCKFS,
        event_nr=7,
        dev=0xFD03,
        name="vg-lv",
        uuid="U",
    )
    expected = (
        u32(4)
        + u32(0)
        + u32(0)
        + u32(16384)
        + u32(312)
        + u32(2)
        + (-1).to_bytes(4, ORDER, signed=True)
        + u32(2 | 1024)
        + u32(7)
        + u32(0)
        + u64(0xFD03)
        + b"vg-lv".ljust(128, b"\0")
        + b"U".ljust(129, b"\0")
        + bytes(7)
    )
    packed = ioctl.pack_header(header)
    assert len(packed) == 312
    assert packed == expected
    assert ioctl.unpack_header(packed) == header


def test_names_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValidationError):
        ioctl.pack_header(Header(name="x" * 128))
    ioctl.pack_header(Header(name="x" * 127))
    with pytest.raises(ValidationError):
        ioctl.pack_header(Header(uuid="u" * 129))


def test_build_fills_sizes_and_payload() -> None:
    buf = ioctl.build(Header(name="a", flags=Flag.READONLY), b"xyz", size=1000)
    assert len(buf) == 1000  # already 8-aligned
    h = ioctl.unpack_header(buf)
    assert (h.data_size, h.data_start, h.name, h.flags) == (1000, 312, "a", Flag.READONLY)
    assert buf[312:315] == b"xyz"
    big = ioctl.build(Header(), b"\1" * 5000, size=16)
    assert len(big) == 5312


def test_pack_targets_next_counts_from_the_current_spec() -> None:
    payload = ioctl.pack_targets(
        [TargetSpec(0, 100, "linear", "7:0 0"), TargetSpec(100, 8, "error", "")]
    )
    first_params = b"7:0 0\0".ljust(8, b"\0")
    expected = (
        u64(0)
        + u64(100)
        + u32(0)
        + u32(40 + 8)
        + b"linear".ljust(16, b"\0")
        + first_params
        + u64(100)
        + u64(8)
        + u32(0)
        + u32(40 + 8)
        + b"error".ljust(16, b"\0")
        + bytes(8)
    )
    assert payload == expected


def _reply(payload: bytes, *, count: int, flags: Flag = ioctl.NO_FLAGS) -> bytearray:
    header = Header(target_count=count, flags=flags)
    buf = ioctl.build(header, payload, size=312 + len(payload))
    return buf


def test_unpack_targets_next_counts_from_the_first_spec() -> None:
    # Two specs as retrieve_status() writes them: next = offset from the first spec.
    spec1 = u64(0) + u64(100) + u32(0) + u32(56) + b"snapshot".ljust(16, b"\0")
    params1 = b"16/2048 16\0".ljust(16, b"\0")
    spec2 = u64(100) + u64(8) + u32(0) + u32(104) + b"linear".ljust(16, b"\0") + bytes(8)
    specs = ioctl.unpack_targets(_reply(spec1 + params1 + spec2, count=2))
    assert specs == (
        TargetSpec(0, 100, "snapshot", "16/2048 16"),
        TargetSpec(100, 8, "linear", ""),
    )


def test_unpack_targets_refuses_a_short_reply() -> None:
    with pytest.raises(FormatError):
        ioctl.unpack_targets(_reply(bytes(20), count=1))


def test_unpack_names() -> None:
    rec1 = u64(ioctl.encode_dev(253, 0)) + u32(24) + b"vg-lv\0".ljust(12, b"\0")
    rec2 = u64(ioctl.encode_dev(253, 1)) + u32(0) + b"vg-lv-real\0".ljust(20, b"\0")
    names = ioctl.unpack_names(_reply(rec1 + rec2, count=0))
    assert names == (("vg-lv", 0xFD00), ("vg-lv-real", 0xFD01))
    assert ioctl.unpack_names(_reply(bytes(16), count=0)) == ()


def test_dev_encoding_matches_huge_encode_dev() -> None:
    assert ioctl.encode_dev(253, 3) == 0xFD03
    assert ioctl.encode_dev(7, 300) == 0x2C | (7 << 8) | (0x100 << 12)
    for major, minor in [(0, 0), (253, 0), (259, 1048575), (4095, 255)]:
        assert ioctl.decode_dev(ioctl.encode_dev(major, minor)) == (major, minor)


def test_message_payload_and_reply() -> None:
    assert ioctl.pack_message(8, "create_thin 1") == u64(8) + b"create_thin 1\0"
    reply = _reply(b"42\0", count=0, flags=Flag.DATA_OUT)
    assert ioctl.unpack_message_reply(reply) == "42"
    assert ioctl.unpack_message_reply(_reply(b"42\0", count=0)) == ""
