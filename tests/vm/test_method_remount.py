"""``remount-ro`` in a real guest: a read-only window, a copy of the device, and back to rw.

One guest per filesystem: a loop device over a 256 MiB sparse file in /tmp, formatted and
mounted at /mnt/o, with a writer that opens, writes, fsyncs and closes one 16 KiB file every
0.3 s (writes in the read-only window fail with EROFS; the writer counts them and goes on).
The copy must hold every file acknowledged before ``create`` and none acknowledged after it,
be clean for fsck, mount, and match the manifest taken before; merge and discard do what the
method's docstring says.
"""

from __future__ import annotations

import json
import time

import pytest
from workload import FSCK, MKFS, check_files, fingerprint, ledger, manifest, snapkit, wait_ledger

from vmtests import guest
from vmtests.vm.session import Session

DEV = "/dev/loop0"
IMAGE = "/tmp/cow/s.img"
CREATE = (
    "snapshot",
    "create",
    "/mnt/o",
    "--name",
    "s",
    "--method",
    "remount-ro",
    "--cow-dir",
    "/tmp/cow",
)


SIZE = {"xfs": "320M"}  # mkfs.xfs refuses less than 300 MB; the others get 256 MiB


def setup(vm: Session, fs: str) -> None:
    vm.sh(
        f"modprobe {fs} 2>/dev/null || true; mkdir -p /mnt/o /mnt/s /tmp/cow; "
        f"truncate -s {SIZE.get(fs, '256M')} /tmp/o.img; /sbin/losetup {DEV} /tmp/o.img; "
        f"{MKFS[fs]} {DEV} >/dev/null; mount -t {fs} {DEV} /mnt/o; "
        "echo before > /mnt/o/marker; sync"
    )


def read_only(vm: Session, mp: str = "/mnt/o") -> bool:
    options = vm.sh(f"awk '$2 == \"{mp}\" {{print $4}}' /proc/mounts").stdout.decode()
    return options.split(",")[0] == "ro"


def create_under_writer(vm: Session) -> tuple[int, int, dict[str, str]]:
    """Ledger counts just before and just after a successful create, and the manifest taken
    before it. The remount is refused (EBUSY) if it lands while the writer has its file open:
    documented, so a refusal is retried, and each refusal must have left the fs writable."""
    for _attempt in range(5):
        before = ledger(vm)
        listed = manifest(vm, "/mnt/o/w")
        taken = {k: v for k, v in listed.items() if int(k[1:]) <= before}
        result = vm.run(["snapkit", *CREATE], env={"SNAPKIT_STATE_DIR": "/tmp/state"}, timeout=300)
        after = ledger(vm)
        if result.returncode == 0:
            return before, after, taken
        assert result.returncode == 1, result.stderr.decode()  # the wording: test below
        assert b"remount,ro" in result.stderr, result.stderr.decode()
        assert not read_only(vm)
    raise AssertionError("create was refused five times in a row")


def mount_copy(vm: Session, fs: str) -> None:
    if fs == "btrfs":  # same fsid as the origin: 6.1 refuses it while the origin is mounted
        vm.sh("umount /mnt/o")
    snapkit(vm, "snapshot", "mount", "s", "/mnt/s")  # xfs: nouuid, from the recorded fstype


