"""Place every ledgered object's snapshot state in its history, and count what that means.

For one object with states s0 (absent), s1 .. sn (after each ledgered operation), the snapshot
taken between ``begin`` and ``end`` must show some s_i with lo <= i <= hi, where
  lo = the last operation acknowledged before ``begin`` (it must be there: it was durable),
  hi = the last operation that started before ``end`` (anything later cannot be there).
A state matching no s_i is torn; one matching only below lo lost acknowledged writes; one
matching only above hi shows a write from the future. Operations that overlap the window are
classified as ``new`` (the snapshot shows them) or ``old`` (it shows an earlier state). An
operation made of several system calls may list intermediate states after its final one
(``final~partial``); they are accepted only while that operation was in flight. An operation
whose acknowledgement was refused (vmtests/guest/refusal.py) has ``t1`` = inf: it never raises
lo, and it stays in flight from its start on, so its state is allowed but never required.

One more class, kept apart from torn because it is a documented filesystem behaviour and not a
mixed or corrupt write: a *hole*. The object did not exist before the window, a write to it
was in flight, and the snapshot shows its range as zeros: the file's size got ahead of its
data. A frozen snapshot never shows one (the freeze writes every dirty page back first). A
btrfs snapshot can, because it cannot be taken under a freeze (it needs a transaction) and
btrfs with ``no-holes`` (the mkfs default since 5.15) commits an inode's in-memory size as soon
as any of its extents lands (``btrfs_inode_safe_disk_i_size_write``). Measured in a 6.1 guest:
an unsynced append in flight during ``btrfs subvolume snapshot`` left the snapshot's inode at
size 16384 with nbytes 8192 and one extent, in 1 run of 4. A power cut at that commit shows the
same, so it is btrfs's crash consistency. Which methods may show holes is
:data:`SIZE_AHEAD_OF_DATA`; for every other method a hole fails the ledger check like a tear.

Pure logic over plain values (no I/O), so the unit tests drive it with hand-made histories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vmtests.guest.campaign.ledger import ABSENT, ZERO, Op

PARTIAL = "~"  # "final~partial~...": states an in-flight operation may leave behind
# Methods whose point in time is a btrfs transaction commit rather than a freeze (see above).
SIZE_AHEAD_OF_DATA = frozenset({"btrfs-native"})


@dataclass
class Counts:
    objects: int = 0
    acked_checked: int = 0  # operations acknowledged before the snapshot began
    acked_lost: int = 0  # ... of which the snapshot does not show the effect intact
    torn: int = 0  # objects in a state no history explains
    holes: int = 0  # objects new in the window whose range reads zeros (see the docstring)
    future: int = 0  # objects showing a write that began after the snapshot ended
    window_new: int = 0
    window_old: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)


def histories(ops: Iterable[Op]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in ops:
        out.setdefault(op.obj, []).append(op)
    for hist in out.values():
        hist.sort(key=lambda o: o.step)
    return out


def classify(
    hists: dict[str, list[Op]], observe: Callable[[str], str], begin: float, end: float
) -> Counts:
    counts = Counts()
    for obj in sorted(hists):
        hist = hists[obj]
        counts.objects += 1
        seen = observe(obj)
        states = [ABSENT] + [op.state.split(PARTIAL)[0] for op in hist]
        lo = max((op.step for op in hist if op.t1 < begin), default=0)
        hi = max((op.step for op in hist if op.t0 <= end), default=0)
        matches = [i for i, s in enumerate(states) if s == seen]
        counts.acked_checked += lo
        good = [i for i in matches if lo <= i <= hi]
        # An operation of several system calls (create = open, write, fsync) that was in flight
        # may show an intermediate state, listed after its final one: it did not happen yet.
        halfway = [
            op.step - 1 for op in hist if lo < op.step <= hi and seen in op.state.split(PARTIAL)[1:]
        ]
        if good or halfway:
            at = max(good + halfway)
        elif seen == ZERO and states[lo] == ABSENT and hi > lo:
            counts.holes += 1
            counts.note(f"{obj}: hole, the file covers it but it reads zeros (was absent)")
            continue
        elif not matches:
            counts.torn += 1
            if lo and hi == lo:  # nothing was in flight: the acked state itself was damaged
                counts.acked_lost += 1
            counts.note(f"{obj}: torn, shows {seen!r}, expected one of {states[lo : hi + 1]!r}")
            continue
        elif min(matches) < lo:
            at = max(i for i in matches if i < lo)
            counts.acked_lost += lo - at
            counts.note(f"{obj}: lost {lo - at} acked write(s), shows state {at} of {lo}")
            continue
        else:
            counts.future += 1
            counts.note(f"{obj}: shows state {min(matches)} begun after the snapshot (max {hi})")
            continue
        for op in hist:
            if op.t0 <= end and op.t1 >= begin:
                if at >= op.step:
                    counts.window_new += 1
                else:
                    counts.window_old += 1
    return counts


def ledger_ok(counts: Counts, method: str) -> bool:
    """The ledger check: nothing acknowledged lost, nothing torn, nothing from the future, and
    holes only where the method's documented guarantee allows them."""
    holes_ok = counts.holes == 0 or method in SIZE_AHEAD_OF_DATA
    return counts.acked_lost == 0 and counts.torn == 0 and counts.future == 0 and holes_ok
