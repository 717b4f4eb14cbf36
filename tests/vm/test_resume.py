"""Two guests restored from one saved state share nothing a boot must have fresh.

Each gets its own random seed (the kernel's generator re-seeded from the host, so the bytes it
hands out and the boot id differ), the host's clock, its own hostname, and sees only its own
disk: guest A's disk has a partition table and a marker in its partition, guest B's the same
size (so the same saved state) with no partition table and another marker; neither may see
the other's, nor the blank placeholder the state was saved with.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from vmtests.vm import resume, treedisk
from vmtests.vm.image import Image
from vmtests.vm.machine import make_disk
from vmtests.vm.payload import TREE
from vmtests.vm.qemu import Accel, Disk
from vmtests.vm.session import Session

# Both tests boot guests through vm_image (which the plugin does not mark): VM tests, never
# in test-fast, where a missing image would make them skip instead of run.
pytestmark = pytest.mark.vm

SIZE = 64 << 20
PART_START = 2048  # sectors


def _disk_with_partition(path: Path, marker: bytes) -> Path:
    make_disk(path, SIZE)
    entry = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x83, b"\0" * 3, PART_START, 8192)
    with path.open("r+b") as f:
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")
        f.seek(PART_START * 512)
        f.write(marker)
    return path


def _disk_plain(path: Path, marker: bytes) -> Path:
    make_disk(path, SIZE)
    with path.open("r+b") as f:
        f.write(marker)
    return path


PROBE = r"""
d=$(readlink /dev/vmtest/disk0); d=${d#/dev/}
echo "host=$(hostname)"
echo "rand=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "boot=$(cat /proc/sys/kernel/random/boot_id)"
echo "parts=$(ls /sys/block/$d | grep "^$d" | tr '\n' ,)"
echo "disk=$(head -c 8 /dev/vmtest/disk0)"
[ -e /dev/${d}1 ] && echo "part=$(head -c 8 /dev/${d}1)"
echo "clock=$(date +%s.%N)"
"""


def _probe(image: Image, accel: Accel, work: Path, name: str, disk: Path) -> dict[str, str]:
    with Session(image, work / name, accel=accel, disks=[Disk(disk, "disk0")], hostname=name) as vm:
        assert vm.machine.restored, "the guest was booted cold, not restored"
        before = time.time()
        out = vm.sh(PROBE).text()
        after = time.time()
    facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    clock = float(facts["clock"])
    assert before - 1.0 <= clock <= after + 1.0, f"guest clock {clock}, host {before}..{after}"
    return facts


def test_two_restored_guests_get_fresh_seeds_clocks_and_only_their_own_disks(
    vm_image: Image, vm_accel: Accel, vm_artifacts: Path
) -> None:
    if resume.cold_requested():
        pytest.skip("cold boots were asked for")
    a = _probe(
        vm_image,
        vm_accel,
        vm_artifacts,
        "guest-a",
        _disk_with_partition(vm_artifacts / "a.raw", b"MARKER-A"),
    )
    b = _probe(
        vm_image,
        vm_accel,
        vm_artifacts,
        "guest-b",
        _disk_plain(vm_artifacts / "b.raw", b"MARKER-B"),
    )
    assert (a["host"], b["host"]) == ("guest-a", "guest-b")
    assert a["rand"] != b["rand"] and len(a["rand"]) == 64
    assert a["boot"] != b["boot"]
    assert a["part"] == "MARKER-A" and a["parts"].count(",") == 1
    assert a["disk"] != "MARKER-B"
    assert b["disk"] == "MARKER-B" and b["parts"] == "" and "part" not in b


def test_a_state_that_fails_to_restore_is_deleted_and_the_boot_goes_cold(
    vm_image: Image, vm_accel: Accel, vm_artifacts: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The negative control of the fallback: a saved state QEMU cannot load (here overwritten
    with junk) makes that boot cold, not failed; it says why, the state is gone, and the next
    boot saves a new one. An odd memory size gives this test a shape of its own, so no other
    test's boots meet the broken state."""
    if resume.cold_requested():
        pytest.skip("cold boots were asked for")

    def boot(name: str) -> tuple[bool, Path]:
        with Session(vm_image, vm_artifacts / name, accel=vm_accel, memory_mib=1000) as vm:
            assert vm.sh("echo alive").text().strip() == "alive"
            tree_bytes = resume.disk_bytes(treedisk.disk(TREE))
            return vm.machine.restored, resume.entry_dir(vm.machine.shape(tree_bytes))

    restored, entry = boot("first")
    assert restored and (entry / resume.STATE).is_file()
    (entry / resume.STATE).write_bytes(b"not a QEMU state\n" * 64)
    restored, again = boot("broken")
    assert again == entry and not restored
    assert not entry.exists(), "the state that failed was kept"
    assert f"booting cold: the saved state {entry.name} failed" in capfd.readouterr().err
    restored, _ = boot("after")
    assert restored and (entry / resume.STATE).is_file()
