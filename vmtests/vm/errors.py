"""The harness's errors: one tree, so a caller can tell a failing test from a broken VM::

    VmError                  root: the VM layer could not do its job (message, console_tail)
    ├── ImageError           the guest image cannot be built or is not there (recipe)
    │   └── KernelError      a kernel (spec, file or modules tree) is refused before any boot
    ├── BootError            QEMU refused to start, or the guest never became ready
    ├── PanicError           the guest kernel panicked; console_tail holds the panic
    ├── LostVMError          QEMU vanished mid-conversation: killed, crashed, out of memory
    │                        (exit_code: QEMU's status, None while it still runs)
    ├── VmTimeout            a hard deadline passed and the VM was killed (seconds)
    └── ChannelError         the guest agent answered something that breaks the protocol

A command that runs and exits non-zero is not an error here: it is a result with an exit code.
Above this layer a ``VmError`` while a scenario or a cut runs is a *lost* VM, judged apart from
a failing scenario (``vmtests.campaign.oracle.Verdict.LOST``); any other exception is a bug in
the harness and surfaces as one.
"""

from __future__ import annotations


class VmError(Exception):
    """Root of the harness errors. ``console_tail`` holds the last console lines when known."""

    def __init__(self, message: str, *, console_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.console_tail = console_tail

    def __str__(self) -> str:
        if self.console_tail:
            return f"{self.message}\n--- console tail ---\n{self.console_tail}"
        return self.message


class ImageError(VmError):
    """The image could not be built or is not there; the message says what to do."""

    def __init__(self, message: str, *, recipe: str = "") -> None:
        super().__init__(message)
        self.recipe = recipe


class KernelError(ImageError):
    """A kernel the harness cannot use; the one-line message says what is wrong and the fix."""


class BootError(VmError):
    pass


class PanicError(VmError):
    pass


class LostVMError(VmError):
    def __init__(self, message: str, *, console_tail: str = "", exit_code: int | None = None):
        super().__init__(message, console_tail=console_tail)
        self.exit_code = exit_code


class VmTimeout(VmError):
    def __init__(self, message: str, *, console_tail: str = "", seconds: float | None = None):
        super().__init__(message, console_tail=console_tail)
        self.seconds = seconds


class ChannelError(VmError):
    pass


__all__ = [
    "BootError",
    "ChannelError",
    "ImageError",
    "KernelError",
    "LostVMError",
    "PanicError",
    "VmError",
    "VmTimeout",
]
