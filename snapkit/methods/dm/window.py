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
    if watchdog is None:
        return tuple(inner)
    dog = watchdog(names)
    origin = names[-1]

    def stop() -> None:
        if dog.stop():
            log.warning(
                "the watchdog resumed %s after --max-freeze %g s: the window outlasted it; the "
                "snapshot is whole (its tables were loaded before the suspend)",
                origin,
                max_freeze,
            )

    return (
        Step(
            f"start the watchdog that resumes {origin} (it finishes the window if snapkit dies)",
            dog.start,
            dog.abandon,
            "stop the watchdog",
            must_undo=True,
        ),
        Step(
            f"arm the watchdog: {origin} is resumed {max_freeze:g} s from now at the latest",
            lambda: dog.arm(time.monotonic() + max_freeze),
        ),
        *inner,
        Step("stop the watchdog", stop),
    )


__all__ = ["guard_window"]
