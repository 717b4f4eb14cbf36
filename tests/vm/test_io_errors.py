"""I/O errors under the COW and under the origin of a dm snapshot (issue 6, item 2), injected by
swapping a dm ``error`` table under a running stack, on the real 6.1 guest kernel.

The stack: the origin ``data`` (a plain linear device, as ``device prepare`` makes) maps
``lower``, a linear device over a loop; the COW directory is an ext4 (``noatime``, so reads
write nothing) on ``cowdev``, another linear device over a loop. "Fail" loads ``error`` into
``lower`` or ``cowdev``; "heal" loads the linear table back (``--nolockfs``: a suspend that
tried to freeze an ext4 whose disk is gone fails with EIO).

Measured on the guest (Debian 6.1, TCG), and asserted below:

* COW error while the snapshot lives: the kernel logs "Invalidating snapshot: Error
  reading/writing", the status reads ``Invalid``; the origin's writers keep going, every
  acknowledged file is intact and the origin is fsck-clean. The COW's own filesystem may
  abort its journal (with ``relatime``, always), and then freeing the COW file fails until
  that filesystem is repaired. Before snapkit said why, ``status`` showed ``invalid`` with an
  empty message.
* origin error while the snapshot lives: the copy-on-write read fails, the snapshot is
  invalidated the same way; the origin's writer gets EIO. After the disk is back and the
  origin is mounted once (journal replay), every acknowledged file is intact and fsck is clean.
* origin error during a merge: "Write error: shutting down merge", the origin's status reads
  ``snapshot-merge Merge failed``; the merge does not resume by itself, and reloading the same
  ``snapshot-merge`` is refused ("A snapshot is already merging"). Reads of unmerged chunks
  still go to the COW, so the origin still reads as the snapshot. ``merge --wait`` again, once
  the disk is back, puts ``snapshot-origin`` back and loads a fresh ``snapshot-merge``, which
  finishes: the origin equals the snapshot.
* COW unreadable when a merge starts: ``snapshot-merge`` does not load ("Failed to read
  snapshot metadata", EIO); nothing was merged, the origin is unchanged, and once the COW is
  readable ``merge --wait`` again merges it.
"""

from __future__ import annotations

import json

import pytest
from workload import (
    COW_DIR,
    check_files,
    fsck,
    ledger,
    manifest,
    mount,
    snapkit,
    start_writer,
    umount,
    wait_ledger,
)

from vmtests.vm.session import Session

STACK = f"""
mkdir -p /mnt/o /mnt/s {COW_DIR}
truncate -s 64M /tmp/base.img; truncate -s 128M /tmp/cowfs.img
L0=$(/sbin/losetup -f --show /tmp/base.img); L1=$(/sbin/losetup -f --show /tmp/cowfs.img)
dmsetup create lower --table "0 $(blockdev --getsz $L0) linear $L0 0"
dmsetup create data --table "0 $(blockdev --getsz $L0) linear /dev/mapper/lower 0"
dmsetup create cowdev --table "0 $(blockdev --getsz $L1) linear $L1 0"
/sbin/mkfs.ext4 -q /dev/mapper/cowdev; /bin/mount -o noatime /dev/mapper/cowdev {COW_DIR}
/sbin/mkfs.ext4 -q /dev/mapper/data; /bin/mount /dev/mapper/data /mnt/o
"""
LOOPS = {"lower": "/dev/loop0", "cowdev": "/dev/loop1"}
CREATE = [
    "snapshot",
    "create",
    "/mnt/o",
    "--name",
    "s1",
    "--method",
    "dm",
    "--cow-dir",
    COW_DIR,
    "--cow-size",
    "16M",
]
CHANGE = (
    "for i in $(seq 1 8); do dd if=/dev/urandom of=/mnt/o/f$i bs=64k count={n} conv=fsync "
    "2>/dev/null; done"
)


def _swap(vm: Session, name: str, table: str) -> None:
    load = f'dmsetup load {name} --table "{table}"'
    vm.sh(f"{load}; dmsetup suspend --nolockfs {name}; dmsetup resume {name}")


