"""Plans: ordered steps, each with its undo, applied all-or-nothing.

A method turns a request into a :class:`Plan`; :func:`apply` runs it. If any step fails, raises,
or the run is interrupted (SIGINT, SIGTERM) or times out, the undos of the steps that completed
run in reverse order, so the system is left as it was found. ``--dry-run`` prints
:meth:`Plan.render`, which lists exactly the steps :func:`apply` would run, in order.

Two rules keep a rollback from doing harm:

* once an undo fails, the state is no longer known, so later undos are skipped (removing a
  device whose dependants are still there could destroy data), except
* undos marked ``must_undo`` (resume, thaw): a suspended device or a frozen filesystem hangs
  every writer on the machine, so these always run. Such an undo must be safe to run even if its
  step only partly happened, and it also runs for the step that was under way when the failure
  came.

Signals are turned into an exception while steps run, so that the rollback happens; while the
rollback runs they are only recorded, so that a second Ctrl-C cannot cut a rollback short. The
previous handlers are restored afterwards.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from snapkit.errors import OperationError

log = logging.getLogger(__name__)

Action = Callable[[], Any]


@dataclass(frozen=True)
class Step:
    """One change to the system and the action that reverts it (None: nothing to revert)."""

    description: str
    do: Action
    undo: Action | None = None
    undo_description: str = ""
    must_undo: bool = False


@dataclass(frozen=True)
class Plan:
    title: str
    steps: tuple[Step, ...]

    def render(self) -> str:
        """The dry-run text: every step in order, with its undo."""
        lines = [f"{self.title}:"]
        for number, step in enumerate(self.steps, 1):
            lines.append(f"{number:>3}. {step.description}")
            if step.undo is not None and step.undo_description:
                mark = " (always)" if step.must_undo else ""
                lines.append(f"       undo{mark}: {step.undo_description}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Applied:
    """How long each step took: the suspend-to-resume window is read from these."""

    timings: tuple[tuple[str, float], ...]

    @property
    def seconds(self) -> float:
        return sum(t for _, t in self.timings)


class Interrupted(OperationError):
    """A signal arrived while a plan was running."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}", hint="the steps done so far were undone")
        self.signum = signum


class PlanTimeout(OperationError):
    """The plan ran past its deadline."""


class PlanError(OperationError):
    """A plan failed and was rolled back; says how far, and what the rollback could not undo."""

    def __init__(
        self,
        plan: Plan,
        index: int,
        cause: BaseException,
        undo_failures: tuple[tuple[str, BaseException], ...],
        skipped: tuple[str, ...],
    ) -> None:
        step = plan.steps[index].description
        # An interruption's own hint ("undone") would repeat the rollback's, more vaguely.
        detail = cause.message if isinstance(cause, Interrupted) else str(cause)
        message = f"{plan.title}: step {index + 1} ({step}) failed: {detail}"
        if undo_failures or skipped:
            left = [f"{d}: {e}" for d, e in undo_failures] + [f"{d}: not undone" for d in skipped]
            hint = "rollback incomplete, clean up by hand: " + "; ".join(left)
        else:
            hint = "everything done before it was undone"
        super().__init__(message, hint=hint)
        self.index = index
        self.cause = cause
        self.undo_failures = undo_failures
        self.skipped = skipped
        if isinstance(cause, Interrupted):
            self.exit_code = 128 + cause.signum
        elif isinstance(cause, KeyboardInterrupt):
            self.exit_code = 130


class _Guard:
    """Turns SIGINT/SIGTERM/the deadline into exceptions while ``raising``; defers otherwise."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.raising = False
        self.deferred: list[int] = []
        self._installed = threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Guard:
        if self._installed:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self._on_signal)
            if self.timeout is not None:
                self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_signal)
                signal.setitimer(signal.ITIMER_REAL, max(self.timeout, 1e-6))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            if signal.SIGALRM in self._old:
                signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in self._old.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.raising:
            log.warning("signal %s deferred to a safe point", signum)
            self.deferred.append(signum)
            return
        self.raising = False  # a second signal must not interrupt the handling of the first
        if signum == signal.SIGALRM:
            raise PlanTimeout(f"plan ran past its {self.timeout:g} s deadline")
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise for a signal that came between steps, or a deadline no alarm could enforce."""
        if self.deferred:
            self._on_signal(self.deferred.pop(0), None)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise PlanTimeout(f"plan ran past its {self.timeout:g} s deadline")


def apply(plan: Plan, *, timeout: float | None = None) -> Applied:
    """Run every step; on any failure undo the completed ones in reverse and raise PlanError."""
    timings: list[tuple[str, float]] = []
    done: list[Step] = []
    with _Guard(timeout) as guard:
        for index, step in enumerate(plan.steps):
            log.info("step %d/%d: %s", index + 1, len(plan.steps), step.description)
            start = time.monotonic()
            try:
                guard.raising = True
                guard.check()
                step.do()
                guard.raising = False
            except BaseException as exc:
                guard.raising = False
                log.error("step %d failed: %s", index + 1, exc)
                if step.must_undo:
                    done.append(step)
                failures, skipped = rollback(done)
                raise PlanError(plan, index, exc, failures, skipped) from exc
            done.append(step)
            timings.append((step.description, time.monotonic() - start))
    for signum in guard.deferred:  # came after the last step: the plan stands, deliver it now
        if signum != signal.SIGALRM:
            signal.raise_signal(signum)
    return Applied(tuple(timings))


def rollback(done: list[Step]) -> tuple[tuple[tuple[str, BaseException], ...], tuple[str, ...]]:
    """Undo ``done`` in reverse; after a failed undo only the must-run ones still run.
    Returns the undos that failed and the ones skipped."""
    failures: list[tuple[str, BaseException]] = []
    skipped: list[str] = []
    for step in reversed(done):
        if step.undo is None:
            continue
        if failures and not step.must_undo:
            skipped.append(step.description)
            continue
        log.info("undo: %s", step.undo_description or step.description)
        try:
            step.undo()
        except BaseException as exc:  # an undo failing must not stop the must-run ones
            log.error("undo of %r failed: %s", step.description, exc)
            failures.append((step.description, exc))
    return tuple(failures), tuple(skipped)


__all__ = [
    "Applied",
    "Interrupted",
    "Plan",
    "PlanError",
    "PlanTimeout",
    "Step",
    "apply",
    "rollback",
]
