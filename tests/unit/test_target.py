"""Resolving TARGET: mountinfo parsing (escapes, btrfs' anonymous device) and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.dm.table import DevNum
from snapkit.errors import RefusedError
from snapkit.host.target import mount_devnum, parse_mountinfo, resolve

MOUNTINFO = (
    "22 1 253:0 / /mnt/my\\040data rw,relatime shared:1 - ext4 /dev/mapper/data rw\n"
    "23 1 0:45 / /mnt/b rw - btrfs /dev/nonexistent rw\n"
    "24 1 0:21 / /run rw - tmpfs tmpfs rw\n"
)


def test_mountinfo_escapes_and_fields() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[0].mountpoint == Path("/mnt/my data")
    assert mounts[0].devnum == DevNum(253, 0) and mounts[0].fstype == "ext4"
    assert mount_devnum(mounts[0]) == DevNum(253, 0)
    assert mount_devnum(mounts[1]) is None  # btrfs: the source is stat'ed, and it is gone
    assert mount_devnum(mounts[2]) is None


def test_unknown_targets_are_refused(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    with pytest.raises(RefusedError, match="neither"):
        resolve(str(tmp_path / "nope"), mountinfo=info)
    with pytest.raises(RefusedError, match="not a mount point"):
        resolve(str(tmp_path), mountinfo=info)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RefusedError, match="neither"):
        resolve(str(tmp_path / "file"), mountinfo=info)


def test_a_mount_without_a_block_device_is_refused(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(f"30 1 0:50 / {tmp_path} rw - tmpfs tmpfs rw\n")
    with pytest.raises(RefusedError, match="no block device"):
        resolve(str(tmp_path), mountinfo=info)
