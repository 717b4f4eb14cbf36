"""The safety rules refuse what could inject into a table, a path or an LVM argv."""

from __future__ import annotations

import pytest

from snapkit.errors import ValidationError
from snapkit.validate import (
    chunk_sectors,
    dm_name,
    lv_name,
    parse_chunk,
    parse_sectors,
    parse_size,
    table_token,
    vg_name,
)


@pytest.mark.parametrize("name", ["data", "vg0-lv_1", "a.b+c", "x" * 127, "snap.2024-01-01"])
def test_good_names_pass(name: str) -> None:
    assert dm_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        ("a b", "' '"),
        ("a\tb", "'\\t'"),
        ("a\nb", "'\\n'"),
        ("a/b", "'/'"),
        ("../x", "'/'"),
        ("..", "reserved"),
        (".", "reserved"),
        ("control", "reserved"),
        ("-x", "starts with '-'"),
        ("x" * 128, "128 characters"),
        ("caf\u00e9", "'\u00e9'"),
        ("a:b", "':'"),
        ("a\x00b", "'\\x00'"),
    ],
)
def test_bad_names_are_refused_in_one_line(name: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        dm_name(name)
    assert says in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.hint


@pytest.mark.parametrize("name", ["snapshot1", "pvmove0", "a_tmeta", "x_rimage_0", "y_cdata"])
def test_lvm_reserved_lv_names(name: str) -> None:
    dm_name(name)
    with pytest.raises(ValidationError, match="reserved by LVM"):
        lv_name(name)


def test_vg_name_uses_the_same_rules() -> None:
    assert vg_name("vg0") == "vg0"
    with pytest.raises(ValidationError, match="VG name"):
        vg_name("v g")


@pytest.mark.parametrize("token", ["7:0", "/dev/loop0", "/dev/mapper/vg-lv"])
def test_table_tokens(token: str) -> None:
    assert table_token(token, what="device") == token


@pytest.mark.parametrize("token", ["", "/dev/a b", "/dev/x\n0 8 error", "/dev/\u00e9"])
def test_table_tokens_refused(token: str) -> None:
    with pytest.raises(ValidationError):
        table_token(token, what="device")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64M", 64 << 20),
        ("1G", 1 << 30),
        ("1g", 1 << 30),
        ("1.5G", 3 << 29),
        ("4KiB", 4096),
        ("4kb", 4096),
        ("2048s", 2048 * 512),
        ("512b", 512),
        (" 8 M ", 8 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("64", "cannot read"),
        ("M", "cannot read"),
        ("-1M", "cannot read"),
        ("0M", "zero"),
        ("1.1b", "whole number"),
        ("1X", "cannot read"),
        ("1e3M", "cannot read"),
    ],
)
def test_parse_size_refusals(text: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        parse_size(text)


def test_parse_sectors_needs_whole_sectors() -> None:
    assert parse_sectors("1M") == 2048
    with pytest.raises(ValidationError, match="sectors"):
        parse_sectors("100b")


@pytest.mark.parametrize("sectors", [8, 16, 32, 64, 128, 256, 512, 1024])
def test_chunk_sizes_accepted(sectors: int) -> None:
    assert chunk_sectors(sectors) == sectors


@pytest.mark.parametrize("sectors", [0, 1, 4, 12, 2048, -8])
def test_chunk_sizes_refused(sectors: int) -> None:
    with pytest.raises(ValidationError, match="power of two from 4K to 512K"):
        chunk_sectors(sectors)


def test_parse_chunk() -> None:
    assert parse_chunk("4K") == 8
    assert parse_chunk("512K") == 1024
    assert parse_chunk("16s") == 16
    with pytest.raises(ValidationError):
        parse_chunk("1M")
