"""A booted guest with its agent: the object tests and campaigns talk to.

``Session`` owns a Machine in agent mode and the Channel to it; leaving the ``with`` block always
ends QEMU. ``reboot``-style power-cut tests create a new Session on the same disks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from vmtests import guest
from vmtests.vm.channel import Channel, CommandResult, Process
from vmtests.vm.errors import BootError, LostVMError
from vmtests.vm.image import Image
from vmtests.vm.machine import Machine
from vmtests.vm.payload import Mode, Payload
from vmtests.vm.qemu import Accel, Disk

# The agent on its port, started by stage2.sh like any command (argv files in the payload).
AGENT_ARGV = tuple(guest.command("agent", "/dev/vmtest/agent"))


class Session:
    def __init__(
        self,
        image: Image,
        workdir: Path,
        *,
        accel: Accel = Accel.TCG,
        memory_mib: int = 1024,
        cpus: int = 1,
        disks: Sequence[Disk] = (),
        boot_timeout: float = 60.0,
        hostname: str = "vmtest",
        cold_boot: bool = False,
    ) -> None:
        self.machine = Machine(
            image,
            Payload(Mode.AGENT, AGENT_ARGV, hostname=hostname),
            workdir,
            accel=accel,
            memory_mib=memory_mib,
            cpus=cpus,
            disks=disks,
            cold_boot=cold_boot,
        )
        self.boot_timeout = boot_timeout
        self._channel: Channel | None = None

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise RuntimeError("the session is not started")
        return self._channel

    @property
    def workdir(self) -> Path:
        return self.machine.workdir

    def __enter__(self) -> Session:
        self.machine.__enter__()
        try:
            self._channel = Channel(self.machine.ports["agent"], self._explain)
            self._channel.wait_ready(self.boot_timeout)
        except LostVMError as exc:
            self.machine.close()
            raise BootError(
                f"the guest agent never became ready: {exc.message}", console_tail=exc.console_tail
            ) from None
        except BaseException:
            self.machine.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.machine.close()

    def _explain(self, what: str):  # type: ignore[no-untyped-def]
        return self.machine.failure(what)

    # Convenience pass-throughs: most callers only ever need these.
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        check: bool = False,
    ) -> CommandResult:
        return self.channel.run(argv, input=input, env=env, timeout=timeout, check=check)

    def sh(self, script: str, *, timeout: float = 600.0, check: bool = True) -> CommandResult:
        """Run a shell script (``sh -euc``); fails loudly unless ``check=False``."""
        return self.run(["sh", "-euc", script], timeout=timeout, check=check)

    def spawn(self, argv: Sequence[str], *, timeout: float = 600.0) -> Process:
        return self.channel.spawn(argv, timeout=timeout)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.channel.put(path, data, mode)

    def get(self, path: str) -> bytes:
        return self.channel.get(path)

    def power_cut(self) -> None:
        """SIGKILL QEMU now: whatever the guest had not written to its disks is lost."""
        self.machine.kill()

    def shutdown(self) -> None:
        """A clean end: the agent exits, the guest syncs and powers off."""
        self.channel.shutdown()
        self.machine.wait(30)


__all__ = ["Session"]
