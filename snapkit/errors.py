"""The one root of every error snapkit raises on purpose, and the tree a caller branches on.

The first split is what a caller most needs to know: did anything change?

* :class:`RefusedError`: snapkit said no *before* changing anything: run it again once the
  reason is fixed;
* :class:`OperationError`: snapkit tried, and a step failed partway: the plan undid what it
  had done (a :class:`~snapkit.plan.PlanError` says whether its rollback was complete).

Every class, with the module it lives in (the ones outside this module are specialisations that
need that module's data)::

    SnapkitError                 root; message, hint; str() is one line    errors
    ├── UsageError               the request itself is malformed (exit 2)   errors
    ├── RefusedError             nothing changed (exit 1)                   errors
    │   ├── FormatError          bytes that are not what they claim to be   errors
    │   │   └── CowFormatError   a COW store the kernel would not load      errors
    │   ├── ValidationError      a name, path or size fails a safety rule   errors
    │   └── LockedError          another operation holds the origin         lock
    └── OperationError           tried, failed partway, undone (exit 1)     errors
        ├── CommandError         an external command exited non-zero        errors
        │   └── CommandTimeout   ... or ran past its timeout and was killed run
        ├── DmError              the kernel refused a dm ioctl (errno)      dm.control
        ├── SnapshotIOError      the EIO of an invalid or full snapshot     cow.model
        ├── PlanError            a plan failed; how far its rollback got    plan
        ├── Interrupted          a signal arrived while a plan ran          plan
        └── PlanTimeout          a plan ran past its deadline               plan

Errors carry data as attributes, so callers act on them and the CLI renders them: every one
has ``message`` and an optional ``hint`` (how to fix it), and ``exit_code``. The CLI prints
``message`` and then the hint on the same line, so a refusal is always one line.
"""

from __future__ import annotations


class SnapkitError(Exception):
    """Root of snapkit's errors. ``exit_code`` is what the CLI returns for it."""

    exit_code: int = 1

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
    """A well-formed request that snapkit refused before it changed anything."""


class FormatError(RefusedError):
    """Bytes that do not parse as the format they claim to be."""


class CowFormatError(FormatError):
    """A COW exception store that the kernel would refuse, or that contradicts itself."""


class ValidationError(RefusedError):
    """A name, path or size that fails a safety rule (for example, it could inject into a table)."""


class OperationError(SnapkitError):
    """A step that was attempted and failed; what was done before it has been undone (or, for
    a :class:`~snapkit.plan.PlanError`, its ``undo_failures`` say what was not)."""


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
