"""``lvm`` and ``lvm-thin`` in a real guest: create under a writer, fsck, mount, merge, discard.

Each test boots one guest, builds a VG on a loop device over a sparse file in /tmp, puts the
filesystem on an LV and drives snapkit through its CLI. The helpers here are shared by the other
method tests (btrfs, freeze, remount).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from vmtests.vm.session import Session

FILESYSTEMS = ("ext4", "xfs", "btrfs")
MKFS = {"ext4": "mkfs.ext4 -q", "xfs": "mkfs.xfs -q -f", "btrfs": "mkfs.btrfs -q -f"}
FSCK = {"ext4": "e2fsck -fn", "xfs": "xfs_repair -n", "btrfs": "btrfs check --readonly"}
# A block-level snapshot of a mounted xfs keeps a log that needs replay (the 6.1 freeze covers
# the log but writes no unmount record), and xfs_repair -n refuses to judge such a log. So the
# (writable) snapshot is mounted once to replay it, then checked; ext4 and btrfs are checked as
# they are.
REPLAY = {"xfs": "mount -o nouuid {dev} /mnt/s && umount /mnt/s && "}
WRITER = (
    "i=0; while :; do dd if=/dev/urandom of={mp}/w$((i % 50)) bs=64k count=4 conv=fsync "
    "2>/dev/null; i=$((i+1)); done"
)
PV_SIZE = "1200M"


def make_vg(vm: Session) -> None:
    vm.sh(
        f"truncate -s {PV_SIZE} /tmp/pv.img; L=$(/sbin/losetup --show -f /tmp/pv.img); "
        "pvcreate -q $L; vgcreate -q vg $L"
    )


def make_fs(vm: Session, fs: str, device: str, mp: str = "/mnt/o") -> None:
    vm.sh(
        f"{MKFS[fs]} {device}; mkdir -p {mp} /mnt/s; mount {device} {mp}; "
        f"echo before > {mp}/marker; sync"
    )


def start_writer(vm: Session, mp: str = "/mnt/o"):  # type: ignore[no-untyped-def]
    return vm.spawn(["sh", "-c", WRITER.format(mp=mp)])


def stop_writer(writer) -> None:  # type: ignore[no-untyped-def]
    writer.signal(signal.SIGKILL)
    writer.wait(30)


def snapkit(vm: Session, *args: str, timeout: float = 300):  # type: ignore[no-untyped-def]
    result = vm.run(["snapkit", *args], timeout=timeout)
    assert result.returncode == 0, result.stderr.decode()
    return result


def marker(vm: Session, mp: str) -> str:
    return vm.run(["cat", f"{mp}/marker"], check=True).stdout.decode().strip()


def mount_snapshot(vm: Session, fs: str, device: str, options: str = "") -> str:
    """Mount the snapshot read-only beside the origin, return its marker, unmount."""
    opts = {"ext4": "ro,noload", "xfs": "ro,norecovery,nouuid", "btrfs": "ro"}[fs]
    vm.sh(f"mount -t {fs} -o {options or opts} {device} /mnt/s")
    try:
        return marker(vm, "/mnt/s")
    finally:
        vm.sh("umount /mnt/s")


def lvs(vm: Session) -> str:
    return vm.run(["lvs", "-a", "--noheadings", "-o", "lv_name,lv_attr", "vg"]).stdout.decode()


# What a blocked or failing probe leaves to read: the device-mapper state, LVM's view, the
# kernel's last words and the kernel stack of every task in uninterruptible sleep (who waits
# on what). Issue 17's one unexplained CI failure said only "still blocked".
BLOCKED_DIAGNOSIS = (
    "dmsetup info -c; dmsetup table; lvs -a -o +lv_attr 2>&1; dmesg | tail -40; "
    "for t in /proc/[0-9]*; do if grep -q '^State:.*D' $t/status 2>/dev/null; then "
    'echo "== $(cat $t/comm) $t"; cat $t/stack 2>/dev/null; fi; done; ps -eo pid,stat,etime,args'
)


def assert_writable(vm: Session, mp: str = "/mnt/o") -> None:
    """A write plus fsync that returns proves nothing is frozen or suspended under ``mp``.

    On failure the message says which it was (a timeout: blocked; an exit status: the write
    or the fsync failed) and carries BLOCKED_DIAGNOSIS's output, taken before anything else.
    """
    result = vm.run(["sh", "-c", f"echo probe > {mp}/probe && sync {mp}/probe"], timeout=20)
    if result.returncode == 0 and not result.timed_out:
        return
    why = "timed out after 20 s" if result.timed_out else f"exited {result.returncode}"
    seen = vm.run(["sh", "-c", BLOCKED_DIAGNOSIS], timeout=60)
    raise AssertionError(
        f"the filesystem is still blocked: the probe {why}: {result.stderr.decode()}\n"
        f"{seen.stdout.decode()}{seen.stderr.decode()}"
    )


def status_of(vm: Session, name: str) -> str:
    shown = snapkit(vm, "snapshot", "status", name, "--json").stdout
    return str(json.loads(shown)["state"])


def lifecycle(vm: Session, fs: str, method: str, origin: str) -> None:
    """The five checks of the issue, on one origin LV mounted at /mnt/o."""
    make_fs(vm, fs, origin)
    writer = start_writer(vm)
    time.sleep(1)
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s1", "--method", method)
    vm.sh("echo after > /mnt/o/marker; sync")
    stop_writer(writer)
    # 2. the snapshot is clean
    replay = REPLAY.get(fs, "").format(dev="/dev/vg/s1")
    check = vm.run(["sh", "-c", f"{replay}{FSCK[fs]} /dev/vg/s1"], timeout=300)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    # 3. it shows the data from before (btrfs: a second mount of the same fsid is refused on
    # this kernel while the origin is mounted, so it is checked after the origin's umount)
    if fs != "btrfs":
        assert mount_snapshot(vm, fs, "/dev/vg/s1") == "before"
        snapkit(vm, "snapshot", "mount", "s1", "/mnt/s")  # the LV, xfs with nouuid
        assert marker(vm, "/mnt/s") == "before"
        vm.sh("umount /mnt/s")
    # 4. merge: deferred while mounted, completed by the documented step
    merged = snapkit(vm, "snapshot", "merge", "s1", "--json")
    assert b"lvchange --refresh vg/lv" in merged.stderr
    reported = json.loads(merged.stdout)  # scheduled, not done: said so, the record kept
    assert reported["state"] == "merging", reported
    assert "umount /mnt/o, then run 'lvchange --refresh vg/lv'" in reported["message"]
    assert "merging" in vm.run(["lvs", "-a", "-o", "lv_name,lv_merging", "vg"]).stdout.decode()
    assert status_of(vm, "s1") == "merging"
    assert marker(vm, "/mnt/o") == "after"  # nothing happened to the mounted origin
    vm.sh("umount /mnt/o; lvchange --refresh vg/lv")
    assert "s1" not in lvs(vm)
    assert status_of(vm, "s1") == "merged"  # LVM has finished: reported, and forgotten
    assert snapkit(vm, "snapshot", "list").stdout.strip() == b""
    vm.sh("mount /dev/vg/lv /mnt/o")
    assert marker(vm, "/mnt/o") == "before"
    # 5. discard: the origin keeps what it has now
    snapkit(vm, "snapshot", "create", "/mnt/o", "--name", "s2", "--method", method)
    vm.sh("echo changed > /mnt/o/marker; sync")
    if fs == "btrfs":
        vm.sh("umount /mnt/o")
        assert mount_snapshot(vm, fs, "/dev/vg/s2") == "before"
        vm.sh("mount /dev/vg/lv /mnt/o")
    snapkit(vm, "snapshot", "discard", "s2")
    assert "s2" not in lvs(vm)
    assert marker(vm, "/mnt/o") == "changed"
    assert snapkit(vm, "snapshot", "list").stdout.strip() == b""


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_lvm_lifecycle(vm: Session, fs: str) -> None:
    make_vg(vm)
    vm.sh("lvcreate -q -L 300M -n lv vg")
    lifecycle(vm, fs, "lvm", "/dev/vg/lv")


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_lvm_thin_lifecycle(vm: Session, fs: str) -> None:
    make_vg(vm)
    vm.sh(
        "lvcreate -q --type thin-pool -L 600M -n pool vg; lvcreate -q -V 300M --thin -n lv vg/pool"
    )
    lifecycle(vm, fs, "lvm-thin", "/dev/vg/lv")


def test_auto_picks_lvm_and_says_why(vm: Session) -> None:
    make_vg(vm)
    vm.sh("lvcreate -q -L 100M -n lv vg")
    make_fs(vm, "ext4", "/dev/vg/lv")
    plan = snapkit(
        vm, "snapshot", "create", "/mnt/o", "--name", "s", "--method", "auto", "--dry-run"
    ).stdout.decode()
    assert "lvcreate" in plan and "auto: lvm, because it is an LVM logical volume" in plan


# delay 0.5 was kept in `make test-slow` from 2026-11-26 to 2026-12-04 after one CI run in which
# the filesystem stayed blocked. Diagnosed (RELIABILITY.md, "Signals"): that run predates 60807dc,
# when the executor still SIGKILLed lvcreate on the interrupt; under load, 0.5 s after lvcreate
# starts falls inside its suspend, and a lvcreate killed there leaves the origin suspended for good
# (reproduced deterministically by tests/vm/test_signals_lvm.py before the fix). Since the fix,
# lvcreate is let finish and then undone, and every run held, so the case is back in `make test`.
@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5])
def test_sigint_during_create_restores_the_state(vm: Session, delay: float) -> None:
    """SIGINT at several points inside ``lvcreate``: either the snapshot exists and is recorded,
    or nothing is left; never a suspended origin, a half-made LV or a stray record."""
    make_vg(vm)
    vm.sh("lvcreate -q -L 100M -n lv vg")
    make_fs(vm, "ext4", "/dev/vg/lv")
    writer = start_writer(vm)
    proc = vm.spawn(["snapkit", "snapshot", "create", "/mnt/o", "--name", "s1", "--method", "lvm"])
    deadline = time.monotonic() + 60
    while vm.run(["pgrep", "-x", "lvcreate"]).returncode != 0:
        assert time.monotonic() < deadline, "lvcreate never started"
    time.sleep(delay)
    proc.signal(signal.SIGINT)
    result = proc.wait(60)
    stop_writer(writer)
    assert_writable(vm)
    states = vm.run(["dmsetup", "info", "-c", "--noheadings", "-o", "suspended"]).stdout
    assert b"Suspended" not in states
    listed = snapkit(vm, "snapshot", "list").stdout
    if result.returncode == 0:  # the signal came after the plan: the snapshot stands, recorded
        assert "s1" in lvs(vm) and b"s1" in listed
    else:
        assert b"interrupted" in result.stderr, result.stderr.decode()
        assert "s1" not in lvs(vm) and b"s1" not in listed
