"""The freeze plan: thawed and the watchdog stopped after a failure at any step, a failing or
hung command, or a signal; the CLI's argument split; the method's record and refusals."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapkit.cli.freeze import split_command
from snapkit.dm.fake import Faults
from snapkit.errors import CommandError, OperationError, RefusedError, UsageError
from snapkit.methods.freeze import FreezeMethod, Outcome, freeze_plan
from snapkit.model import CreateRequest, Target
from snapkit.plan import Interrupted, PlanError, apply
from snapkit.run import CommandTimeout, Completed
from tests.unit.fakes import FakeExecutor, RunOptions, completed

MP = Path("/mnt/o")


class World(FakeExecutor):
    """Freezer, watchdog and executor sharing one fault counter."""

    def __init__(self, fail_at: int | None = None, rc: int = 0, hang: bool = False) -> None:
        self.faults = Faults(fail_at)
        self.frozen = False
        self.dog = "off"  # off -> ready -> armed -> off
        self.rc, self.hang = rc, hang
        self.ran: list[list[str]] = []
        self.watchdog_thawed = False

    def _maybe_fail(self, what: str) -> None:
        if self.faults.should_fail(what):
            raise OperationError(f"injected: {what}")

    # Freezer
    def freeze(self, mountpoint: Path) -> None:
        self._maybe_fail("freeze")
        self.frozen = True

    def thaw(self, mountpoint: Path) -> bool:
        was, self.frozen = self.frozen, False
        return was

    # Guard (watchdog)
    def start(self) -> None:
        self._maybe_fail("watchdog start")
        self.dog = "ready"

    def arm(self, deadline: float) -> None:
        self.dog = "armed"

    def stop(self) -> bool:
        self._maybe_fail("watchdog stop")
        self.dog = "off"
        return self.watchdog_thawed

    def abandon(self) -> None:
        if self.dog == "armed":
            self.frozen = False  # the real watchdog thaws when its pipe closes while armed
        self.dog = "off"

    # Executor
    def answer(self, args: list[str], opts: RunOptions) -> Completed:
        self.ran.append(args)
        assert self.frozen, "the command must run while frozen"
        self._maybe_fail("command")
        if self.hang:
            raise CommandTimeout(args, opts.timeout or 0)
        if opts.check and self.rc:
            raise CommandError(args, self.rc, "boom")
        return completed(args, "out", self.rc)


def plan(w: World, outcome: Outcome | None = None, **kw: Any) -> Any:
    return freeze_plan(
        MP,
        ["snap", "it"],
        5.0,
        executor=w,
        freezer=w,
        watchdog=w,
        outcome=outcome or Outcome(),
        **kw,
    )


SIDE_EFFECTS = 4  # watchdog start, freeze, command, watchdog stop


def test_success_thaws_and_stops_the_watchdog() -> None:
    w, outcome = World(), Outcome()
    apply(plan(w, outcome))
    assert not w.frozen and w.dog == "off" and w.ran == [["snap", "it"]]
    assert len(w.faults.calls) == SIDE_EFFECTS
    assert outcome.window is not None and outcome.window >= 0


@pytest.mark.parametrize("fail_at", range(SIDE_EFFECTS))
def test_a_failure_at_every_step_leaves_it_thawed(fail_at: int) -> None:
    w = World(fail_at)
    with pytest.raises(PlanError):
        apply(plan(w))
    assert not w.frozen and w.dog == "off"


@pytest.mark.parametrize(("rc", "hang"), [(3, False), (0, True)])
def test_a_failing_or_hung_command_thaws(rc: int, hang: bool) -> None:
    w = World(rc=rc, hang=hang)
    with pytest.raises(PlanError):
        apply(plan(w))
    assert not w.frozen and w.dog == "off"


def test_the_cli_form_records_the_exit_code_instead() -> None:
    w, outcome = World(rc=3), Outcome()
    apply(plan(w, outcome, fail_on_exit=False))
    assert outcome.result is not None and outcome.result.returncode == 3 and not w.frozen


def test_a_thaw_by_the_watchdog_is_an_error() -> None:
    w = World()
    w.watchdog_thawed = True
    with pytest.raises(PlanError, match="watchdog thawed"):
        apply(plan(w))
    assert not w.frozen


def test_sigterm_while_frozen_thaws() -> None:
    w = World()

    def command(*args: Any, **kw: Any) -> Completed:
        assert w.frozen
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("not reached")

    w.run = command  # type: ignore[method-assign]
    with pytest.raises(PlanError) as caught:
        apply(plan(w))
    assert isinstance(caught.value.cause, Interrupted)
    assert not w.frozen and w.dog == "off"


def test_negative_control_the_fake_does_notice_a_missing_thaw() -> None:
    w = World()
    steps = plan(w).steps
    for step in steps[:3]:  # watchdog, freeze, command; no thaw
        step.do()
    assert w.frozen


@pytest.mark.parametrize(("command", "max_freeze"), [([], 5.0), (["x"], 0.0)])
def test_bad_requests(command: list[str], max_freeze: float) -> None:
    w = World()
    with pytest.raises(UsageError):
        freeze_plan(MP, command, max_freeze, executor=w, freezer=w, watchdog=w, outcome=Outcome())


def method(w: World) -> FreezeMethod:
    return FreezeMethod(SimpleNamespace(run=w), freezer=w, watchdog=lambda mp: w)  # type: ignore[arg-type]


def test_method_record_and_refusals() -> None:
    w = World()
    target = Target(Path("/dev/vdb"), MP, "ext4", (254, 16))
    p, record = method(w).plan_create(CreateRequest(target, "s1", command=("snap", "it")))
    apply(p)
    assert record.method == "freeze" and record.details["command"] == "snap it"
    with pytest.raises(RefusedError):
        method(w).plan_merge(record)
    assert method(w).plan_discard(record).steps == ()
    assert method(w).unsuitable(Target(Path("/dev/vdb"), None, None, (254, 16)))
    assert method(w).unsuitable(Target(Path("/dev/vdb"), MP, "vfat", (254, 16)))
    for fstype in ("ext2", "ext3", "reiserfs"):  # each has a freeze_fs (issue 14's rows)
        assert method(w).unsuitable(Target(Path("/dev/vdb"), MP, fstype, (254, 16))) is None


@pytest.mark.parametrize(
    ("words", "command", "max_freeze"),
    [
        (["--", "sh", "-c", "x --y"], ["sh", "-c", "x --y"], 10.0),
        (["--max-freeze", "3", "--", "cmd", "--", "a"], ["cmd", "--", "a"], 3.0),
        (["cmd", "arg"], ["cmd", "arg"], 10.0),
    ],
)
def test_cli_split(words: list[str], command: list[str], max_freeze: float) -> None:
    args = argparse.Namespace(command=words, max_freeze=10.0, dry_run=False)
    got, cmd = split_command(args)
    assert cmd == command and got.max_freeze == max_freeze


def test_cli_split_refuses_unknown_options() -> None:
    with pytest.raises(UsageError):
        split_command(argparse.Namespace(command=["--bogus", "--", "x"], max_freeze=1.0))
    with pytest.raises(UsageError):
        split_command(argparse.Namespace(command=["--bogus"], max_freeze=1.0))
