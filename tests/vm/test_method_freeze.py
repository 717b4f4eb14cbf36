"""``freeze`` and ``snapkit freeze`` in a real guest, and the watchdog's guarantee.

The "external snapshot" is a ``cp`` of the block device taken while the filesystem is frozen:
what a SAN or cloud snapshot would capture. The copy must be clean and show the data from
before. (Merge does not apply: snapkit cannot roll back a snapshot it did not take.)

Signal tests prove the fs is writable again by a write that was *blocked* on the frozen
filesystem and completes.
"""

from __future__ import annotations

import signal
import time

import pytest
from test_method_lvm import FILESYSTEMS, FSCK, REPLAY, make_fs, marker, start_writer, stop_writer

from vmtests.vm.session import Session

DEV = "/dev/loop0"


def loop_fs(vm: Session, fs: str) -> None:
    vm.sh("truncate -s 400M /tmp/d.img; /sbin/losetup /dev/loop0 /tmp/d.img")
    make_fs(vm, fs, DEV)


def wait_for(vm: Session, argv: list[str], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while vm.run(argv).returncode != 0:
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_freeze_copy_is_consistent(vm: Session, fs: str) -> None:
    loop_fs(vm, fs)
    writer = start_writer(vm)
    time.sleep(1)
    result = vm.run(
        [
            "snapkit",
            "freeze",
            "/mnt/o",
            "--max-freeze",
            "30",
            "--",
            "cp",
            "--sparse=always",
            DEV,
            "/tmp/copy.img",
        ],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"was frozen for" in result.stderr
    vm.sh("echo after > /mnt/o/marker; sync")
    stop_writer(writer)
    replay = REPLAY.get(fs, "").format(dev="-o loop /tmp/copy.img")
    check = vm.run(["sh", "-c", f"{replay}{FSCK[fs]} /tmp/copy.img"], timeout=300)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    opts = {"ext4": "ro,noload", "xfs": "ro,nouuid", "btrfs": "ro"}[fs]
    if fs == "btrfs":  # same fsid as the mounted origin: this kernel refuses it beside it
        vm.sh("umount /mnt/o")
    vm.sh(f"mount -o loop,{opts} /tmp/copy.img /mnt/s")
    assert marker(vm, "/mnt/s") == "before"


def test_exit_code_and_output_are_the_commands(vm: Session) -> None:
    loop_fs(vm, "ext4")
    result = vm.run(["snapkit", "freeze", "/mnt/o", "--", "sh", "-c", "echo out; exit 7"])
    assert (result.returncode, result.stdout) == (7, b"out\n")
    vm.sh("echo still > /mnt/o/w; sync")  # thawed after a failing command too


def test_sigkill_of_snapkit_the_watchdog_thaws(vm: Session) -> None:
    loop_fs(vm, "ext4")
    max_freeze = 8.0
    proc = vm.spawn(
        ["snapkit", "freeze", "/mnt/o", "--max-freeze", str(max_freeze), "--", "sleep", "120"]
    )
    wait_for(vm, ["pgrep", "-x", "sleep"], "the freeze")
    frozen_at = time.monotonic()
    blocked = vm.spawn(["sh", "-c", "echo x > /mnt/o/blocked && sync /mnt/o/blocked"])
    time.sleep(1.0)
    assert vm.run(["test", "-s", "/mnt/o/blocked"]).returncode != 0, "the fs was not frozen"
    proc.signal(signal.SIGKILL)  # snapkit dies: no finally, no undo
    done = blocked.wait(max_freeze + 1)
    assert done.returncode == 0
    assert time.monotonic() - frozen_at <= max_freeze + 1 + 1.0  # +1 s for the host round trips
    assert proc.wait(10).returncode == -signal.SIGKILL


def test_a_hung_snapkit_is_thawed_at_the_deadline(vm: Session) -> None:
    loop_fs(vm, "xfs")
    max_freeze = 3.0
    proc = vm.spawn(
        ["snapkit", "freeze", "/mnt/o", "--max-freeze", str(max_freeze), "--", "sleep", "120"]
    )
    wait_for(vm, ["pgrep", "-x", "sleep"], "the freeze")
    proc.signal(signal.SIGSTOP)  # hung: alive, pipe open, never says done
    frozen_at = time.monotonic()
    blocked = vm.spawn(["sh", "-c", "echo x > /mnt/o/blocked && sync /mnt/o/blocked"])
    assert blocked.wait(max_freeze + 2).returncode == 0
    waited = time.monotonic() - frozen_at
    assert waited <= max_freeze + 1 + 0.5, waited
    proc.signal(signal.SIGCONT)
    result = proc.wait(60)
    assert result.returncode == 1  # the command was killed at the deadline: a failed snapshot
    vm.sh("echo y > /mnt/o/after; sync")


def test_sigint_while_frozen_thaws_and_exits_130(vm: Session) -> None:
    loop_fs(vm, "ext4")
    proc = vm.spawn(["snapkit", "freeze", "/mnt/o", "--max-freeze", "60", "--", "sleep", "120"])
    wait_for(vm, ["pgrep", "-x", "sleep"], "the freeze")
    proc.signal(signal.SIGINT)
    result = proc.wait(30)
    assert result.returncode == 130, result.stderr.decode()
    assert b"interrupted" in result.stderr
    done = vm.run(["sh", "-c", "echo x > /mnt/o/w && sync /mnt/o/w"], timeout=5)
    assert done.returncode == 0 and not done.timed_out


def test_snapshot_create_method_freeze_runs_the_command(vm: Session) -> None:
    """Issue 4, item 2: the user's command reaches the freeze method through the CLI, with
    --pre before the freeze and --post after the thaw; the dd copy it takes is clean."""
    vm.sh("truncate -s 64M /tmp/d.img; /sbin/losetup /dev/loop0 /tmp/d.img")
    make_fs(vm, "ext4", DEV)
    writer = start_writer(vm)
    time.sleep(1)
    hooks = "--pre", "echo pre >> /tmp/order", "--post", "echo post >> /tmp/order"
    result = vm.run(
        [
            "snapkit",
            "snapshot",
            "create",
            "/mnt/o",
            "--name",
            "x",
            "--method",
            "freeze",
            "--max-freeze",
            "60",
            *hooks,
            "--",
            "sh",
            "-c",
            "echo cmd >> /tmp/order; dd if=$SNAPKIT_DEVICE of=/tmp/copy.img bs=1M",
        ],
        timeout=180,
    )
    stop_writer(writer)
    assert result.returncode == 0, result.stderr.decode()
    assert vm.get("/tmp/order") == b"pre\ncmd\npost\n"
    check = vm.run(["e2fsck", "-fn", "/tmp/copy.img"], timeout=300)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    listed = vm.run(["snapkit", "snapshot", "list"], check=True).stdout.decode()
    assert "x\tfreeze\t" in listed
    # the string form, and --post even when the command fails
    post = "echo post2 >> /tmp/order"
    failed = vm.run(
        [
            "snapkit",
            "snapshot",
            "create",
            "/mnt/o",
            "--name",
            "y",
            "--method",
            "freeze",
            "--post",
            post,
            "--command",
            "exit 3",
        ]
    )
    assert failed.returncode == 1 and b"exit 3" in failed.stderr, failed.stderr
    assert vm.get("/tmp/order").endswith(b"post2\n")
    vm.sh("echo still > /mnt/o/w; sync")  # thawed
