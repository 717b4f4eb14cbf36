"""IoctlDm against an emulated /dev/mapper/control: requests, retries, nodes."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from snapkit.dm import control, ioctl
from snapkit.dm.control import DmError, IoctlDm, resume_unchanged
from snapkit.dm.fake import FakeDm
from snapkit.dm.ioctl import Cmd, Flag, Header
from snapkit.dm.table import DevNum, Linear, SnapshotOrigin, Table

Call = tuple[Cmd, Header, bytes]


class Kernel:
    """Answers ioctls the way dm-ioctl.c does, for the few cases tested here."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status_text = b"0 8 linear "

    def __call__(self, fd: int, request: int, buf: bytearray, mutate: bool) -> int:
        cmd = Cmd(request & 0xFF)
        header = ioctl.unpack_header(buf)
        self.calls.append((cmd, header, bytes(buf[header.data_start : header.data_size])))
        if header.name == "missing":
            raise OSError(errno.ENXIO, "No such device or address")
        flags = header.flags
        payload = b""
        if cmd is Cmd.TABLE_STATUS:
            spec = ioctl.TARGET_SPEC.pack(0, 8, 0, 56, b"linear") + b"7:0 0\0".ljust(16, b"\0")
            if header.data_size < 312 + 1000:
                flags |= Flag.BUFFER_FULL  # force one retry
            else:
                payload = spec
        reply = Header(
            version=(4, 47, 0),
            data_size=header.data_size,
            target_count=1 if payload else 0,
            open_count=0,
            flags=flags | Flag.ACTIVE_PRESENT,
            dev=ioctl.encode_dev(253, 4),
            name=header.name,
        )
        buf[:312] = ioctl.pack_header(reply)
        buf[312 : 312 + len(payload)] = payload
        return 0


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Kernel:
    k = Kernel()
    monkeypatch.setattr(fcntl, "ioctl", k)
    monkeypatch.setattr(ioctl, "DEFAULT_BUFFER", 512)
    (tmp_path / "control").touch()
    return k


@pytest.fixture
def dm(kernel: Kernel, tmp_path: Path) -> IoctlDm:
    return IoctlDm(control=tmp_path / "control", mapper_dir=tmp_path / "mapper")


def test_version(dm: IoctlDm, kernel: Kernel) -> None:
    assert dm.version() == (4, 47, 0)
    assert kernel.calls[0][1].version == (4, 0, 0)


def test_suspend_and_resume_flags(dm: IoctlDm, kernel: Kernel) -> None:
    dm.suspend("vg-lv")
    dm.suspend("vg-lv", lockfs=False, flush=False)
    dm.resume("vg-lv")
    flags = [h.flags for _, h, _ in kernel.calls]
    assert flags == [Flag.SUSPEND, Flag.SUSPEND | Flag.SKIP_LOCKFS | Flag.NOFLUSH, Flag(0)]
    assert all(cmd is Cmd.DEV_SUSPEND for cmd, _, _ in kernel.calls)


def test_load_sends_the_table(dm: IoctlDm, kernel: Kernel) -> None:
    table = Table.single(8, SnapshotOrigin(DevNum(253, 1)))
    dm.load("vg-lv", table, read_only=True)
    cmd, header, payload = kernel.calls[0]
    assert cmd is Cmd.TABLE_LOAD and header.target_count == 1
    assert header.flags == Flag.READONLY
    assert payload.startswith(
        ioctl.pack_targets([ioctl.TargetSpec(0, 8, "snapshot-origin", "253:1")])
    )


def test_table_retries_with_a_larger_buffer(dm: IoctlDm, kernel: Kernel) -> None:
    assert dm.table("vg-lv") == Table.single(8, Linear(DevNum(7, 0), 0))
    sizes = [h.data_size for _, h, _ in kernel.calls]
    assert sizes == [512, 2048]
    assert kernel.calls[0][1].flags == Flag.STATUS_TABLE


def test_errors_carry_errno(dm: IoctlDm) -> None:
    with pytest.raises(DmError) as info:
        dm.suspend("missing")
    assert info.value.errno == errno.ENXIO
    assert "dm dev_suspend missing" in str(info.value)
    assert dm.info("missing") is None


def test_names_are_checked_before_the_kernel(dm: IoctlDm, kernel: Kernel) -> None:
    with pytest.raises(DmError):
        dm.suspend("a/b")
    assert not kernel.calls


def test_missing_control_node_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DmError, match="modprobe dm-mod"):
        IoctlDm(control=tmp_path / "nope")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a block node needs root")
def test_create_and_remove_manage_the_node(dm: IoctlDm, tmp_path: Path) -> None:
    info = dm.create("snap")
    node = tmp_path / "mapper" / "snap"
    st = node.lstat()
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(253, 4)
    assert stat.S_IMODE(st.st_mode) == 0o600 and info.dev == DevNum(253, 4)
    dm.remove("snap")
    assert not node.exists()


def test_drop_node_leaves_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_text("not a node")
    control.drop_node(path, DevNum(253, 4))
    assert path.exists()


def test_resume_unchanged_clears_the_preloaded_table() -> None:
    fake = FakeDm()
    fake.add_block_device("/dev/loop0", DevNum(7, 0))
    fake.create("o")
    fake.load("o", Table.single(8, Linear("/dev/loop0", 0)))
    fake.resume("o")
    fake.load("o", Table.single(8, Linear("/dev/loop0", 8)))
    fake.suspend("o")
    info = resume_unchanged(fake, "o")
    assert not info.suspended and not info.inactive_table
    assert fake.table("o") == Table.single(8, Linear("/dev/loop0", 0))
