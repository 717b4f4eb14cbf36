"""``snapkit recover``: after a crash or reboot, bring what the state file says back to a known
state -- every snapshot present and usable, or cleanly absent; every verb cut short settled.

Each method family knows what a crash leaves of its own snapshots, so this module only runs
the families the registry lists (:data:`snapkit.methods.registry.RECOVERIES`), in its order,
through the :class:`~snapkit.methods.base.Recoverable` protocol:

1. every family's ``activate`` first (LVM's ``vgchange -ay``): a dm snapshot's origin may be
   an LV, and must be there before device-mapper's plan looks for it;
2. every family's plan is built before any runs, so ``--dry-run`` shows them all;
3. each plan is applied and the state saved after it, so a crash in a later family's plan
   keeps what the earlier ones settled. The first family's plan (device-mapper's, which
   re-assembles the devices) is applied and saved even when empty, so it is always plan 1
   for ``SNAPKIT_TEST_PAUSE_AT`` and a dry run always prints its title.

What each family does, and why it is safe, is in its own ``recover`` module
(``snapkit/methods/*/recover.py``). The merges recover resumes are finished by the flow
(:meth:`snapkit.flow.Flow.recover`). Idempotent: running it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from snapkit.methods import registry
from snapkit.methods.base import Context
from snapkit.plan import Plan
from snapkit.state import StateFile, reconcile


@dataclass(frozen=True)
class Recovery:
    """What recover did (or, with ``--dry-run``, would do), one line per action."""

    actions: tuple[str, ...]
    dropped: tuple[str, ...]  # records removed: their snapshot is cleanly absent
    merging: tuple[str, ...]  # resumed: 'snapshot merge NAME --wait' (dm-direct discard: discard)


def run(
    ctx: Context, state: StateFile, apply: Callable[[Plan], None], *, dry_run: bool = False
) -> Recovery | str:
    """Run every family's recovery; the plans' text instead if ``dry_run``."""
    # What the kernel shows under snapkit's uuids and the file lacks is adopted first: a
    # snapshot whose create was finished by the suspend watchdog after snapkit died has no
    # record yet, and its COW would otherwise be swept as an orphan.
    saved = state.load()
    data = reconcile(saved, ctx.host.dm)
    if not dry_run and data != saved:
        state.save(data)
    families = registry.recoveries(ctx)
    for family in families:
        family.activate(data)
    parts = [family.plan_recover(data) for family in families]
    if dry_run:
        return "".join(plan.render() for i, (plan, _) in enumerate(parts) if i == 0 or plan.steps)
    actions: list[str] = []
    dropped: list[str] = []
    merging: list[str] = []
    for i, (plan, done) in enumerate(parts):
        if i == 0 or plan.steps:
            apply(plan)
        state.save(done.kept(state.load()))
        actions += done.actions
        dropped += done.dropped
        merging += done.merging
    return Recovery(tuple(actions), tuple(dropped), tuple(merging))


__all__ = ["Recovery", "run"]
