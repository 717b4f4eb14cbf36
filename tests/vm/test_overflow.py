"""COW overflow (issue 6, item 3) on the real 6.1 guest: a full COW is detected by ``status``
and ``watch`` and said in plain words; with ``watch --extend-at`` the same load fits.

Measured, and asserted below:

* ``P`` (what snapkit and LVM create): a COW filled by the origin's writes invalidates the
  snapshot (status ``Invalid``; dmesg "Invalidating snapshot: Unable to allocate exception");
  the origin's writes go on and it stays fsck-clean.
* ``PO``: a COW filled by writes *to the snapshot* sets the in-memory overflow flag (status
  ``Overflow``); those writes fail with EIO, reads of the snapshot still work. The next origin
  write that needs a chunk turns it ``Invalid`` -- with the origin mounted, ext4's own
  background writes did so within seconds, so the test fills the COW with it unmounted.
* LVM marks a full snapshot ``I`` in lv_attr; ``watch --extend-at`` grows it with
  ``lvextend`` before it fills.
"""

from __future__ import annotations

import json
import signal

import pytest
from workload import COW_DIR, ENV, fsck, setup_origin, snapkit, umount, wait_said

from vmtests.vm.session import Session

MB_WRITES = (
    "for i in $(seq 1 {n}); do dd if=/dev/urandom of={mp}/{tag}$i bs=1M count=1 conv=fsync "
    "2>/dev/null; sleep 0.3; done"
)


def status(vm: Session, name: str = "s1") -> dict[str, object]:
    return dict(json.loads(snapkit(vm, "snapshot", "status", name, "--json").stdout))


def watch_once(vm: Session, name: str = "s1"):  # type: ignore[no-untyped-def]
    return snapkit(
        vm,
        "snapshot",
        "watch",
        name,
        "--extend-at",
        "50",
        "--extend-by",
        "32M",
        "--once",
        check=False,
    )


def test_po_overflow_is_said_in_plain_words_and_reads_still_work(vm: Session) -> None:
    setup_origin(vm, "ext4", size="64M")
    # Unmounted before the create, not after: ext4's lazy inode-table init writes to the
    # origin in the background, and a CI run saw it fill this 1M COW before the umount.
    umount(vm, "/mnt/o")
    snapkit(
        vm,
        "snapshot",
        "create",
        "/dev/mapper/data",
        "--name",
        "s1",
        "--method",
        "dm",
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "1M",
    )
    # the same snapshot, its table reloaded with the overflow-tolerant store
    vm.sh(
        "T=$(dmsetup table s1 | sed 's/ P 8$/ PO 8/'); dmsetup load s1 --table \"$T\"; "
        "dmsetup suspend s1; dmsetup resume s1; dmsetup table s1 | grep -q ' PO 8$'"
    )
    assert status(vm)["state"] == "active"  # the negative control: not full yet
    filled = vm.run(
        ["dd", "if=/dev/urandom", "of=/dev/mapper/s1", "bs=64k", "count=32", "oflag=direct"]
    )
    assert filled.returncode != 0, "a 2M write fitted in a 1M COW"
    assert vm.sh("dmsetup status s1").stdout.split()[3:] == [b"Overflow"]
    shown = status(vm)
    assert shown["state"] == "overflow", shown
    message = str(shown["message"])
    assert message.startswith("overflow: the COW is full") and "reads still work" in message
    assert message.endswith("snapkit snapshot discard s1"), message
    told = watch_once(vm)
    assert told.returncode == 1 and b"is overflow" in told.stderr, told.stderr
    assert len(told.stderr.splitlines()) == 1
    vm.sh("dd if=/dev/mapper/s1 of=/dev/null bs=64k count=64")  # reads still work
    # an origin write that needs a COW chunk still invalidates, as under P
    vm.sh("dd if=/dev/zero of=/dev/mapper/data bs=4k count=1 seek=8000 oflag=direct")
    assert status(vm)["state"] == "invalid"
    snapkit(vm, "snapshot", "discard", "s1")
    fsck(vm, "ext4", "/dev/mapper/data")


@pytest.mark.slow
def test_p_overflow_under_a_writer_is_said_in_plain_words(vm: Session) -> None:
    setup_origin(vm, "ext4", size="160M")
    snapkit(
        vm,
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
        "8M",
    )
    vm.sh(MB_WRITES.format(n=16, mp="/mnt/o", tag="a"), timeout=600)
    assert "Unable to allocate exception" in vm.sh("dmesg").stdout.decode(errors="replace")
    shown = status(vm)
    assert shown["state"] == "invalid", shown
    assert "its COW filled up" in str(shown["message"]), shown
    told = watch_once(vm)
    assert told.returncode == 1 and b"filled up" in told.stderr, told.stderr
    snapkit(vm, "snapshot", "discard", "s1")
    umount(vm, "/mnt/o")
    fsck(vm, "ext4", "/dev/mapper/data")


LVM_VG = (
    "truncate -s 400M /tmp/pv.img; L=$(/sbin/losetup --show -f /tmp/pv.img); "
    "pvcreate -q $L; vgcreate -q vg $L; lvcreate -q -y -n lv -L 160M vg; "
    "mkfs.ext4 -q /dev/vg/lv; mkdir -p /mnt/o; mount /dev/vg/lv /mnt/o"
)


def _lv_attr(vm: Session, name: str) -> str:
    return vm.sh(f"lvs --noheadings -o lv_attr vg/{name}").stdout.decode().strip()


@pytest.mark.slow
def test_lvm_overflow_is_said_and_watch_prevents_it(vm: Session) -> None:
    vm.sh(LVM_VG)
    # without watch: an 8M COW under 16 MiB of new data
    snapkit(
        vm, "snapshot", "create", "/mnt/o", "--name", "s1", "--method", "lvm", "--cow-size", "8M"
    )
    vm.sh(MB_WRITES.format(n=16, mp="/mnt/o", tag="a"), timeout=600)
    assert _lv_attr(vm, "s1")[4] == "I", _lv_attr(vm, "s1")
    shown = status(vm)
    assert shown["state"] == "invalid" and "its COW filled up" in str(shown["message"]), shown
    told = watch_once(vm)
    assert told.returncode == 1 and b"filled up" in told.stderr, told.stderr
    snapkit(vm, "snapshot", "discard", "s1")
    # with watch: the same load, the same COW
    snapkit(
        vm, "snapshot", "create", "/mnt/o", "--name", "s2", "--method", "lvm", "--cow-size", "8M"
    )
    env = " ".join(f"{k}={v}" for k, v in ENV.items())
    args = "--extend-at 50 --extend-by 32M --interval 0.2"
    proc = vm.spawn(
        [
            "sh",
            "-c",
            f"exec env {env} snapkit snapshot watch s2 {args} >/tmp/watch.out 2>/tmp/watch.err",
        ]
    )
    wait_said(vm, "/tmp/watch.out", b"watching s2")  # on guard before the writes
    vm.sh(MB_WRITES.format(n=16, mp="/mnt/o", tag="b"), timeout=600)
    assert status(vm, "s2")["state"] == "active", vm.get("/tmp/watch.err")
    assert _lv_attr(vm, "s2")[4] == "a"
    assert b"grew it by" in vm.get("/tmp/watch.out")
    proc.signal(signal.SIGTERM)
    proc.wait(60)
    check = vm.run(["e2fsck", "-fn", "/dev/vg/s2"], timeout=300)
    assert check.returncode == 0, check.stdout.decode()
    snapkit(vm, "snapshot", "discard", "s2")
    umount(vm, "/mnt/o")
    fsck(vm, "ext4", "/dev/vg/lv")
