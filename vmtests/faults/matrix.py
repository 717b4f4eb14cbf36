"""Power cuts, the matrix as data (issue 6): which points exist, which a run picks, in what order.

A cut point is (filesystem, method, phase, where). *Where* is either a plan step -- flow's test
hook pauses the operation before it and QEMU is SIGKILLed there, exactly -- or a delay drawn
from the seed, for what has no steps of snapkit's own to pause at: one ``lvcreate`` /
``lvconvert`` / ``lvremove`` / ``lvextend``, and the kernel's merge once it runs. Phases:
create (on an empty origin), merge, discard and extend (of a snapshot taken beforehand).

Stacked origins (issue 19): the methods ``dm+crypt`` and ``lvm+crypt`` are snapkit's ``dm`` and
``lvm`` applied to a filesystem on a plain dm-crypt mapping over the prepared device or LV, for
the phases create and merge. They are opt-in (``--methods``), not in :data:`METHODS`: the
default run, its ids and what ``--cuts N`` picks stay exactly those of issue 6, and their
seeded delays come from a random stream of their own, so adding them moved no existing point.

ZFS (issue 14): the method ``zfs`` on the filesystem ``zfs`` (a pool on the kind's origin
disk), for the phases create (``zfs snapshot``), merge (``zfs rollback``, then ``zfs
destroy``) and discard (``zfs destroy``), each plan step and seeded delays inside ZFS's
commands. Opt-in (``--methods zfs``) like the stacked methods, with its own random stream.

Sibling merges (issue 17): the phase ``merge-sibling`` merges snapshot ``a`` while its sibling
``b`` -- a second snapshot of the same origin, taken after ``a`` and after more writes -- exists:
each step of dm's merge start and of its finish (which, with ``b`` left, puts
``snapshot-origin`` back instead of the plain table: five steps, not six), seeded delays in
dm's kernel merge and inside lvm's ``lvconvert --merge``. Opt-in (``--phases merge-sibling``),
with its own random stream, and for dm and lvm only (:data:`SIBLING_METHODS`): dm-direct's
origin is itself a ``snapshot`` table over its base, so a second dm-direct create on it is
refused and there is never a sibling to keep.

Pure: no VM, no I/O; ``run.py`` executes, ``report.py`` sums up.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FILESYSTEMS = ("ext4", "xfs", "btrfs")  # the block methods' filesystems
ALL_FILESYSTEMS = (*FILESYSTEMS, "zfs")
METHODS = ("dm", "dm-direct", "lvm")  # the default run (issue 6)
STACKED_METHODS = ("dm+crypt", "lvm+crypt")  # opt-in: --methods dm+crypt,lvm+crypt
ZFS_METHODS = ("zfs",)  # opt-in: --methods zfs (issue 14)
ALL_METHODS = METHODS + STACKED_METHODS + ZFS_METHODS
METHOD_FILESYSTEMS = {"zfs": ("zfs",)}  # a method on other filesystems than FILESYSTEMS
PHASES = ("create", "merge", "discard", "extend")  # the default run (issue 6)
SIBLING_PHASE = "merge-sibling"  # opt-in: --phases merge-sibling (issue 17)
ALL_PHASES = (*PHASES, SIBLING_PHASE)
SIBLING_METHODS = ("dm", "lvm")  # dm-direct cannot hold a sibling: see the module's doc
MERGES = ("merge", SIBLING_PHASE)  # the phases that roll the origin back to a snapshot
MAIN_PHASES = ("create", "merge")
FS_SHORT = {"ext4": "e4", "xfs": "xf", "btrfs": "bt", "zfs": "zf"}
METHOD_SHORT = {
    "dm": "dm",
    "dm-direct": "dd",
    "lvm": "lv",
    "dm+crypt": "dc",
    "lvm+crypt": "lc",
    "zfs": "zf",
}
# Plan lengths as flow numbers them (1-based, as --dry-run shows; steps + 1 pauses after the
# last step, before the flow records what the plan did). btrfs's creates add four steps:
# the watchdog, FIFREEZE, FITHAW and its stop around the suspend (snapkit/freezing.py). Every
# dm and dm-direct create has three more around its suspend window: the resume watchdog's
# start and arming before it, its stop after (snapkit/methods/dm/window.py). The second plan
# of a merge or discard (the finish) is built from what the kernel shows then.
DM_STEPS: dict[tuple[str, int], int] = {
    ("create", 1): 14,
    ("merge", 1): 4,
    ("merge", 2): 6,
    ("discard", 1): 1,
    ("discard", 2): 6,
    ("extend", 1): 5,
}
BTRFS_FREEZE_STEPS = 4
DIRECT_STEPS: dict[tuple[str, int], int] = {("create", 1): 12, ("merge", 1): 5, ("discard", 1): 5}
# A stacked create (snapkit/methods/stack/method.py), as ``create --dry-run`` shows it in a
# guest, the same on every filesystem (the inner plan's own freeze steps are not planned under
# a frozen top): watchdog start, FIFREEZE, one step running the whole inner create, FITHAW,
# watchdog stop, then create/load/resume of NAME-crypt. The merge's start: remove NAME-crypt,
# create/load/resume NAME-park, reload the origin's crypt mapping over it, the inner merge (one
# step), reload it back, remove the park; dm's finish is its own (6 steps, as unstacked).
STACK_STEPS: dict[str, dict[tuple[str, int], int]] = {
    "dm+crypt": {("create", 1): 8, ("merge", 1): 8, ("merge", 2): 6},
    "lvm+crypt": {("create", 1): 8, ("merge", 1): 8},
}
# zfs (snapkit/methods/zfs/snapshot.py): create is one step (zfs snapshot), merge two
# (zfs rollback, zfs destroy), discard one (zfs destroy).
ZFS_STEPS: dict[tuple[str, int], int] = {("create", 1): 1, ("merge", 1): 2, ("discard", 1): 1}
# dm's merge beside a sibling: the start is the merge's own (remove the snapshot device,
# load snapshot-merge, suspend, resume); the finish loads snapshot-origin again for the
# sibling instead of the plain table and keeps -real (load, suspend, resume, detach the
# loop, unlink the COW). lvm's is one lvconvert: seeded delays only.
SIBLING_STEPS: dict[str, dict[tuple[str, int], int]] = {
    "dm": {(SIBLING_PHASE, 1): 4, (SIBLING_PHASE, 2): 5},
}
SEEDED = {  # (method, phase): (delays per filesystem, shortest and longest delay in ms)
    ("lvm", "create"): (3, 0, 1500),
    ("lvm", "merge"): (3, 0, 3000),
    ("lvm", "discard"): (1, 0, 1000),
    ("lvm", "extend"): (1, 0, 1500),
    ("dm", "merge"): (2, 0, 1200),
    ("dm", "create"): (2, 0, 600),
    ("dm-direct", "create"): (1, 0, 600),
}
SEEDED_STACKED = {  # drawn from their own stream (``STACKED_SEED``): see the module's doc
    ("lvm+crypt", "create"): (2, 0, 1500),  # inside lvcreate, the top frozen
    ("lvm+crypt", "merge"): (2, 0, 3000),  # inside lvconvert, the crypt mapping parked
    ("dm+crypt", "create"): (1, 0, 600),  # after it returned: recover rebuilds NAME-crypt
    ("dm+crypt", "merge"): (1, 0, 1200),  # in the kernel's merge, the mapping moved back
}
SEEDED_ZFS = {  # from their own stream too (``ZFS_SEED``), inside ZFS's one command
    ("zfs", "create"): (2, 0, 800),
    ("zfs", "merge"): (2, 0, 1500),
    ("zfs", "discard"): (1, 0, 800),
}
SEEDED_SIBLING = {  # from their own stream too (``SIBLING_SEED``)
    ("dm", SIBLING_PHASE): (3, 0, 1200),  # in the kernel's merge, the sibling copying first
    ("lvm", SIBLING_PHASE): (4, 0, 3000),  # inside lvconvert --merge
}
# A seeded delay counts from the moment the operation's one external command is logged as
# started (SNAPKIT_DEBUG), so it lands inside that command, not in snapkit's start-up; for a
# dm create, from the moment the command exited (its record saved: the cut then tests that
# recover re-assembles a live snapshot while the writer goes on); for a dm merge, from the
# start plan's last step (the origin resumed as snapshot-merge), so it lands in the kernel's
# merge of the base's 12 MiB of exceptions, or in the finish.
OP_EXITED = "snapkit exited"
MARKERS = {
    ("lvm", "create"): "run: lvcreate",
    ("lvm", "merge"): "run: lvconvert",
    ("lvm", "discard"): "run: lvremove",
    ("lvm", "extend"): "run: lvextend",
    ("dm", "create"): OP_EXITED,
    ("dm-direct", "create"): OP_EXITED,
    ("dm", "merge"): "step 4/4: dmsetup resume",
    ("lvm+crypt", "create"): "run: lvcreate",
    ("lvm+crypt", "merge"): "run: lvconvert",
    ("dm+crypt", "create"): OP_EXITED,
    ("dm+crypt", "merge"): "step 7/8: dmsetup reload",
    ("dm", SIBLING_PHASE): "step 4/4: dmsetup resume",
    ("lvm", SIBLING_PHASE): "run: lvconvert",
    ("zfs", "create"): "run: zfs snapshot",
    ("zfs", "merge"): "run: zfs rollback",
    ("zfs", "discard"): "run: zfs destroy",
}


@dataclass(frozen=True, order=True)
class Cut:
    fs: str
    method: str  # "dm", "dm-direct", "lvm", stacked: "dm+crypt", "lvm+crypt", or "zfs"
    phase: str  # "create", "merge", "discard", "extend" or "merge-sibling"
    plan: int = 1  # which plan of the command the step is in
    step: int = 0  # pause before this step; 0: cut after delay_ms instead
    delay_ms: int = 0

    @property
    def id(self) -> str:
        where = f"p{self.plan}s{self.step}" if self.step else f"t{self.delay_ms}ms"
        return f"{self.fs}-{self.method}-{self.phase}-{where}"

    @property
    def marker(self) -> str:
        """For a seeded cut: the stderr line after which its delay starts ("": the launch)."""
        return "" if self.step else MARKERS.get((self.method, self.phase), "")

    @property
    def snapped(self) -> bool:
        """Every phase but create starts from a snapshot taken beforehand."""
        return self.phase != "create"

    @property
    def sibling(self) -> bool:
        """The merge-sibling phase's base holds a second snapshot, taken after the first."""
        return self.phase == SIBLING_PHASE

    @property
    def kid(self) -> str:
        """The kind: which base disks the cut boots on (and the names it uses in the guest)."""
        start = "b" if self.sibling else "s" if self.snapped else "e"
        return FS_SHORT[self.fs] + METHOD_SHORT[self.method] + start

    @property
    def group(self) -> str:
        return f"{self.phase}/{self.fs}/{self.method}"

    def spec(self, *, controls: bool = False) -> dict[str, Any]:
        return {
            "fs": self.fs,
            "method": self.method,
            "phase": self.phase,
            "plan": self.plan,
            "step": self.step,
            "kid": self.kid,
            "snapped": self.snapped,
            "sibling": self.sibling,
            "controls": controls,
        }


