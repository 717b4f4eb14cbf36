"""The error tree's one promise to callers: "refused, nothing changed" is told apart from
"failed partway, undone", and both stay one line with the same exit code for the CLI."""

from __future__ import annotations

import pytest

from snapkit import errors
from snapkit.cli import dispatch
from snapkit.cow.model import SnapshotIOError
from snapkit.dm.control import DmError
from snapkit.errors import CommandError, OperationError, RefusedError, SnapkitError, UsageError
from snapkit.lock import LockedError
from snapkit.plan import Interrupted, PlanError, PlanTimeout
from snapkit.run import CommandTimeout

FAILED = (
    CommandError,
    CommandTimeout,
    DmError,
    SnapshotIOError,
    PlanError,
    Interrupted,
    PlanTimeout,
)


@pytest.mark.parametrize("cls", FAILED)
def test_a_failure_partway_is_not_a_refusal(cls: type[Exception]) -> None:
    assert issubclass(cls, OperationError)
    assert not issubclass(cls, RefusedError)


def test_refusals_and_failures_share_only_the_root() -> None:
    assert not issubclass(OperationError, RefusedError)
    assert not issubclass(RefusedError, OperationError)
    assert issubclass(LockedError, RefusedError)


def test_the_docstring_draws_every_class() -> None:
    drawn = errors.__doc__ or ""
    for cls in (*FAILED, LockedError, *(getattr(errors, n) for n in errors.__all__)):
        if isinstance(cls, type):
            assert f" {cls.__name__} " in drawn, cls


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RefusedError("no", hint="fix it"), 1),
        (OperationError("step failed", hint="undone"), 1),
        (UsageError("bad"), 2),
    ],
)
def test_exit_codes_and_one_line(
    error: SnapkitError, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="snapkit")
    parser.set_defaults(handler=lambda _args: (_ for _ in ()).throw(error))
    assert dispatch(parser, []) == code
    err = capsys.readouterr().err
    assert err == f"snapkit: error: {error}\n"
    assert error.message in err and (error.hint or "") in err
