"""The watchdog over a dm create's suspend window.

Between the suspend of the origin and its resume, every writer of the origin's filesystem
hangs. snapkit resumes in its plan's undo on any error or signal it can catch, but nothing runs
after a SIGKILL, an OOM kill or a hang, and the kernel resumes nothing by itself: the desktop
would wait until someone ran ``recover``. So, as the freeze method does for FIFREEZE, a
separate watchdog process (:mod:`snapkit.host.watchdog`, ``--resume``) is started before the
window and armed with ``--max-freeze`` just before the suspend. If the deadline passes, or
snapkit dies, while the origin is still suspended, it finishes the window as snapkit would
have: every table was loaded before the suspend, so resuming the new snapshot and then the
origin leaves a whole snapshot taken at the suspend, which ``recover`` adopts by its dm uuid.

A window the watchdog finished is not an error: the snapshot is as consistent as if snapkit had
resumed it. It is logged, because the filesystem stayed suspended for ``--max-freeze``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from snapkit.host.freezing import Guard
from snapkit.plan import Step

log = logging.getLogger(__name__)


def guard_window(
    names: Sequence[str],
    inner: Sequence[Step],
    max_freeze: float,
    watchdog: Callable[[Sequence[str]], Guard] | None,
) -> tuple[Step, ...]:
    """``inner`` (the suspend of ``names[-1]``, the origin, and the resumes after it) between
    the start and arming of a watchdog that resumes ``names`` in order after ``max_freeze``
    seconds, and its stop. Stopping it is the last step, so a window cut short by an error is
    undone (the origin resumed unchanged) before the watchdog is let go. Without a
    ``watchdog`` (a host of fakes), ``inner`` as it is."""
    return guard_windows([names], inner, max_freeze, watchdog)


def guard_windows(
    members: Sequence[Sequence[str]],
    inner: Sequence[Step],
    max_freeze: float,
    watchdog: Callable[[Sequence[str]], Guard] | None,
) -> tuple[Step, ...]:
    """:func:`guard_window` for a snapshot group: one watchdog per member (each resumes its own
    devices, origin last), every one armed with one deadline before the first suspend -- a
    group's window is one window, and no member may stay suspended past it."""
    if watchdog is None or not members:
        return tuple(inner)
    dogs = [(watchdog(names), names[-1]) for names in members]
    several = len(dogs) > 1

    def arm() -> None:
        deadline = time.monotonic() + max_freeze
        for dog, _origin in dogs:
            dog.arm(deadline)

    def stop() -> None:
        fired = [origin for dog, origin in dogs if dog.stop()]
        if fired:
            log.warning(
                "the watchdog resumed %s after --max-freeze %g s: the window outlasted it; the "
                "snapshot is whole (its tables were loaded before the suspend)",
                ", ".join(fired),
                max_freeze,
            )

    origins = ", ".join(origin for _, origin in dogs)
    starts = tuple(
        Step(
            f"start the watchdog that resumes {origin} (it finishes the window if snapkit dies)",
            dog.start,
            dog.abandon,
            "stop the watchdog",
            must_undo=True,
        )
        for dog, origin in dogs
    )
    return (
        *starts,
        Step(
            f"arm the watchdog{'s' if several else ''}: {origins} "
            f"{'are' if several else 'is'} resumed {max_freeze:g} s from now at the latest",
            arm,
        ),
        *inner,
        Step("stop the watchdogs" if several else "stop the watchdog", stop),
    )


__all__ = ["guard_window", "guard_windows"]
