"""Tables parse into typed targets and format back to exactly what dmsetup prints."""

from __future__ import annotations

import pytest

from snapkit.dm.table import (
    Crypt,
    DevNum,
    Error,
    Flakey,
    Line,
    Linear,
    Raw,
    Snapshot,
    SnapshotMerge,
    SnapshotOrigin,
    Store,
    Table,
    Thin,
    ThinPool,
    Zero,
    parse_line,
    parse_table,
)
from snapkit.errors import FormatError, ValidationError

# Lines as the kernel and dmsetup print them (note the space after a parameterless type and
# thin-pool's trailing space).
KERNEL_LINES = [
    "0 2097152 linear 7:0 2048",
    "0 2097152 snapshot-origin 253:1",
    "0 2097152 snapshot 253:1 253:2 P 8",
    "0 2097152 snapshot 253:1 253:2 PO 16",
    "0 2097152 snapshot 253:1 7:1 N 8",
    "0 2097152 snapshot 253:1 253:2 P 8 2 discard_zeroes_cow discard_passdown_origin",
    "0 2097152 snapshot-merge 253:1 253:2 P 8",
    "0 409600 thin-pool 253:3 253:4 128 0 0 ",
    "0 409600 thin-pool 253:3 253:4 128 0 1 skip_block_zeroing ",
    "0 409600 thin 253:5 1",
    "0 409600 thin 253:5 1 7:0",
    "0 100 error ",
    "0 100 zero ",
    "0 100 flakey 7:0 0 5 1 0",
    "0 100 flakey 7:0 0 5 1 1 drop_writes",
    "0 100 crypt aes-xts-plain64 :64:logon:cryptsetup:x 0 7:0 4096",
    "0 100 delay 7:0 0 500",
]


@pytest.mark.parametrize("text", KERNEL_LINES)
def test_kernel_lines_round_trip_exactly(text: str) -> None:
    """What the kernel gave is what a load gives back (``kernel_format``); ``format``, the
    text for logs and output, is the same except for a crypt key (below)."""
    assert parse_line(text).kernel_format() == text
    if " crypt " not in text:
        assert parse_line(text).format() == text


HEX_KEY = "f7d66be7bb1f5f76bc224981709a31be9ca2eb4821ff388656ac330c82fc5103"


def test_a_crypt_key_never_shows_in_text_repr_or_errors() -> None:
    """The key reaches only the ioctl (``kernel_params``); ``format``, ``str``, ``repr`` of
    the line, the target and the table hide it, and a Secret refuses to be pickled."""
    import pickle

    line = parse_line(f"0 8 crypt aes-xts-plain64 {HEX_KEY} 0 253:0 0 1 allow_discards")
    target = line.target
    assert isinstance(target, Crypt)
    assert target.kernel_params().split()[1] == HEX_KEY
    assert target.features == ("allow_discards",)
    for shown in (line.format(), repr(line), str(target), repr(target), target.params()):
        assert HEX_KEY not in shown and "<the key>" in shown, shown
    labelled = target.key.labelled("key of crypthome")
    assert str(labelled) == "<key of crypthome>" and labelled == target.key
    with pytest.raises(TypeError):
        pickle.dumps(target)


def test_the_key_check_can_fail() -> None:
    """Negative control for the test above: the real key *is* in kernel_params, so a grep
    for it finds it where it is."""
    line = parse_line(f"0 8 crypt aes-xts-plain64 {HEX_KEY} 0 253:0 0")
    assert HEX_KEY in line.kernel_format()


def test_typed_fields() -> None:
    snap = parse_line("0 8 snapshot 253:1 253:2 PO 16").target
    assert snap == Snapshot(DevNum(253, 1), DevNum(253, 2), Store.PERSISTENT_OVERFLOW, 16)
    assert parse_line("0 8 linear /dev/loop0 0").target == Linear("/dev/loop0", 0)
    assert parse_line("0 8 snapshot-origin 7:0").target == SnapshotOrigin(DevNum(7, 0))
    assert parse_line("0 8 snapshot-merge 1:2 3:4 P 8").target == SnapshotMerge(
        DevNum(1, 2), DevNum(3, 4), Store.PERSISTENT, 8
    )
    assert parse_line("0 8 thin 1:2 7").target == Thin(DevNum(1, 2), 7)
    pool = parse_line("0 8 thin-pool 1:2 1:3 128 0 1 skip_block_zeroing ").target
    assert pool == ThinPool(DevNum(1, 2), DevNum(1, 3), 128, 0, ("skip_block_zeroing",))
    assert parse_line("0 8 error").target == Error()
    assert parse_line("0 8 zero").target == Zero()
    flakey = parse_line("0 8 flakey 7:0 0 5 1 5 corrupt_bio_byte 32 r 1 0").target
    assert flakey == Flakey(DevNum(7, 0), 0, 5, 1, ("corrupt_bio_byte", "32", "r", "1", "0"))
    assert parse_line("0 8 mirror a b").target == Raw("mirror", "a b")


def test_snapshot_and_merge_are_different_targets() -> None:
    args = (DevNum(1, 2), DevNum(3, 4), Store.PERSISTENT, 8)
    snapshot: object = Snapshot(*args)
    assert snapshot != SnapshotMerge(*args)


def test_multi_line_table() -> None:
    text = "0 100 linear 7:0 0\n100 50 linear 7:1 0\n150 10 error \n"
    table = parse_table(text)
    assert table.size == 160
    assert table.format() == text
    assert [line.start for line in table] == [0, 100, 150]


@pytest.mark.parametrize(
    "text",
    [
        "0 8 linear 7:0",  # missing offset
        "0 8 linear 7:0 0 9",
        "0 8 linear 7:0 -1",
        "0 8 linear 7:0 08",  # not canonical: would not round-trip
        "0 8 snapshot 1:2 3:4 X 8",
        "0 8 snapshot 1:2 3:4 P",
        "0 8 snapshot 1:2 3:4 P 8 2 discard_zeroes_cow",  # count says 2, one word
        "0 8 thin 1:2",
        "0 8 error x",
        "x 8 linear 7:0 0",
        "0 8",
    ],
)
def test_malformed_lines_are_refused(text: str) -> None:
    with pytest.raises((FormatError, ValidationError)):
        parse_line(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Linear("/dev/loop0 0\n0 8 error", 0),
        lambda: Linear("", 0),
        lambda: Snapshot("/dev/a", "/dev/b", Store.PERSISTENT, 12),
        lambda: SnapshotMerge("/dev/a", "/dev/b", Store.TRANSIENT, 8),
        lambda: Raw("a b", ""),
        lambda: Raw("x" * 16, ""),
        lambda: Raw("mirror", "a\n0 8 error"),
        lambda: Line(0, 0, Error()),
        lambda: DevNum(4096, 0),
        lambda: Linear("/dev/x", -1),
    ],
)
def test_unsafe_values_are_refused(build: object) -> None:
    with pytest.raises(ValidationError):
        build()  # type: ignore[operator]


def test_tables_must_be_contiguous_from_zero() -> None:
    with pytest.raises(ValidationError, match="gap"):
        Table((Line(8, 8, Error()),))
    with pytest.raises(ValidationError, match="gap"):
        Table((Line(0, 8, Error()), Line(9, 8, Error())))
    with pytest.raises(ValidationError, match="at least one"):
        Table(())
    assert Table.single(8, Zero()).format() == "0 8 zero \n"
