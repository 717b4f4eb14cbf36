"""The one root of every error snapkit raises on purpose.

Errors carry data, so that callers can act on them and the CLI can render them::

    SnapkitError                     root; ``str()`` is one line saying what is wrong
    ├── UsageError                   the request itself is malformed      (exit 2)
    └── RefusedError                 a well-formed request that must not run (exit 1)
        ├── FormatError              bytes that are not what they claim to be
        │   └── CowFormatError       a COW store the kernel would not load
        ├── ValidationError          a name, path or size that fails a safety rule
        └── OperationError           a step that was tried and failed
            └── CommandError         an external command exited non-zero

Every error has an optional ``hint``: how to fix it. The CLI prints ``message`` and then the
hint on the same line, so a refusal is always one line.
"""

from __future__ import annotations


class SnapkitError(Exception):
    """Root of snapkit's errors. ``exit_code`` is what the CLI returns for it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


def split_advice(words: str) -> tuple[str, str | None]:
    """Split a plain-words status ("what happened; ...; what to do next") into an error's
    message and hint, so a status shown as an error keeps the one-line "message (hint)" form."""
    what, _, todo = words.rpartition("; ")
    return (what, todo) if what else (words, None)


class UsageError(SnapkitError):
    """The request is malformed: wrong arguments, impossible combinations."""

    exit_code = 2


class RefusedError(SnapkitError):
    """A well-formed request that snapkit refuses or could not carry out."""


class FormatError(RefusedError):
    """Bytes that do not parse as the format they claim to be."""


class CowFormatError(FormatError):
    """A COW exception store that the kernel would refuse, or that contradicts itself."""


class ValidationError(RefusedError):
    """A name, path or size that fails a safety rule (for example, it could inject into a table)."""


class OperationError(RefusedError):
    """A step that was attempted and failed."""


class CommandError(OperationError):
    """An external command exited non-zero; carries what was run and what it said."""

    def __init__(
        self,
        argv: list[str],
        returncode: int,
        stderr: str = "",
        *,
        hint: str | None = None,
    ) -> None:
        # The last line that is not an indented continuation: mount(8), for one, ends with
        # "       dmesg(1) may have more information..." under the line that says what failed.
        lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln[:1].isspace()]
        detail = lines[-1].strip() if lines else stderr.strip() or f"exit {returncode}"
        super().__init__(f"{argv[0]} failed: {detail}", hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


__all__ = [
    "CommandError",
    "CowFormatError",
    "FormatError",
    "OperationError",
    "RefusedError",
    "SnapkitError",
    "UsageError",
    "ValidationError",
]
