"""The reboot path the shipped units exist for: a prepared device and a dm snapshot, a clean
power-off, a boot on the same disks, then exactly the commands the units run, in their order,
and an fstab line for ``/dev/mapper/NAME`` mounts with the data of before the reboot.

The commands are parsed from the units ``snapkit install-units`` writes in the guest (their
ExecStart, with the template's ``%i`` and its ``Environment=`` filled in), so this test and the
units cannot drift apart. The guest has no systemd running, so the order is the units' own
(recover is Before=local-fs-pre.target; the mounts are local-fs.target; watch is After= both),
checked from their text. /var/lib/snapkit, the state directory, is a disk of its own mounted in
both boots, as a host's root filesystem keeps it across reboots.

The control: before recover has run, the same fstab mount fails (the device is not there), so
it is recover, run as the unit runs it, that makes the line work.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

UNITS = "/etc/systemd/system"
FSTAB = """
/dev/mapper/data  /mnt/o  ext4  defaults  0  0
/dev/mapper/s1    /mnt/s  ext4  ro        0  0
"""
SETUP = """
mkfs.ext4 -q -F /dev/vmtest/var; mkdir -p /var/lib/snapkit; mount /dev/vmtest/var /var/lib/snapkit
snapkit device prepare /dev/vmtest/origin --name data
mkfs.ext4 -q -F /dev/mapper/data; mkdir -p /mnt/o; mount /dev/mapper/data /mnt/o
echo before > /mnt/o/marker; sync
snapkit snapshot create /mnt/o --name s1 --method dm --cow-size 16M
echo after > /mnt/o/marker; sync
umount /mnt/o
"""


def directive(text: str, key: str) -> list[str]:
    """Every value of ``key=`` in a unit file, in order."""
    return re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)


def exec_start(text: str, instance: str = "") -> list[str]:
    """The unit's one ExecStart as argv, as systemd would run it for ``instance``: ``%i`` is
    the instance, ``${VAR}`` comes from the unit's Environment= lines."""
    env = dict(
        pair.split("=", 1) for line in directive(text, "Environment") for pair in line.split()
    )
    (line,) = directive(text, "ExecStart")
    line = line.replace("%i", instance)
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word) for word in shlex.split(line)]


@pytest.mark.vm
def test_after_a_reboot_the_units_commands_bring_back_what_fstab_mounts(
    vm_factory: Callable[..., Any], vm_artifacts: Path
) -> None:
    from vmtests.vm.machine import make_disk
    from vmtests.vm.qemu import Disk

    folder = vm_artifacts / "disks"
    folder.mkdir(parents=True, exist_ok=True)
    disks = [
        Disk(make_disk(folder / "origin.raw", 96 << 20), "origin"),
        Disk(make_disk(folder / "var.raw", 64 << 20), "var"),
    ]
    first = vm_factory(disks=disks, name="before")
    first.sh(SETUP)
    first.shutdown()

    vm = vm_factory(disks=disks, name="after")
    vm.sh("mkdir -p /var/lib/snapkit /mnt/o /mnt/s; mount /dev/vmtest/var /var/lib/snapkit")
    vm.sh(f"cat >> /etc/fstab <<'EOF'\n{FSTAB}EOF")
    control = vm.run(["mount", "/mnt/o"])
    assert control.returncode != 0, "the fstab line mounted before recover: proves nothing"

    vm.sh(f"snapkit install-units --dir {UNITS}")
    recover = vm.get(f"{UNITS}/snapkit-recover.service").decode()
    watch = vm.get(f"{UNITS}/snapkit-watch@.service").decode()
    # The order the units give systemd: recover, then the local mounts, then watch.
    assert "local-fs-pre.target" in directive(recover, "Before")[0].split()
    assert {"snapkit-recover.service", "local-fs.target"} <= set(
        " ".join(directive(watch, "After")).split()
    )

    argv = exec_start(recover)
    assert argv[1:] == ["recover"] and argv[0].startswith("/")  # the guest's snapkit, by path
    done = vm.run(argv)
    assert done.returncode == 0, done.stderr.decode()

    vm.sh("mount /mnt/o; mount /mnt/s")  # local-fs.target: from the fstab lines
    assert vm.sh("cat /mnt/o/marker").stdout == b"after\n"
    assert vm.sh("cat /mnt/s/marker").stdout == b"before\n"

    # snapkit-watch@s1.service: it runs until the snapshot goes, so 5 s alive (timeout's 124)
    # is success; an error would have ended it at once with 1 or 2.
    argv = exec_start(watch, "s1")
    assert argv[1:4] == ["snapshot", "watch", "s1"] and "--extend-at" in argv
    watched = vm.run(["timeout", "5", *argv])
    assert watched.returncode == 124, watched.stdout.decode() + watched.stderr.decode()
    vm.sh("umount /mnt/s /mnt/o")