def kind_spec(kid: str, cuts: list[Cut]) -> dict[str, Any]:
    """What the guest needs to build the base of ``kid``: any of its cuts says it."""
    cut = next(c for c in cuts if c.kid == kid)
    return cut.spec()


def _steps(fs: str, method: str) -> dict[tuple[str, int], int]:
    if method in STACK_STEPS:
        return STACK_STEPS[method]
    if method == "zfs":
        return ZFS_STEPS
    steps = {"dm": DM_STEPS, "dm-direct": DIRECT_STEPS}.get(method, {})
    extra = BTRFS_FREEZE_STEPS if fs == "btrfs" else 0
    return {k: n + (extra if k == ("create", 1) else 0) for k, n in steps.items()}


def all_cuts(seed: int = 6) -> list[Cut]:
    """Every point the matrix knows, in a stable order: each step (and the pause after the
    last) of every plan snapkit applies, per filesystem, and seeded delays where the work is
    one external command or the kernel's. The stacked methods' points come after all of
    issue 6's, their delays from a stream of their own, so those keep their ids and order; so
    do the merge-sibling points (issue 17), before the zfs ones."""
    return (
        _cuts(seed, METHODS, SEEDED)
        + _cuts(STACKED_SEED + seed, STACKED_METHODS, SEEDED_STACKED)
        + _cuts(SIBLING_SEED + seed, SIBLING_METHODS, SEEDED_SIBLING, _sibling_steps)
        + _cuts(ZFS_SEED + seed, ZFS_METHODS, SEEDED_ZFS)
    )


