"""dm-direct on xfs and btrfs: the quick cut of the lifecycle, and power cuts.

The quick cut (make test, one VM per filesystem): create while a writer fsyncs files, mount
through the throwaway layer (every write acknowledged before create is there, the marker
written after is not), discard refused in one line while mounted, then discard: the origin
keeps its writes and its original table, nothing left. The whole lifecycle (fsck, merge) is
tests/vm/test_method_dm.py::test_lifecycle, under make test-slow for these two.

The power cuts: ``snapkit recover`` re-assembles its stack and resumes a discard the cut
interrupted, on the same raw disks (as tests/vm/test_power_cut.py does).

xfs, so the throwaway mount layer is in play too: the first cut comes while the snapshot is
mounted through it. After the reboot the origin must read as it was written *after* the
snapshot (the writes since come back from the COW), the snapshot as it was *before*, the base
device must be read-only again and the dead layer gone. The second cut lands right after the
discard's start (SNAPKIT_TEST_PAUSE_AT: the kernel is merging the COW into the base, the mark
is saved); recover must finish that merge, not drop the COW -- dropping it would lose every
write since the snapshot.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workload import (  # tests/vm is on sys.path (rootdir-relative, no package)
    COW_DIR,
    check_files,
    ledger,
    mount,
    setup_origin,
    snapkit,
    start_writer,
    stop_writer,
    umount,
)

from vmtests.vm.session import Session

ENV = {"SNAPKIT_STATE_DIR": "/keep/state"}
MOUNT_KEEP = "mkdir -p /keep /mnt/o /mnt/s; mount /dev/vmtest/keep /keep"
SETUP = f"""
mkfs.ext4 -q -F /dev/vmtest/keep; {MOUNT_KEEP}
snapkit device prepare /dev/vmtest/origin --name data
mkfs.xfs -q -f /dev/mapper/data; mount /dev/mapper/data /mnt/o
echo before > /mnt/o/marker; sync
snapkit snapshot create /mnt/o --name s1 --method dm-direct --cow-dir /keep/cow --cow-size 32M
echo after > /mnt/o/marker; sync
snapkit snapshot mount s1 /mnt/s
test "$(cat /mnt/s/marker)" = before
test -e /keep/cow/s1.layer
"""


@pytest.mark.parametrize("fs", ["xfs", "btrfs"])
def test_layer_mount_and_discard(vm: Session, fs: str) -> None:
    origin = setup_origin(vm, fs, size="320M")  # xfs's smallest
    vm.sh("echo before > /mnt/o/marker && sync")
    writer = start_writer(vm)
    before = ledger(vm)
    snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/o",
        "--name",
        "s1",
        "--method",
        "dm-direct",
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "64M",
    )
    stop_writer(vm, writer)
    vm.sh("echo after > /mnt/o/marker && sync")
    if fs == "btrfs":  # 6.1 refuses a same-fsid copy beside its mounted origin
        umount(vm, "/mnt/o")
    snapkit(vm, "snapshot", "mount", "s1", "/mnt/s")
    check_files(vm, "/mnt/s/w", before)
    assert vm.sh("cat /mnt/s/marker").stdout == b"before\n"
    refused = snapkit(vm, "snapshot", "discard", "s1", check=False)
    assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused.stderr
    assert b"s1 is mounted at /mnt/s" in refused.stderr
    umount(vm, "/mnt/s")
    if fs == "btrfs":
        mount(vm, fs, "/dev/mapper/data", "/mnt/o")
    snapkit(vm, "snapshot", "discard", "s1")
    assert vm.sh("cat /mnt/o/marker").stdout == b"after\n"
    assert vm.sh("dmsetup table data").stdout.decode() == origin.table
    assert vm.sh("dmsetup ls").stdout.split()[0::2] == [b"data"]  # no view, no layer
    assert vm.sh(f"ls -A {COW_DIR}; blockdev --getro {origin.loop}").stdout == b"0\n"


def _sh(vm: Session, script: str) -> str:
    result = vm.run(["sh", "-euc", script], env=ENV, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    return result.stdout.decode()


def _recover(vm: Session) -> str:
    _sh(vm, MOUNT_KEEP)
    return _sh(vm, "snapkit recover")


def _start_steps(vm: Session) -> int:
    """The number of steps of the discard's start plan, read from its dry run."""
    text = _sh(vm, "snapkit snapshot discard s1 --dry-run").split("then, once")[0]
    return len(re.findall(r"^\s*\d+\. ", text, re.MULTILINE))


def _cut_after_the_discard_started(vm: Session) -> None:
    pause = f"1:{_start_steps(vm) + 1}"  # after the start's last step, before the wait
    vm.spawn(
        [
            "sh",
            "-c",
            f"SNAPKIT_TEST_PAUSE_AT={pause} SNAPKIT_STATE_DIR=/keep/state "
            "snapkit snapshot discard s1 2>/tmp/err",
        ]
    )
    deadline = time.monotonic() + 120
    while vm.run(["grep", "-q", "test pause", "/tmp/err"]).returncode != 0:
        assert time.monotonic() < deadline, vm.run(["cat", "/tmp/err"]).stdout
        time.sleep(0.2)
    assert b"snapshot-merge" in vm.run(["dmsetup", "table", "data"]).stdout
    vm.power_cut()


@pytest.mark.slow
def test_recover_reassembles_and_resumes_a_discard(
    vm_factory: Callable[..., Any], vm_artifacts: Path
) -> None:
    from vmtests.vm.machine import make_disk
    from vmtests.vm.qemu import Disk

    folder = vm_artifacts / "disks"
    folder.mkdir(parents=True, exist_ok=True)
    disks = [
        Disk(make_disk(folder / "origin.raw", 320 << 20), "origin"),
        Disk(make_disk(folder / "keep.raw", 96 << 20), "keep"),
    ]
    first = vm_factory(disks=disks, name="created")
    _sh(first, SETUP)
    first.power_cut()  # with the snapshot mounted through its layer

    second = vm_factory(disks=disks, name="recovered")
    _recover(second)
    assert " snapshot " in _sh(second, "dmsetup table data")
    assert _sh(second, "blockdev --getro /dev/vmtest/origin") == "1\n"  # the copy, read-only
    assert _sh(second, "ls -A /keep/cow") == "s1.cow\n"  # the dead layer is gone
    assert '"layer"' not in _sh(second, "snapkit snapshot status s1 --json")
    assert _sh(second, "snapkit recover") == "nothing to recover\n"  # idempotent
    _sh(second, "mount /dev/mapper/data /mnt/o")
    assert _sh(second, "cat /mnt/o/marker") == "after\n"  # the writes since, from the COW
    _sh(second, "snapkit snapshot mount s1 /mnt/s")
    assert _sh(second, "cat /mnt/s/marker") == "before\n"
    _sh(second, "umount /mnt/s; echo later > /mnt/o/later; sync")
    _cut_after_the_discard_started(second)

    third = vm_factory(disks=disks, name="finished")
    _recover(third)
    assert _sh(third, "dmsetup table data").split()[2] == "linear"
    assert _sh(third, "dmsetup ls").split()[0::2] == ["data"]
    assert _sh(third, "ls -A /keep/cow; snapkit snapshot list") == ""
    assert _sh(third, "blockdev --getro /dev/vmtest/origin") == "0\n"
    _sh(third, "mount /dev/mapper/data /mnt/o")
    assert _sh(third, "cat /mnt/o/marker /mnt/o/later") == "after\nlater\n"
    _sh(third, "umount /mnt/o; xfs_repair -n /dev/mapper/data >/dev/null")
    third.power_cut()