@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_remount_ro_lifecycle(vm: Session, fs: str) -> None:
    setup(vm, fs)
    # writer.py under remount-ro's documented refusal (EROFS in the window), at an idle pace
    argv = ["write", "/mnt/o/w", "/tmp/ledger", "/tmp/stop", "remount-ro", "0.3"]
    writer = vm.spawn(guest.command("writer", *argv))
    wait_ledger(vm, 3)
    before, after, taken = create_under_writer(vm)
    assert not read_only(vm), "the filesystem was left read-only"
    wait_ledger(vm, after + 2, timeout=60)  # the writer goes on: rw again
    vm.sh("touch /tmp/stop")
    done = writer.wait(60)
    assert done.returncode == 0, done.stderr.decode()
    vm.sh("echo after > /mnt/o/marker; sync")

    # the copy is clean
    check = vm.run([*FSCK[fs], IMAGE], timeout=300)
    assert check.returncode == 0, (check.stdout + check.stderr).decode(errors="replace")

    # status and list show it
    status = json.loads(snapkit(vm, "snapshot", "status", "s", "--json").stdout)
    assert status["state"] == "active" and status["device"] == IMAGE, status
    listed = json.loads(snapkit(vm, "snapshot", "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["s"], listed

    # its files: all acknowledged before create, none acknowledged after, as in the manifest
    mount_copy(vm, fs)
    highest = check_files(vm, "/mnt/s/w", before)
    assert highest <= after, f"f{highest} is in the copy but was written after create"
    copied = manifest(vm, "/mnt/s/w")
    assert {k: copied.get(k) for k in taken} == taken
    assert vm.sh("cat /mnt/s/marker").stdout.strip() == b"before"
    vm.sh("umount /mnt/s")

    # merge: refused while the origin is mounted, then copies the image back
    if fs == "btrfs":
        vm.sh(f"mount -t btrfs {DEV} /mnt/o")
    refused = vm.run(["snapkit", "snapshot", "merge", "s"], env={"SNAPKIT_STATE_DIR": "/tmp/state"})
    assert refused.returncode == 1 and refused.stderr.decode().count("\n") == 1, refused.stderr
    assert b"is mounted at /mnt/o" in refused.stderr
    vm.sh("umount /mnt/o")
    snapkit(vm, "snapshot", "merge", "s")
    vm.sh(f"mount -t {fs} {DEV} /mnt/o")
    assert vm.sh("cat /mnt/o/marker").stdout.strip() == b"before"
    assert manifest(vm, "/mnt/o/w") == copied
    assert vm.run(["test", "-e", IMAGE]).returncode == 1
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []

    # discard: the origin keeps what it has now, the image goes
    snapkit(vm, *CREATE)
    vm.sh("echo changed > /mnt/o/marker; sync")
    snapkit(vm, "snapshot", "discard", "s")
    assert vm.sh("cat /mnt/o/marker").stdout.strip() == b"changed"
    assert vm.sh("ls -A /tmp/cow").stdout.strip() == b""
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []


def hold_a_file_open(vm: Session) -> None:
    vm.spawn(["sh", "-c", "exec 3>>/mnt/o/held; sleep 600"])
    deadline = time.monotonic() + 30
    while b"/mnt/o/held" not in vm.run(["sh", "-c", "ls -l /proc/*/fd"]).stdout:
        assert time.monotonic() < deadline, "the holder never opened its file"
        time.sleep(0.1)


def test_a_file_open_for_writing_refuses_and_changes_nothing(vm: Session) -> None:
    setup(vm, "ext4")
    hold_a_file_open(vm)
    seen = fingerprint(vm, DEV)
    result = snapkit(vm, *CREATE, check=False)
    assert result.returncode == 1, result.stderr.decode()
    assert fingerprint(vm, DEV) == seen
    assert not read_only(vm)


def test_the_refusal_says_why_in_one_line(vm: Session) -> None:
    setup(vm, "ext4")
    hold_a_file_open(vm)
    result = snapkit(vm, *CREATE, check=False)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr.decode()
    assert "busy" in lines[0].lower(), lines[0]


def test_snapshot_mount_of_an_xfs_copy_beside_its_origin(vm: Session) -> None:
    """Also without --cow-dir: the image goes under the state directory, made on demand."""
    setup(vm, "xfs")
    vm.sh("rm -rf /tmp/state")
    snapkit(vm, *CREATE[:-2])
    assert vm.run(["test", "-s", "/tmp/state/cow/s.img"]).returncode == 0
    snapkit(vm, "snapshot", "mount", "s", "/mnt/s")
    assert vm.sh("cat /mnt/s/marker").stdout.strip() == b"before"
    assert b"nouuid" in vm.sh("grep ' /mnt/s ' /proc/mounts").stdout
