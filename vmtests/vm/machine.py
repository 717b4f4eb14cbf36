"""The Machine lifecycle: one throwaway QEMU process, always reaped.

QEMU is started through ``setpriv --pdeathsig KILL`` in its own session, so it dies with the
process that started it (even on SIGKILL of that process), a terminal's Ctrl-C reaches only the
harness (which then kills QEMU in ``__exit__``), and no code path can leave it running. The
host listens on one Unix socket per virtio-serial port before QEMU starts and QEMU connects as
a client, so no byte the guest writes early is lost.

Unless told to boot cold (``cold_boot``, ``$VMTEST_COLD_BOOT``), a Machine starts from the saved
state of its shape (vmtests.vm.resume), saving it first if there is none; when a state cannot
be saved or restored it says why once, deletes a state that failed, and boots cold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from vmtests.vm import cache, resume, treedisk
from vmtests.vm import payload as payload_mod
from vmtests.vm.errors import BootError, ImageError, LostVMError, PanicError, VmError, VmTimeout
from vmtests.vm.image import Image
from vmtests.vm.kernel.layer import MODULES_SERIAL
from vmtests.vm.qemu import Accel, Disk, Port, VmConfig, command_line

_PANIC_MARKERS = (
    "Kernel panic - not syncing",
    "vmtest-init: FATAL",
    "vmtest-park: FATAL",
    "vmtest-stage2: FATAL",
)
ROOT_SERIAL = "vmtest-root"  # the disks every boot has come first; MODULES_SERIAL follows
_EXIT_GRACE_S = 2.0  # how long a QEMU whose channel closed gets to finish exiting


def host_tsc_khz() -> int | None:
    """The host's TSC rate, which is what a TCG guest's TSC ticks at (see qemu.py)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


