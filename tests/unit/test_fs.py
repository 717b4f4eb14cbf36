"""Freeze/thaw error mapping, checkers and snapshot mount options per filesystem."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from snapkit.errors import OperationError, RefusedError
from snapkit.host import fs


def test_ioctl_numbers_are_the_kernels() -> None:
    # _IOWR('X', 119, int) and _IOWR('X', 120, int) from include/uapi/linux/fs.h
    assert (3 << 30) | (4 << 16) | (ord("X") << 8) | 119 == fs.FIFREEZE
    assert (3 << 30) | (4 << 16) | (ord("X") << 8) | 120 == fs.FITHAW


def fake_ioctl(monkeypatch: pytest.MonkeyPatch, err: int | None) -> list[int]:
    calls: list[int] = []

    def ioctl(fd: int, request: int, arg: int) -> int:
        calls.append(request)
        if err is not None:
            raise OSError(err, "injected")
        return 0

    monkeypatch.setattr(fs.fcntl, "ioctl", ioctl)
    return calls


def test_freeze_and_thaw_call_the_ioctls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = fake_ioctl(monkeypatch, None)
    fs.freeze(tmp_path)
    assert fs.thaw(tmp_path) is True
    assert calls == [fs.FIFREEZE, fs.FITHAW]


def test_thawing_a_thawed_fs_is_harmless(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_ioctl(monkeypatch, errno.EINVAL)
    assert fs.thaw(tmp_path) is False


def test_thaw_failure_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_ioctl(monkeypatch, errno.EPERM)
    with pytest.raises(OperationError):
        fs.thaw(tmp_path)


@pytest.mark.parametrize(
    ("err", "hint"), [(errno.EBUSY, "already frozen"), (errno.EOPNOTSUPP, "cannot be frozen")]
)
def test_freeze_errors_say_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, err: int, hint: str
) -> None:
    fake_ioctl(monkeypatch, err)
    with pytest.raises(OperationError) as caught:
        fs.freeze(tmp_path)
    assert caught.value.hint is not None and hint in caught.value.hint


def test_checkers_are_read_only() -> None:
    assert fs.fsck_argv("ext4", "/dev/x") == ["e2fsck", "-fn", "/dev/x"]
    assert fs.fsck_argv("xfs", "/dev/x") == ["xfs_repair", "-n", "/dev/x"]
    assert fs.fsck_argv("btrfs", "/dev/x")[:3] == ["btrfs", "check", "--readonly"]
    with pytest.raises(RefusedError):
        fs.fsck_argv("vfat", "/dev/x")


def test_snapshot_mount_options() -> None:
    assert fs.snapshot_mount_options("ext4") == ("ro", "noload")
    assert "nouuid" in fs.snapshot_mount_options("xfs")
    assert fs.snapshot_mount_options("btrfs") == ("ro",)


@pytest.mark.parametrize("method", ["lvm", "lvm-thin", "dm", "dm-direct", "freeze", "auto"])
def test_a_method_that_freezes_refuses_jfs_with_the_way_out(method: str) -> None:
    """JFS's freeze leaves stale allocation maps (measured: fsck.jfs fails every frozen copy),
    so every freezing method refuses it, naming remount-ro and --force."""
    refusal = fs.freeze_refusal("jfs", method, force=False)
    assert isinstance(refusal, RefusedError)
    assert "allocation maps" in refusal.message and "remount-ro" in (refusal.hint or "")
    assert "would freeze jfs" in refusal.message  # the campaign's guest recognises it so
    assert "--force" in (refusal.hint or "")
    assert fs.freeze_refusal("jfs", method, force=True) is None  # the user's risk


@pytest.mark.parametrize(
    ("fstype", "method"),
    [("jfs", "remount-ro"), ("ext4", "lvm"), ("xfs", "dm"), ("f2fs", "freeze"), (None, "lvm")],
)
def test_no_refusal_where_the_freeze_is_sound_or_not_used(fstype: str | None, method: str) -> None:
    assert fs.freeze_refusal(fstype, method, force=False) is None


def test_the_freeze_verb_refuses_jfs_before_it_freezes_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """snapkit freeze has no --force: its refusal says only remount-ro, and nothing runs."""
    from snapkit import flow
    from snapkit.model import Target
    from snapkit.settings import Settings

    target = Target(Path("/dev/vdb"), tmp_path, "jfs", (254, 16))
    monkeypatch.setattr(flow, "resolve", lambda _spec: target)
    monkeypatch.setattr(flow.freezing, "IoctlFreezer", lambda: pytest.fail("it froze"))
    with pytest.raises(RefusedError) as caught:
        flow.freeze(str(tmp_path), ("true",), max_freeze=5, settings=Settings.under(tmp_path / "s"))
    assert "--force" not in (caught.value.hint or "") and "remount-ro" in (caught.value.hint or "")
