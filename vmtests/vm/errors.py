"""The harness's errors, one root, shaped so a caller can tell a failing test from a broken VM::

    VmError                  root
    ├── ImageMissing         no built image for the current recipe (run 'vmtest image build')
    ├── BootError            QEMU refused to start, or the guest never became ready
    ├── PanicError           the guest kernel panicked; carries the console tail
    ├── LostVMError          QEMU vanished mid-conversation (killed, crashed, out of memory)
    ├── VmTimeout            a hard deadline passed; the VM was killed
    └── ChannelError         the guest agent answered something that breaks the protocol

A command that runs and exits non-zero is not an error here: it is a result with an exit code.
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


class ImageMissing(VmError):
    pass


class BootError(VmError):
    pass


class PanicError(VmError):
    pass


class LostVMError(VmError):
    pass


class VmTimeout(VmError):
    pass


class ChannelError(VmError):
    pass


__all__ = [
    "BootError",
    "ChannelError",
    "ImageMissing",
    "LostVMError",
    "PanicError",
    "VmError",
    "VmTimeout",
]