class Machine:
    """A VM booted from ``image`` that runs ``payload``; use it as a context manager."""

    def __init__(
        self,
        image: Image,
        payload: payload_mod.Payload,
        workdir: Path,
        *,
        accel: Accel = Accel.TCG,
        memory_mib: int = 1024,
        cpus: int = 1,
        disks: Sequence[Disk] = (),
        machine: str = "microvm",
        connect_timeout: float = 30.0,
        cold_boot: bool = False,
    ) -> None:
        self.image = image
        self.payload = payload
        self.workdir = workdir
        self.accel = accel
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.disks = tuple(disks)
        self.machine = machine
        self.connect_timeout = connect_timeout
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        self.ports: dict[str, socket.socket] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._sockdir: str | None = None
        self.started_at = 0.0
        self.cold_boot = cold_boot or resume.cold_requested()
        self.restored = False  # whether this boot came from a saved state
        # A restored boot's tree, on a read-only disk after the image's two (vm.treedisk).
        self.tree_disk: Disk | None = None
        # Guest RAM in a file: a saved state's (qemu.py), shared while saving, private after.
        self.memory_file: Path | None = None
        self.memory_shared = False

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Machine:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def config(
        self,
        initrd: Path,
        sockets: dict[str, Path],
        *,
        incoming: bool = False,
        qmp: Path | None = None,
    ) -> VmConfig:
        root = Disk(self.image.rootfs, ROOT_SERIAL, readonly=True)
        mods = Disk(self.image.modules_disk, MODULES_SERIAL, readonly=True)
        return VmConfig(
            kernel=self.image.kernel,
            initrd=initrd,
            accel=self.accel,
            console_log=self.console_log,
            memory_mib=self.memory_mib,
            cpus=self.cpus,
            machine=self.machine,
            disks=(root, mods, *([self.tree_disk] if self.tree_disk else []), *self.disks),
            ports=tuple(Port(name, path) for name, path in sockets.items()),
            tsc_khz=host_tsc_khz(),
            incoming=incoming,
            qmp=qmp,
            memory=self.memory_file,
            memory_shared=self.memory_shared,
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.cold_boot:
            try:
                self._start_restored()
                return
            except resume.RestoreFailed as exc:
                self.close()
                self.tree_disk = self.memory_file = None  # a cold boot has neither
                resume.say_once(f"booting cold: {exc.message}")
        self._launch(self.image.initramfs_bytes() + payload_mod.build(self.payload))

    def shape(self, tree_bytes: int) -> resume.Shape:
        return resume.shape_of(
            self.image.key,
            payload_mod.build_park(self._resumed_payload()),
            accel=self.accel,
            machine=self.machine,
            memory_mib=self.memory_mib,
            cpus=self.cpus,
            disks=self.disks,
            tree_bytes=tree_bytes,
        )

    def _resumed_payload(self) -> payload_mod.Payload:
        return dataclasses.replace(self.payload, resumed=True)

    def _start_restored(self) -> None:
        """Restore this shape's saved state (saved first if missing) and hand it the payload.
        A state that QEMU or the guest rejects is deleted, so the next boot saves a new one."""
        try:
            self.tree_disk = treedisk.disk(self.payload.tree)
        except (ImageError, OSError) as exc:  # OSError: a full or read-only cache
            raise resume.RestoreFailed(f"cannot make the tree disk: {exc}") from None
        shape = self.shape(resume.disk_bytes(self.tree_disk))
        try:
            state = resume.state_file(shape) or save_state(self, shape)
        except OSError as exc:
            raise resume.RestoreFailed(f"cannot save a state to restore: {exc}") from None
        payload = self._resumed_payload()
        try:
            self.memory_file = state.parent / resume.RAM
            self._launch(None, ports=payload.ports, incoming=True)
            qmp = resume.Qmp(self._qmp_path(), self.connect_timeout)
            try:
                resume.migrate_from(qmp, state)
            finally:
                qmp.close()
            resume.hand_over(
                self.ports[payload_mod.CONTROL_PORT], payload_mod.resumed_files(payload)
            )
        except VmError as exc:
            resume.discard(shape)
            why = self.panic_excerpt() or exc.message
            raise resume.RestoreFailed(
                f"the saved state {state.parent.name} failed ({why})"
            ) from None
        self.restored = True

    def _launch(
        self,
        initrd_bytes: bytes | None,
        *,
        ports: tuple[str, ...] | None = None,
        incoming: bool = False,
        qmp: bool = False,
    ) -> None:
        """Start QEMU: booting ``initrd_bytes`` (the image's initramfs and a payload), or
        or waiting to restore a state (``incoming``); with a QMP socket (``qmp``: at
        _qmp_path()); return once every port is connected."""
        initrd = self.workdir / "initrd.img"
        if initrd_bytes is not None:
            initrd.write_bytes(initrd_bytes)
        # Socket paths are limited to ~108 bytes, so they live in a short private folder.
        self._sockdir = tempfile.mkdtemp(prefix="vmt-")
        listeners: dict[str, socket.socket] = {}
        paths: dict[str, Path] = {}
        for name in ports or self.payload.ports:
            path = Path(self._sockdir, name)
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(str(path))
            lsock.listen(1)
            listeners[name] = lsock
            paths[name] = path
        qmp_path = self._qmp_path() if qmp or incoming else None
        argv = command_line(self.config(initrd, paths, incoming=incoming, qmp=qmp_path))
        (self.workdir / "qemu.argv").write_text("\n".join(argv) + "\n")
        self.started_at = time.monotonic()
        with self.qemu_log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            for name, lsock in listeners.items():
                self.ports[name] = self._accept(lsock)
        finally:
            for lsock in listeners.values():
                lsock.close()

    def _qmp_path(self) -> Path:
        assert self._sockdir is not None
        return Path(self._sockdir, "qmp")

    def _accept(self, lsock: socket.socket) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout
        lsock.settimeout(0.05)
        while True:
            try:
                conn, _ = lsock.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                if self.proc is not None and self.proc.poll() is not None:
                    raise BootError(
                        f"QEMU exited with {self.proc.returncode} before connecting: "
                        + self.qemu_log.read_text(errors="replace").strip()[-2000:]
                    ) from None
                if time.monotonic() > deadline:
                    raise BootError("QEMU did not connect its serial ports in time") from None

    def wait(self, timeout: float | None) -> int:
        """Wait for QEMU to end; on timeout kill it and raise VmTimeout."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise VmTimeout(
                f"the VM did not finish within {timeout:.0f} s and was killed",
                console_tail=self.console_tail(),
                seconds=timeout,
            ) from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Power cut: SIGKILL QEMU. Disks keep whatever QEMU had written to them."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        for sock in self.ports.values():
            sock.close()
        self.ports.clear()
        if self._sockdir:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    # -- diagnosis -----------------------------------------------------------------------
    def console_tail(self, lines: int = 40) -> str:
        return _tail(self.console_log, lines)

    def qemu_log_tail(self, lines: int = 15) -> str:
        """QEMU's own complaints (a KVM abort, a bad option, an I/O error on a disk)."""
        return _tail(self.qemu_log, lines)

    def failure(self, what: str) -> VmError:
        """Explain why the guest stopped answering: a panic, or a lost VM.

        A closed channel usually means QEMU is on its way out, so wait a moment for it to end:
        its exit status and its own log then say why (a KVM abort, an OOM kill, a panic).
        """
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(_EXIT_GRACE_S)
        tail = self.console_tail()
        panic = self.panic_excerpt()
        if panic:
            return PanicError(f"the guest kernel panicked {what}", console_tail=panic)
        code = self.proc.poll() if self.proc else None
        if code is None:
            return LostVMError(f"the VM was lost {what} (QEMU still running)", console_tail=tail)
        message = f"the VM was lost {what} (QEMU {_describe_exit(code)})"
        log = self.qemu_log_tail()
        if log:
            message += "; QEMU said:\n" + log
        return LostVMError(message, console_tail=tail, exit_code=code)

    def panic_excerpt(self, before: int = 10, after: int = 30) -> str:
        """The console around the first panic or fatal init line, or "" if there is none.

        Around it, not the tail: a panic's stack trace is longer than a tail, and the line that
        says why ("Kernel panic - not syncing: ...") comes before it.
        """
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for i, line in enumerate(lines):
            if any(marker in line for marker in _PANIC_MARKERS):
                return "\n".join(lines[max(0, i - before) : i + after])
        return ""

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def save_state(vm: Machine, shape: resume.Shape) -> Path:
    """Boot ``vm``'s shape once up to park.py, with placeholder disks, and save it over QMP.

    Under the shape's lock: a worker that finds the state saved meanwhile uses it. Raises
    RestoreFailed (the caller boots cold) with the saved boot's console when it goes wrong."""
    with resume.lock(shape):
        found = resume.state_file(shape)
        if found is not None:
            return found
        final = resume.entry_dir(shape)
        t0 = time.monotonic()
        with cache.entry(final) as work:
            tree, slots = resume.placeholders(shape, work)
            parked = Machine(
                vm.image,
                vm._resumed_payload(),
                work / "boot",
                accel=vm.accel,
                memory_mib=vm.memory_mib,
                cpus=vm.cpus,
                disks=slots,
                machine=vm.machine,
                cold_boot=True,
            )
            parked.tree_disk = tree
            parked.memory_file, parked.memory_shared = work / resume.RAM, True
            parked.workdir.mkdir()
            try:
                try:
                    payload = parked.payload
                    initrd = vm.image.initramfs_bytes() + payload_mod.build_park(payload)
                    parked._launch(initrd, ports=payload.ports, qmp=True)
                    ctl = parked.ports[payload_mod.CONTROL_PORT]
                    resume.wait_parked(ctl, resume.SAVE_TIMEOUT_S)
                    qmp = resume.Qmp(parked._qmp_path(), resume.SAVE_TIMEOUT_S)
                    try:
                        resume.migrate_to(qmp, work / resume.STATE, resume.SAVE_TIMEOUT_S)
                    finally:
                        qmp.close()
                finally:
                    parked.close()
            except VmError as exc:
                why = parked.panic_excerpt() or parked.console_tail() or exc.message
                raise resume.RestoreFailed(f"cannot save a state to restore: {why}") from None
            for scrap in [*work.glob("*.raw"), parked.workdir / "initrd.img"]:
                scrap.unlink()
            meta = {"image": vm.image.key, "seconds": round(time.monotonic() - t0, 3)}
            (work / "meta.json").write_text(json.dumps(meta) + "\n")
        cache.prune("state-*", resume.STATE, keep=final)
        return final / resume.STATE


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def make_disk(path: Path, size_bytes: int, fmt: str = "raw", backing: Path | None = None) -> Path:
    """A sparse raw file, or a qcow2 overlay on ``backing`` (which then stays untouched)."""
    if fmt == "raw":
        with path.open("wb") as f:
            f.truncate(size_bytes)
        return path
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "raw", "-b", str(backing)]
    argv += [str(path), str(size_bytes)]
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "LC_ALL": "C"})
    return path


__all__ = ["ROOT_SERIAL", "Machine", "host_tsc_khz", "make_disk"]