STACKED_SEED = 19_000  # issue 19: offsets the stacked points' stream from issue 6's
ZFS_SEED = 14_000  # issue 14: the zfs points' own stream
SIBLING_SEED = 17_000  # issue 17: the merge-sibling points' own stream


def _sibling_steps(fs: str, method: str) -> dict[tuple[str, int], int]:
    return SIBLING_STEPS.get(method, {})


def _cuts(
    seed: int,
    methods: tuple[str, ...],
    seeded: dict[tuple[str, str], tuple[int, int, int]],
    steps: Callable[[str, str], dict[tuple[str, int], int]] = _steps,
) -> list[Cut]:
    rng = random.Random(seed)
    cuts: list[Cut] = []
    for fs in ALL_FILESYSTEMS:
        for method in methods:
            if fs not in METHOD_FILESYSTEMS.get(method, FILESYSTEMS):
                continue
            for (phase, plan), n in steps(fs, method).items():
                cuts += [Cut(fs, method, phase, plan, s) for s in range(1, n + 2)]
            for (m, phase), (count, lo, hi) in seeded.items():
                if m == method:
                    cuts += [
                        Cut(fs, m, phase, delay_ms=rng.randrange(lo, hi)) for _ in range(count)
                    ]
    return cuts


def choose(
    n: int | None,
    seed: int = 6,
    *,
    ids: tuple[str, ...] = (),
    methods: tuple[str, ...] = METHODS,
    phases: tuple[str, ...] = PHASES,
) -> list[Cut]:
    """``n`` points: five sixths from create and merge (the acceptance counts those), the
    rest from discard and extend. Within each, every (phase, fs, method) group gets points in
    proportion to its size -- the next point always comes from the group least covered so
    far, ties and each group's points in a seeded order -- so a small ``n`` still touches
    many groups. ``ids``: exactly these points (a replay). A selection with no discard or
    extend points (the stacked methods have none) puts all ``n`` on create and merge; one with
    only merge-sibling points spreads all ``n`` over those. ``phases``: the default run's four,
    or ``merge-sibling`` (with others or alone), which takes the methods dm and lvm only."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(ALL_METHODS)}")
    check_phases(phases, methods)
    everything = all_cuts(seed)
    if ids:
        known = {c.id: c for c in everything}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ValueError(f"unknown cut point(s) {', '.join(missing)} for seed {seed}")
        return [known[i] for i in ids]
    cuts = [c for c in everything if c.method in methods and c.phase in phases]
    if n is None or n >= len(cuts):
        return cuts
    main = [c for c in cuts if c.phase in MAIN_PHASES]
    rest = [c for c in cuts if c.phase not in MAIN_PHASES]
    n_main = min(len(main), max(-(-n * 5 // 6), n - len(rest)))
    picked = _spread(main, n_main, seed) + _spread(rest, n - n_main, seed)
    return sorted(picked, key=cuts.index)


def check_phases(phases: tuple[str, ...], methods: tuple[str, ...]) -> None:
    """Refuse an unknown phase, and the merge-sibling phase with a method that cannot hold a
    sibling snapshot -- rather than run it and report no points of that method."""
    unknown = [p for p in phases if p not in ALL_PHASES]
    if unknown or not phases:
        raise ValueError(
            f"unknown phase(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(ALL_PHASES)}"
        )
    other = [m for m in methods if m not in SIBLING_METHODS]
    if SIBLING_PHASE in phases and other:
        raise ValueError(
            f"the {SIBLING_PHASE} phase is for the methods {' and '.join(SIBLING_METHODS)} "
            f"only, not {', '.join(other)}: dm-direct's origin is itself a snapshot table over "
            "its base, so a second snapshot of it is refused and no sibling can exist "
            "(give --methods dm,lvm, or leave --methods out)"
        )


def _spread(cuts: list[Cut], n: int, seed: int) -> list[Cut]:
    rng = random.Random(seed)
    groups: dict[str, list[Cut]] = {}
    for c in cuts:
        groups.setdefault(c.group, []).append(c)
    size = {g: len(m) for g, m in groups.items()}
    for members in groups.values():
        rng.shuffle(members)
    tie = {g: rng.random() for g in sorted(groups)}
    picked: list[Cut] = []
    while len(picked) < min(n, len(cuts)):
        g = min(
            (g for g in groups if groups[g]),
            key=lambda g: ((size[g] - len(groups[g])) / size[g], tie[g]),
        )
        picked.append(groups[g].pop())
    return picked


def chains(cuts: list[Cut], count: int) -> list[list[Cut]]:
    """Split into ``count`` chains (one VM boot per cut: each boot judges the previous cut and
    arms the next) ordered so that two neighbours are never of the same kind where that can
    be helped: two cuts of one kind in one boot would meet on names and filesystem UUIDs."""
    buckets: list[list[Cut]] = [[] for _ in range(max(1, min(count, len(cuts))))]
    for i, c in enumerate(sorted(cuts, key=lambda c: (c.kid, c.id))):
        buckets[i % len(buckets)].append(c)
    return [_alternate(b) for b in buckets if b]


def _alternate(cuts: list[Cut]) -> list[Cut]:
    left = Counter(c.kid for c in cuts)
    pool = list(cuts)
    out: list[Cut] = []
    while pool:
        last = out[-1].kid if out else None
        choices = [k for k in left if left[k] and k != last] or [k for k in left if left[k]]
        kid = max(choices, key=lambda k: (left[k], k))
        cut = next(c for c in pool if c.kid == kid)
        pool.remove(cut)
        left[kid] -= 1
        out.append(cut)
    return out


__all__ = [
    "ALL_FILESYSTEMS",
    "ALL_METHODS",
    "ALL_PHASES",
    "FILESYSTEMS",
    "METHODS",
    "PHASES",
    "SIBLING_METHODS",
    "SIBLING_PHASE",
    "STACKED_METHODS",
    "ZFS_METHODS",
    "Cut",
    "all_cuts",
    "chains",
    "check_phases",
    "choose",
    "kind_spec",
]