def fail(vm: Session, name: str) -> None:
    """From now on every read and write of ``name`` fails with EIO (page cache dropped, so
    nothing is served from memory)."""
    vm.sh("sync; echo 3 > /proc/sys/vm/drop_caches")
    _swap(vm, name, f"0 $(blockdev --getsz /dev/mapper/{name}) error")


def heal(vm: Session, name: str) -> None:
    loop = LOOPS[name]
    _swap(vm, name, f"0 $(blockdev --getsz {loop}) linear {loop} 0")
    vm.sh("echo 3 > /proc/sys/vm/drop_caches")


def status(vm: Session) -> dict[str, object]:
    return dict(json.loads(snapkit(vm, "snapshot", "status", "s1", "--json").stdout))


def dmesg(vm: Session) -> str:
    return vm.sh("dmesg").stdout.decode(errors="replace")


def nothing_suspended(vm: Session) -> None:
    assert b"Suspended" not in vm.sh("dmsetup info -c --noheadings -o suspended").stdout


def nothing_left(vm: Session) -> None:
    """Only the test's own devices remain: no snapkit device, loop or COW file."""
    names = sorted(vm.sh("dmsetup ls | cut -f1").stdout.decode().split())
    assert names == ["cowdev", "data", "lower"], names
    assert vm.sh("/sbin/losetup -a | wc -l").stdout.strip() == b"2"
    assert vm.sh(f"ls -A {COW_DIR} | grep -v lost+found | wc -l").stdout.strip() == b"0"


def snapshot_with_changes(vm: Session) -> dict[str, str]:
    """s1 of a filesystem with files, the files rewritten after; returns s1's manifest."""
    vm.sh(STACK)
    vm.sh(CHANGE.format(n=4))
    snapkit(vm, *CREATE)
    vm.sh(CHANGE.format(n=8))
    vm.sh("/bin/mount -o ro /dev/mapper/s1 /mnt/s")
    taken = manifest(vm, "/mnt/s")
    umount(vm, "/mnt/s")
    assert taken != manifest(vm, "/mnt/o")  # the merge has something to do
    umount(vm, "/mnt/o")
    return taken


def origin_manifest(vm: Session, options: str = "") -> dict[str, str]:
    vm.sh(f"/bin/mount {options} /dev/mapper/data /mnt/o")
    try:
        return manifest(vm, "/mnt/o")
    finally:
        umount(vm, "/mnt/o")


@pytest.mark.slow
def test_origin_error_during_merge_says_merge_failed_and_loses_nothing(vm: Session) -> None:
    taken = snapshot_with_changes(vm)
    fail(vm, "lower")
    failed = snapkit(vm, "snapshot", "merge", "s1", "--wait", check=False)
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1, failed.stderr
    assert b"Merge failed" in failed.stderr and b"merge s1 --wait' again" in failed.stderr
    assert "Write error: shutting down merge" in dmesg(vm)
    assert b"Merge failed" in vm.sh("dmsetup status data").stdout
    shown = status(vm)
    assert shown["state"] == "invalid", shown
    message = str(shown["message"])
    assert message.startswith("Merge failed: ") and "nothing is lost" in message, message
    assert "run 'snapkit snapshot merge s1 --wait' again" in message
    nothing_suspended(vm)
    heal(vm, "lower")
    # nothing is lost even before the retry: unmerged chunks still read from the COW
    assert origin_manifest(vm, "-o ro,noload") == taken
    refused = snapkit(vm, "snapshot", "discard", "s1", check=False)
    assert refused.returncode == 1 and b"merge of s1 is under way" in refused.stderr
    snapkit(vm, "snapshot", "merge", "s1", "--wait")
    assert origin_manifest(vm) == taken
    fsck(vm, "ext4", "/dev/mapper/data")
    nothing_left(vm)


