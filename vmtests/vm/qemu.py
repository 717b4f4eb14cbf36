"""The QEMU command line, as a pure function of a typed configuration.

Kept free of I/O so that every choice (machine type, accelerator, devices, kernel arguments) is
unit-tested without starting anything. The choices and why:

- ``microvm`` boots fastest (no PCI, no option ROMs, qboot firmware). It has no HPET or ACPI PM
  timer, so under TCG the kernel's TSC calibration against the PIT sometimes fails under load
  and the boot stalls for good; ``tsc_early_khz`` (the host's TSC rate, which is what TCG's
  guest TSC ticks at) removes that calibration. ``q35`` is the fallback machine.
- No network device, no default devices, no user config: nothing the test did not ask for.
- ``panic=-1`` with ``-no-reboot``: a panic or a guest reboot ends QEMU at once. ``reboot=t``
  makes that reboot a triple fault: ``microvm`` has no ACPI, keyboard-controller or PCI reset,
  and the kernel's default reset methods leave a panicked guest spinning until the timeout.
- Every disk carries a serial, so the guest names it /dev/vmtest/<serial> whatever its vdX.
- A restored boot (``incoming``: a saved state, vmtests.vm.resume) has no ``-kernel``,
  ``-initrd`` or ``-append``: the guest's memory comes from the state, so loading the 53 MB
  kernel again would only cost time. Its devices must come in the saved boot's order, which
  this function keeps by building both from the same code. It waits (``-incoming defer``) for
  the host to start the restore over QMP (``qmp``, a control socket), because the capability
  that keeps guest RAM out of the state (x-ignore-shared) can be set only there in QEMU 7.2.
- ``memory``: guest RAM in a file (memory-backend-file) rather than anonymous memory. A saved
  boot maps it shared, so the file *is* the saved RAM and the state holds only the devices
  (and the firmware's small ROM); a restored boot maps the same file private, copy-on-write:
  QEMU neither reads the 90 MB the saved guest used nor copies them, the host's page cache
  serves each page the guest touches, and no boot ever writes to the file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Disk:
    """A block device for the guest. ``serial`` must be unique and at most 20 bytes."""

    path: Path
    serial: str
    format: DiskFormat = DiskFormat.RAW
    readonly: bool = False

    def __post_init__(self) -> None:
        if not self.serial or len(self.serial) > 20 or not self.serial.replace("-", "").isalnum():
            raise ValueError(f"disk serial {self.serial!r}: 1-20 letters, digits or '-'")


@dataclass(frozen=True)
class Port:
    """A virtio-serial port connected to a host Unix socket on which the host listens."""

    name: str
    socket: Path


@dataclass(frozen=True)
class VmConfig:
    kernel: Path
    initrd: Path
    accel: Accel
    console_log: Path
    memory_mib: int = 1024
    cpus: int = 1
    machine: str = "microvm"
    disks: tuple[Disk, ...] = ()
    ports: tuple[Port, ...] = ()
    tsc_khz: int | None = None
    extra_append: tuple[str, ...] = field(default=())
    incoming: bool = False  # restore a saved state (started over qmp) instead of booting
    qmp: Path | None = None  # a QMP socket QEMU listens on
    memory: Path | None = None  # guest RAM in this file (see the module's docstring)
    memory_shared: bool = False  # map it shared (a saved boot) or private (a restored one)

    @property
    def uses_pci(self) -> bool:
        return self.machine != "microvm"


# Kernel arguments that shorten a TCG boot without changing what is tested: no crypto
# self-tests, no KASLR relocation, no speculative-execution mitigations (all cost emulated time).
FAST_BOOT_ARGS = ("quiet", "cryptomgr.notests", "nokaslr", "mitigations=off", "8250.nr_uarts=1")


def kernel_append(cfg: VmConfig) -> str:
    args = ["console=ttyS0", "panic=-1", "oops=panic", "reboot=t", *FAST_BOOT_ARGS]
    if cfg.machine == "microvm":
        args.append("pci=off")
    if cfg.accel is Accel.TCG and cfg.tsc_khz:
        # tsc=reliable: with several vCPUs the clocksource watchdog sees TCG's per-vCPU skew,
        # marks the TSC unstable and falls back to 4 ms jiffies, which blurs every latency
        # the benchmarks measure inside the guest.
        args += [f"tsc_early_khz={cfg.tsc_khz}", "tsc=reliable"]
    args.extend(cfg.extra_append)
    return " ".join(args)


def _device(kind: str, cfg: VmConfig) -> str:
    return f"{kind}-{'pci' if cfg.uses_pci else 'device'}"


def command_line(cfg: VmConfig, qemu: str = "qemu-system-x86_64") -> list[str]:
    machine = cfg.machine
    if machine == "microvm":
        machine += ",isa-serial=on,rtc=on"
    if cfg.memory is not None:
        machine += ",memory-backend=ram0"
    argv = [
        qemu,
        "-M",
        machine,
        "-accel",
        str(cfg.accel),
        "-cpu",
        "host" if cfg.accel is Accel.KVM else "max",
        "-m",
        f"{cfg.memory_mib}M",
        "-smp",
        str(cfg.cpus),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]
    if cfg.memory is not None:
        share = "on" if cfg.memory_shared else "off"
        argv += [
            "-object",
            f"memory-backend-file,id=ram0,size={cfg.memory_mib}M,mem-path={cfg.memory},"
            f"share={share}",
        ]
    if not cfg.incoming:
        argv += ["-kernel", str(cfg.kernel), "-initrd", str(cfg.initrd)]
        argv += ["-append", kernel_append(cfg)]
    argv += ["-serial", f"file:{cfg.console_log}"]
    for i, disk in enumerate(cfg.disks):
        ro = ",readonly=on" if disk.readonly else ""
        argv += [
            "-drive",
            f"id=d{i},file={disk.path},format={disk.format},if=none,cache=unsafe{ro}",
            "-device",
            f"{_device('virtio-blk', cfg)},drive=d{i},serial={disk.serial}",
        ]
    if cfg.ports:
        argv += ["-device", _device("virtio-serial", cfg)]
    for i, port in enumerate(cfg.ports):
        argv += [
            "-chardev",
            f"socket,id=p{i},path={port.socket},server=off",
            "-device",
            f"virtserialport,chardev=p{i},name={port.name}",
        ]
    if cfg.qmp is not None:
        argv += ["-qmp", f"unix:{cfg.qmp},server=on,wait=off"]
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    return argv


__all__ = [
    "FAST_BOOT_ARGS",
    "Accel",
    "Disk",
    "DiskFormat",
    "Port",
    "VmConfig",
    "command_line",
    "kernel_append",
]
