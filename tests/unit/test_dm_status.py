"""Status lines parse into records; percentages match what lvm2 reports."""

from __future__ import annotations

import pytest

from snapkit.dm.status import (
    NoStatus,
    RawStatus,
    SnapshotFailure,
    SnapshotUsage,
    ThinPoolStatus,
    ThinStatus,
    lvs_percent,
    merge_progress,
    parse_snapshot_status,
    parse_status,
    parse_status_line,
)
from snapkit.errors import FormatError


def test_fresh_snapshot() -> None:
    line = parse_status_line("0 2097152 snapshot 16/204800 16")
    assert line.type_name == "snapshot" and line.length == 2097152
    assert line.status == SnapshotUsage(16, 204800, 16)
    assert isinstance(line.status, SnapshotUsage)
    assert line.status.usage_percent == 0.0
    assert lvs_percent(line.status) == "0.00"


@pytest.mark.parametrize("word", ["Invalid", "Merge failed", "Overflow", "Unknown"])
def test_failure_words(word: str) -> None:
    assert parse_snapshot_status(word) == SnapshotFailure(word)


def test_lvs_percent_rules() -> None:
    assert lvs_percent(SnapshotUsage(24, 204800, 16)) == "0.01"  # tiny, never 0.00
    assert lvs_percent(SnapshotUsage(204799, 204800, 16)) == "99.99"  # never falsely 100
    assert lvs_percent(SnapshotUsage(204800, 204800, 16)) == "100.00"
    assert lvs_percent(SnapshotUsage(102400, 204800, 16)) == "50.00"
    assert lvs_percent(SnapshotUsage(102400, 204800, None)) == "50.00"  # pre-1.8 kernels
    assert lvs_percent(SnapshotFailure.OVERFLOW) == "100.00"
    assert lvs_percent(SnapshotFailure.INVALID) is None


def test_merge_status_and_progress() -> None:
    first = parse_snapshot_status("4016/204800 16")
    assert isinstance(first, SnapshotUsage) and not first.merge_done
    half = SnapshotUsage(2016, 204800, 16)
    done = SnapshotUsage(16, 204800, 16)
    assert merge_progress(first, first) == 0.0
    assert merge_progress(first, half) == 50.0
    assert merge_progress(first, done) == 100.0 and done.merge_done
    assert merge_progress(done, done) == 100.0


def test_origin_linear_and_others() -> None:
    lines = parse_status(
        "0 100 snapshot-origin \n100 100 linear \n200 8 thin 4096 4095\n208 8 thin 0 -\n"
        "216 8 thin Fail\n224 8 crypt whatever\n"
    )
    assert [ln.start for ln in lines] == [0, 100, 200, 208, 216, 224]
    assert lines[0].status == NoStatus() and lines[1].status == NoStatus()
    assert lines[2].status == ThinStatus(4096, 4095)
    assert lines[3].status == ThinStatus(0, None)
    assert lines[4].status == ThinStatus(0, None, failed=True)
    assert lines[5].status == RawStatus("whatever")


def test_thin_pool() -> None:
    text = "0 409600 thin-pool 1 279/4096 1024/3200 - rw discard_passdown queue_if_no_space - 1024"
    status = parse_status_line(text).status
    assert status == ThinPoolStatus(
        1,
        279,
        4096,
        1024,
        3200,
        "rw",
        rest=("discard_passdown", "queue_if_no_space", "-", "1024"),
    )
    assert parse_status_line("0 8 thin-pool Fail").status == ThinPoolStatus(
        0, 0, 0, 0, 0, "fail", failed=True
    )


@pytest.mark.parametrize(
    "text", ["0 8 snapshot 1/2/3", "0 8 snapshot weird", "0 8 thin 1", "0 8 thin-pool 1 2"]
)
def test_malformed_status(text: str) -> None:
    with pytest.raises(FormatError):
        parse_status_line(text)


# -- what snapkit makes of a status: state, and plain words with the next step ---------------