def test_cow_error_while_the_snapshot_lives(vm: Session) -> None:
    vm.sh(STACK)
    snapkit(vm, *CREATE)
    writer = start_writer(vm)  # after the create: a writer shares the one slow vCPU
    fail(vm, "cowdev")
    wait_ledger(vm, ledger(vm) + 10)  # the origin's writer keeps going
    vm.sh("touch /tmp/stop")
    assert writer.wait(120).returncode == 0
    assert "Invalidating snapshot: Error reading/writing" in dmesg(vm)
    shown = status(vm)
    assert shown["state"] == "invalid", shown
    message = str(shown["message"])
    assert message.startswith("invalid: ") and "I/O error" in message, message
    assert "the origin is intact" in message and "snapkit snapshot discard s1" in message
    watched = snapkit(
        vm,
        "snapshot",
        "watch",
        "s1",
        "--extend-at",
        "50",
        "--extend-by",
        "8M",
        "--once",
        check=False,
    )
    assert watched.returncode == 1 and b"is lost, the origin is intact" in watched.stderr
    check_files(vm, "/mnt/o/w", ledger(vm))
    nothing_suspended(vm)
    umount(vm, "/mnt/o")
    fsck(vm, "ext4", "/dev/mapper/data")


@pytest.mark.slow
def test_cow_error_then_discard_once_the_cow_filesystem_is_repaired(vm: Session) -> None:
    """Once the COW's disk is back, discard frees everything; if the COW's filesystem aborted
    its journal meanwhile (seen when its journal commit fell inside the error window, not
    when it fell after the heal), discard cannot delete the COW file, says so in one line, and
    finishes when run again after the filesystem is repaired."""
    vm.sh(STACK)
    snapkit(vm, *CREATE)
    fail(vm, "cowdev")
    vm.sh(CHANGE.format(n=2))
    assert status(vm)["state"] == "invalid"
    heal(vm, "cowdev")
    first = snapkit(vm, "snapshot", "discard", "s1", check=False)
    if first.returncode != 0:  # seen both ways: it depends on when ext4 commits its journal
        assert len(first.stderr.splitlines()) == 1, first.stderr
        vm.sh(
            f"/bin/umount {COW_DIR}; /sbin/e2fsck -fy /dev/mapper/cowdev >/dev/null || "
            f"[ $? -le 2 ]; /bin/mount -o noatime /dev/mapper/cowdev {COW_DIR}"
        )
        snapkit(vm, "snapshot", "discard", "s1")
    assert snapkit(vm, "snapshot", "list").stdout.strip() == b""
    nothing_left(vm)
    vm.sh("echo after > /mnt/o/after; sync")
    umount(vm, "/mnt/o")
    fsck(vm, "ext4", "/dev/mapper/data")


@pytest.mark.slow
def test_origin_error_while_the_snapshot_lives(vm: Session) -> None:
    vm.sh(STACK)
    writer = start_writer(vm)
    snapkit(vm, *CREATE)
    acked = wait_ledger(vm, ledger(vm) + 3)
    fail(vm, "lower")
    assert writer.wait(120).returncode != 0  # the writer met EIO and stopped
    acked = ledger(vm)
    assert b"snapshot Invalid" in vm.sh("dmsetup status s1").stdout
    shown = status(vm)
    assert shown["state"] == "invalid" and "I/O error" in str(shown["message"]), shown
    heal(vm, "lower")
    nothing_suspended(vm)
    umount(vm, "/mnt/o")
    mount(vm, "ext4", "/dev/mapper/data", "/mnt/o")  # replays the journal the error aborted
    check_files(vm, "/mnt/o/w", acked)
    umount(vm, "/mnt/o")
    fsck(vm, "ext4", "/dev/mapper/data")
    snapkit(vm, "snapshot", "discard", "s1")
    nothing_left(vm)


@pytest.mark.slow
def test_cow_unreadable_when_the_merge_starts(vm: Session) -> None:
    taken = snapshot_with_changes(vm)
    current = origin_manifest(vm)
    fail(vm, "cowdev")
    failed = snapkit(vm, "snapshot", "merge", "s1", "--wait", check=False)
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1, failed.stderr
    assert "Failed to read snapshot metadata" in dmesg(vm)
    shown = status(vm)
    assert str(shown["message"]).startswith("merge not started yet"), shown
    nothing_suspended(vm)
    heal(vm, "cowdev")
    assert origin_manifest(vm) == current  # nothing merged: the origin is as it was
    snapkit(vm, "snapshot", "merge", "s1", "--wait")
    assert origin_manifest(vm) == taken
    fsck(vm, "ext4", "/dev/mapper/data")
    nothing_left(vm)
