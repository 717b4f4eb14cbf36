"""The harness foundation, proven on real guests: the kernel and tools the project needs are
there, results come back unchanged, failures are named for what they are, and VMs are isolated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmtests.vm import resume
from vmtests.vm.errors import BootError, LostVMError, PanicError
from vmtests.vm.machine import make_disk
from vmtests.vm.qemu import Disk
from vmtests.vm.session import Session

DM_TARGETS = {
    "snapshot",
    "snapshot-origin",
    "snapshot-merge",
    "thin-pool",
    "thin",
    "delay",
    "flakey",
}


def test_device_mapper_and_loop_modules_load(vm: Session) -> None:
    vm.sh("modprobe -a dm_snapshot dm_thin_pool dm_delay dm_flakey loop")
    targets = {
        line.split()[0] for line in vm.run(["dmsetup", "targets"], check=True).text().splitlines()
    }
    assert targets >= DM_TARGETS
    modules = {line.split()[0] for line in vm.get("/proc/modules").decode().splitlines()}
    assert {"dm_mod", "dm_snapshot", "dm_thin_pool", "dm_delay", "dm_flakey", "loop"} <= modules


def test_lvm_and_filesystem_tools_run(vm: Session) -> None:
    out = vm.sh(
        """
        lvm version
        truncate -s 320M /tmp/xfs.img /tmp/btrfs.img
        x=$(losetup --show -f /tmp/xfs.img)
        b=$(losetup --show -f /tmp/btrfs.img)
        mkfs.xfs -q "$x"
        mkfs.btrfs -q "$b"
        blkid -o value -s TYPE "$x" "$b"
        """
    ).text()
    assert "LVM version" in out
    assert out.split()[-2:] == ["xfs", "btrfs"]


def test_exit_codes_and_streams_come_back_unchanged(vm: Session) -> None:
    for code in (0, 1, 7, 42, 255):
        r = vm.run(["sh", "-c", f"echo out; echo err >&2; exit {code}"])
        assert (r.returncode, r.stdout, r.stderr, r.timed_out) == (code, b"out\n", b"err\n", False)
    assert vm.run(["sh", "-c", "kill -9 $$"]).returncode == -9  # killed by a signal: -signum
    payload = bytes(range(256)) * 512
    assert vm.run(["cat"], input=payload).stdout == payload


def test_guest_command_timeout_is_a_result_not_a_lost_vm(vm: Session) -> None:
    t0 = time.monotonic()
    r = vm.run(["sleep", "30"], timeout=1)
    assert r.timed_out and r.returncode == -9
    assert time.monotonic() - t0 < 10
    assert vm.run(["true"]).ok  # the VM is still fine


def test_guest_panic_is_reported_as_panic_within_seconds(vm: Session) -> None:
    # a guest restored from a saved state (vmtests.vm.resume) unless cold boots were asked for
    assert vm.machine.restored or resume.cold_requested()
    vm.sh("echo 1 > /proc/sys/kernel/sysrq")
    t0 = time.monotonic()
    with pytest.raises(PanicError) as info:
        vm.run(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60"], timeout=120)
    assert time.monotonic() - t0 < 15, "a panic must not wait for the command's timeout"
    assert "Kernel panic" in info.value.console_tail
    assert "sysrq" in info.value.console_tail.lower()


def test_qemu_dying_before_the_agent_is_ready_is_a_quick_boot_error(
    vm_factory: Callable[..., Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU killed right after it connected its ports: no waiting for the boot timeout."""
    from vmtests.vm.machine import Machine

    real_start = Machine.start

    def start_then_die(self: Machine) -> None:
        real_start(self)
        threading.Timer(0.3, self.kill).start()

    monkeypatch.setattr(Machine, "start", start_then_die)
    t0 = time.monotonic()
    with pytest.raises((BootError, PanicError, LostVMError)) as info:
        vm_factory()
    assert time.monotonic() - t0 < 10
    assert isinstance(info.value, BootError | PanicError), (
        f"{type(info.value).__name__}: {info.value}"
    )
    assert "SIGKILL" in str(info.value)


def test_parallel_vms_do_not_interfere(
    vm_factory: Callable[..., Session], vm_artifacts: Path
) -> None:
    paths = [make_disk(vm_artifacts / f"d{i}.raw", 16 << 20) for i in range(2)]
    vms = [vm_factory(disks=[Disk(p, "disk0")], memory_mib=384) for p in paths]
    for i, guest in enumerate(vms):
        guest.sh(
            f"printf 'marker-{i}' | dd of=/dev/vmtest/disk0 bs=512 conv=sync,fsync status=none"
        )
        guest.sh(f"echo {i} > /tmp/who")
    for i, guest in enumerate(vms):
        seen = guest.run(["head", "-c", "8", "/dev/vmtest/disk0"], check=True).stdout
        assert seen == f"marker-{i}".encode()
        assert guest.get("/tmp/who") == f"{i}\n".encode()
    for i, path in enumerate(paths):
        head = path.read_bytes()[:512]
        assert head.rstrip(b"\0") == f"marker-{i}".encode()


def test_testinfra_host_on_the_guest(vm_host) -> None:  # type: ignore[no-untyped-def]
    from vmtests.vm.testinfra_backend import VmtestBackend

    assert isinstance(vm_host.backend, VmtestBackend)
    assert vm_host.run("echo %s; exit 3", "a b'c").rc == 3
    assert vm_host.run("echo %s", "a b'c").stdout == "a b'c\n"
    assert vm_host.check_output("uname -s") == "Linux"
    release = vm_host.file("/etc/os-release")
    assert release.is_file and release.contains("Debian")
    assert not vm_host.file("/nonexistent").exists
    assert vm_host.mount_point("/tmp").filesystem == "tmpfs"
    assert vm_host.mount_point("/").filesystem == "overlay"
    lvm2 = vm_host.package("lvm2")
    assert lvm2.is_installed and lvm2.version
    assert not vm_host.package("no-such-package-here").is_installed
