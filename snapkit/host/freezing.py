"""Holding a filesystem frozen around other steps, with the thaw guaranteed.

Shared by the ``freeze`` method (around the user's snapshot command) and by the methods whose
dm suspend should freeze the filesystem but, for some filesystems on this kernel, does not
(``fs.SUSPEND_DOES_NOT_FREEZE``): there the suspend is bracketed by an explicit FIFREEZE.
A separate watchdog process thaws at the deadline even if snapkit is killed with SIGKILL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapkit.errors import OperationError, UsageError
from snapkit.host import fs
from snapkit.model import Target
from snapkit.plan import Step
from snapkit.run import Completed


class Freezer(Protocol):
    """The two ioctls, as a seam for tests."""

    def freeze(self, mountpoint: Path) -> None: ...

    def thaw(self, mountpoint: Path) -> bool: ...


class IoctlFreezer:
    def freeze(self, mountpoint: Path) -> None:
        fs.freeze(mountpoint)

    def thaw(self, mountpoint: Path) -> bool:
        return fs.thaw(mountpoint)


class Guard(Protocol):
    """What the plan needs of a watchdog (:class:`snapkit.host.watchdog.Watchdog`)."""

    def start(self) -> None: ...

    def arm(self, deadline: float) -> None: ...

    def stop(self) -> bool: ...

    def abandon(self) -> None: ...


class GuardMaker(Protocol):
    """Makes the watchdog of one mount point; ``resume`` names dm devices the steps inside the
    window may hold suspended, which it resumes before it thaws."""

    def __call__(self, mountpoint: Path, *, resume: Sequence[str] = ()) -> Guard: ...


def real_watchdog(mountpoint: Path, *, resume: Sequence[str] = ()) -> Guard:
    from snapkit.host.watchdog import Watchdog

    return Watchdog(mountpoint, resume=resume)


@dataclass
class Outcome:
    """Filled in as the plan runs: the command's result and when the window opened and closed."""

    result: Completed | None = None
    frozen_at: float | None = None
    thawed_at: float | None = None
    deadline: float = 0.0

    @property
    def window(self) -> float | None:
        if self.frozen_at is None or self.thawed_at is None:
            return None
        return self.thawed_at - self.frozen_at


def freeze_around(
    mountpoint: Path,
    inner: Sequence[Step],
    max_freeze: float,
    *,
    freezer: Freezer,
    watchdog: Guard,
    outcome: Outcome,
) -> tuple[Step, ...]:
    """Watchdog, FIFREEZE, ``inner``, FITHAW, stop the watchdog: the steps that hold a
    filesystem frozen around others and guarantee the thaw whatever fails, even a SIGKILL of
    snapkit (the watchdog process thaws at the deadline). ``outcome.frozen_at`` gives the
    deadline, so inner steps can bound themselves to what is left of it."""
    return freeze_all_around(
        [(mountpoint, watchdog)], inner, max_freeze, freezer=freezer, outcome=outcome
    )


def freeze_all_around(
    members: Sequence[tuple[Path, Guard]],
    inner: Sequence[Step],
    max_freeze: float,
    *,
    freezer: Freezer,
    outcome: Outcome,
) -> tuple[Step, ...]:
    """:func:`freeze_around` for several filesystems (a snapshot group): every watchdog
    started, then every filesystem frozen, ``inner``, every one thawed, every watchdog
    stopped. One deadline for all, taken at the first freeze and given to every watchdog: a
    group's window is one window, and no member may stay frozen past it."""
    if max_freeze <= 0:
        raise UsageError(f"--max-freeze must be positive, not {max_freeze:g}")
    several = len(members) > 1
    starts: list[Step] = []
    freezes: list[Step] = []
    thaws: list[Step] = []
    stops: list[Step] = []
    for index, (mountpoint, watchdog) in enumerate(members):
        first, last = index == 0, index == len(members) - 1

        def do_freeze(mp: Path = mountpoint, wd: Guard = watchdog, first: bool = first) -> None:
            if first:
                outcome.deadline = time.monotonic() + max_freeze
            wd.arm(outcome.deadline)
            freezer.freeze(mp)
            outcome.frozen_at = outcome.frozen_at if not first else time.monotonic()

        def do_thaw(mp: Path = mountpoint, last: bool = last) -> None:
            freezer.thaw(mp)
            if last:
                outcome.thawed_at = time.monotonic()

        def do_stop(mp: Path = mountpoint, wd: Guard = watchdog) -> None:
            if wd.stop():
                raise OperationError(
                    f"the watchdog thawed {mp} before snapkit did",
                    hint=f"the window passed --max-freeze {max_freeze:g}: the copy may be torn",
                )

        def undo_freeze(mp: Path = mountpoint) -> None:
            freezer.thaw(mp)

        starts.append(
            Step(
                f"start the watchdog for {mountpoint}",
                watchdog.start,
                watchdog.abandon,
                "stop the watchdog (it thaws if armed)",
                must_undo=True,
            )
        )
        freezes.append(
            Step(
                f"freeze {mountpoint} (FIFREEZE; watchdog thaws after {max_freeze:g} s)",
                do_freeze,
                undo_freeze,
                f"thaw {mountpoint}",
                must_undo=True,
            )
        )
        thaws.append(Step(f"thaw {mountpoint} (FITHAW)", do_thaw))
        stops.append(
            Step(f"stop the watchdog for {mountpoint}" if several else "stop the watchdog", do_stop)
        )
    return (*starts, *freezes, *inner, *thaws, *stops)


def guard_suspend(
    target: Target,
    inner: Sequence[Step],
    max_freeze: float,
    *,
    freezer: Freezer | None = None,
    watchdog: Callable[[Path], Guard] = real_watchdog,
) -> tuple[Step, ...]:
    """``inner`` (steps that suspend the origin's dm device and rely on that to freeze the
    filesystem), made to freeze it explicitly where the kernel's suspend does not."""
    if target.mountpoint is None or target.fstype not in fs.SUSPEND_DOES_NOT_FREEZE:
        return tuple(inner)
    return freeze_around(
        target.mountpoint,
        inner,
        max_freeze,
        freezer=freezer or IoctlFreezer(),
        watchdog=watchdog(target.mountpoint),
        outcome=Outcome(),
    )


__all__ = [
    "Freezer",
    "Guard",
    "GuardMaker",
    "IoctlFreezer",
    "Outcome",
    "freeze_all_around",
    "freeze_around",
    "guard_suspend",
    "real_watchdog",
]
