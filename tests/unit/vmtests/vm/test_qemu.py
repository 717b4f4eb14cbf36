"""The QEMU command line: every choice qemu.py documents is visible in the argv it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtests.vm.qemu import Accel, Disk, DiskFormat, Port, VmConfig, command_line, kernel_append


def cfg(**overrides: object) -> VmConfig:
    base: dict[str, object] = {
        "kernel": Path("/img/vmlinuz"),
        "initrd": Path("/w/initrd.img"),
        "accel": Accel.TCG,
        "console_log": Path("/w/console.log"),
    }
    return VmConfig(**{**base, **overrides})  # type: ignore[arg-type]


def opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``, in order."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_defaults_microvm_tcg_no_devices_and_always_ends() -> None:
    argv = command_line(cfg())
    assert argv[0] == "qemu-system-x86_64"
    assert opt(argv, "-M") == ["microvm,isa-serial=on,rtc=on"]
    assert opt(argv, "-accel") == ["tcg"]
    assert opt(argv, "-cpu") == ["max"]
    assert opt(argv, "-m") == ["1024M"]
    assert opt(argv, "-smp") == ["1"]
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert opt(argv, "-kernel") == ["/img/vmlinuz"]
    assert opt(argv, "-initrd") == ["/w/initrd.img"]
    assert opt(argv, "-serial") == ["file:/w/console.log"]
    assert "-netdev" not in argv and "-nic" not in argv
    assert not opt(argv, "-drive") and not opt(argv, "-device")


def test_kernel_args_make_any_panic_end_qemu() -> None:
    args = kernel_append(cfg()).split()
    assert {"console=ttyS0", "panic=-1", "oops=panic", "reboot=t", "pci=off"} <= set(args)


def test_kvm_uses_host_cpu_and_no_tsc_hint() -> None:
    argv = command_line(cfg(accel=Accel.KVM, tsc_khz=2_000_000))
    assert opt(argv, "-accel") == ["kvm"]
    assert opt(argv, "-cpu") == ["host"]
    assert "tsc_early_khz" not in kernel_append(cfg(accel=Accel.KVM, tsc_khz=2_000_000))


def test_tcg_passes_the_host_tsc_rate_only_when_known() -> None:
    assert "tsc_early_khz=2100000" in kernel_append(cfg(tsc_khz=2_100_000)).split()
    assert "tsc_early_khz" not in kernel_append(cfg(tsc_khz=None))


def test_q35_uses_pci_devices_and_keeps_pci() -> None:
    c = cfg(machine="q35", disks=(Disk(Path("/d.raw"), "disk0"),), ports=(Port("a", Path("/s")),))
    argv = command_line(c)
    assert opt(argv, "-M") == ["q35"]
    assert "pci=off" not in kernel_append(c).split()
    devices = opt(argv, "-device")
    assert devices[0].startswith("virtio-blk-pci,")
    assert "virtio-serial-pci" in devices


def test_disks_carry_serial_format_and_readonly() -> None:
    disks = (
        Disk(Path("/root.sqfs"), "vmtest-root", readonly=True),
        Disk(Path("/a.qcow2"), "disk0", DiskFormat.QCOW2),
    )
    argv = command_line(cfg(disks=disks, memory_mib=512, cpus=2))
    assert opt(argv, "-drive") == [
        "id=d0,file=/root.sqfs,format=raw,if=none,cache=unsafe,readonly=on",
        "id=d1,file=/a.qcow2,format=qcow2,if=none,cache=unsafe",
    ]
    assert opt(argv, "-device") == [
        "virtio-blk-device,drive=d0,serial=vmtest-root",
        "virtio-blk-device,drive=d1,serial=disk0",
    ]
    assert (opt(argv, "-m"), opt(argv, "-smp")) == (["512M"], ["2"])


def test_ports_are_client_sockets_on_one_virtio_serial_bus() -> None:
    ports = (Port("stdin", Path("/s/stdin")), Port("status", Path("/s/status")))
    argv = command_line(cfg(ports=ports))
    assert opt(argv, "-chardev") == [
        "socket,id=p0,path=/s/stdin,server=off",
        "socket,id=p1,path=/s/status,server=off",
    ]
    assert opt(argv, "-device") == [
        "virtio-serial-device",
        "virtserialport,chardev=p0,name=stdin",
        "virtserialport,chardev=p1,name=status",
    ]


def test_extra_kernel_args_come_last() -> None:
    assert kernel_append(cfg(extra_append=("foo=1", "bar"))).endswith(" foo=1 bar")


@pytest.mark.parametrize("serial", ["", "x" * 21, "has space", "a,b", "a=b"])
def test_bad_disk_serials_are_refused(serial: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        Disk(Path("/d"), serial)


def test_a_restored_boot_loads_no_kernel_and_keeps_the_device_order() -> None:
    """A restore takes the guest's memory from the state: no -kernel/-initrd/-append, and the
    devices in the same order as the saved boot's (QEMU matches device state by position)."""
    disks = (Disk(Path("/d/a b.raw"), "disk0"), Disk(Path("/d/b.raw"), "disk1"))
    ports = (Port("vmtest-ctl", Path("/s/c")), Port("agent", Path("/s/a")))
    booted = command_line(cfg(disks=disks, ports=ports, qmp=Path("/s/qmp")))
    restored = command_line(cfg(disks=disks, ports=ports, incoming=True, qmp=Path("/s/q2")))
    for flag in ("-kernel", "-initrd", "-append"):
        assert flag in booted and flag not in restored
    assert opt(restored, "-incoming") == ["defer"]  # started over QMP, with x-ignore-shared
    assert opt(booted, "-qmp") == ["unix:/s/qmp,server=on,wait=off"]
    assert "-incoming" not in booted
    assert opt(booted, "-device") == opt(restored, "-device")
    assert opt(booted, "-drive") == opt(restored, "-drive")


def test_guest_ram_in_a_file_is_shared_while_saving_and_private_when_restored() -> None:
    """The saved boot's RAM *is* the file; a restored boot maps it copy-on-write, so no boot
    writes to it and any number of guests can start from it at once."""
    ram = Path("/c/ram")
    saving = command_line(cfg(memory=ram, memory_shared=True, memory_mib=512))
    restoring = command_line(cfg(memory=ram, memory_mib=512, incoming=True))
    assert opt(saving, "-object") == [
        "memory-backend-file,id=ram0,size=512M,mem-path=/c/ram,share=on"
    ]
    assert opt(restoring, "-object") == [
        "memory-backend-file,id=ram0,size=512M,mem-path=/c/ram,share=off"
    ]
    assert opt(restoring, "-M")[0].endswith(",memory-backend=ram0")
    assert (
        "-object" not in command_line(cfg())
        and "memory-backend" not in opt(command_line(cfg()), "-M")[0]
    )
