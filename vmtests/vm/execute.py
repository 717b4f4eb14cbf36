"""Run one command in a fresh VM with its streams relayed live: the ``exec`` fast path.

The guest runs the command straight from the boot script with stdin, stdout and stderr on
three virtio-serial ports and writes its exit status to a fourth; no agent, no Python on the
path, so boot-to-result is as short as the kernel allows. The host pumps each stream in its own
thread, so a command that writes a lot to both streams cannot deadlock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmtests.vm.image import Image
from vmtests.vm.machine import Machine
from vmtests.vm.payload import TREE, Mode, Payload, command_argv
from vmtests.vm.qemu import Accel, Disk

Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class ExecResult:
    """The exit code, and seconds from QEMU's start until the guest reported it."""

    returncode: int
    seconds: float


def _pump_out(sock: socket.socket, sink: Sink) -> None:
    while data := sock.recv(65536):
        sink(data)


def _pump_in(fd: int | None, data: bytes | None, sock: socket.socket) -> None:
    try:
        if data is not None:
            sock.sendall(data)
        elif fd is not None:
            while chunk := os.read(fd, 65536):
                sock.sendall(chunk)
    except OSError:
        pass  # the guest is gone or closed its end; nothing more to send
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the guest reads EOF


def run(
    image: Image,
    argv: Sequence[str],
    workdir: Path,
    *,
    stdout: Sink,
    stderr: Sink,
    stdin_fd: int | None = None,
    stdin_data: bytes | None = None,
    accel: Accel = Accel.TCG,
    memory_mib: int = 1024,
    cpus: int = 1,
    disks: Sequence[Disk] = (),
    timeout: float | None = 600.0,
    tree: Path = TREE,
    cold_boot: bool = False,
) -> ExecResult:
    """Boot, run ``argv``, relay its streams, and return its exit code once QEMU has ended;
    after ``timeout`` seconds QEMU is killed (None: never, for an interactive shell).

    ``tree`` is the folder whose snapkit/ and vmtests/ the guest runs (vmtests.vm.payload);
    ``cold_boot`` boots the kernel even when a saved state could be restored (vm.resume)."""
    payload = Payload(Mode.EXEC, command_argv(argv), tree=tree)
    with Machine(
        image,
        payload,
        workdir,
        accel=accel,
        memory_mib=memory_mib,
        cpus=cpus,
        disks=disks,
        cold_boot=cold_boot,
    ) as vm:
        status = bytearray()
        reported: list[float] = []

        def on_status(data: bytes) -> None:
            reported.append(time.monotonic())
            status.extend(data)

        pumps = [
            threading.Thread(target=_pump_out, args=(vm.ports["stdout"], stdout), daemon=True),
            threading.Thread(target=_pump_out, args=(vm.ports["stderr"], stderr), daemon=True),
            threading.Thread(target=_pump_out, args=(vm.ports["status"], on_status), daemon=True),
        ]
        feeder = threading.Thread(
            target=_pump_in, args=(stdin_fd, stdin_data, vm.ports["stdin"]), daemon=True
        )
        for t in pumps:
            t.start()
        feeder.start()
        vm.wait(timeout)
        for t in pumps:
            t.join(5)
        text = status.decode(errors="replace").strip()
        if not text.isdigit():
            raise vm.failure("before the command finished")
        return ExecResult(int(text), reported[0] - vm.started_at)


def run_quietly(
    image: Image, argv: Sequence[str], workdir: Path, *, accel: Accel, **kwargs: Any
) -> ExecResult:
    """Run with no stdin and the output dropped: for probes and benchmarks."""
    return run(
        image, argv, workdir, stdout=_drop, stderr=_drop, stdin_data=b"", accel=accel, **kwargs
    )


def _drop(_: bytes) -> None:
    pass


__all__ = ["ExecResult", "run", "run_quietly"]
