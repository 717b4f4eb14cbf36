"""Power cuts, one point-in-time copy judged (issues 6 and 17): does a snapshot still hold what
it held when it was taken? Shared by the judge of the snapshot a cut operated on and by that of
its sibling in the merge-sibling phase, so both are held to one and the same test.

A copy is judged on its device, never through snapkit's own mount: fsck (read-only), then a
throwaway writable layer over it (xfs and ext4 may have a log to replay, which a read-only
device cannot take) mounted read-only, on which the acknowledged files before it are read
back and the whole tree is digested. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmtests.guest import check
from vmtests.guest.faults.kind import Kind
from vmtests.guest.proc import CommandError
from vmtests.guest.writer import pattern


def count_lost(directory: str, upto: int) -> int:
    """Acknowledged files ``f1..f<upto>`` that are missing or not their exact pattern."""
    lost = 0
    for n in range(1, upto + 1):
        try:
            with open(f"{directory}/f{n}", "rb") as f:
                ok = f.read() == pattern(n)
        except OSError:
            ok = False
        lost += not ok
    return lost


def text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@dataclass(frozen=True)
class Copy:
    """What one copy showed: fsck's verdict (and its output), the acknowledged files it lacks,
    whether its tree is the one recorded at its creation (None: none recorded), and why it did
    not mount ("": it did)."""

    fsck_ok: bool
    fsck_out: str
    lost: int
    equal: bool | None
    mount_error: str


def check_copy(
    k: Kind,
    dev: str,
    *,
    where: str,
    before: int,
    expected: str | None,
    plant: Callable[[str], None] | None = None,
) -> Copy:
    """Judge the copy on ``dev``: files ``where/f1..f<before>`` acknowledged before it, and the
    tree digest recorded in the file ``expected``. ``plant`` (a negative control) gets the
    throwaway layer before it is mounted, to change it as a fault would have changed ``dev``."""
    result = check.fsck(k.fs, dev)
    lost, equal, error = before, None, ""
    try:
        with check.layer(dev) as layer:
            if plant is not None:
                plant(layer)
            with check.mounted(k.fs, layer, k.snap_mnt):
                lost = count_lost(f"{k.snap_mnt}/{where}", before)
                if expected is not None:
                    equal = check.tree_hash(k.snap_mnt) == text(expected)
    except CommandError as exc:  # a copy that does not mount is a finding, not a crash
        error = str(exc)
    return Copy(result.ok or check.xfs_log_only(result), result.out, lost, equal, error)


__all__ = ["Copy", "check_copy", "count_lost", "text"]
