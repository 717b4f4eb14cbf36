"""The zfs cut points (issue 14) as data: create, merge (rollback, destroy) and discard, opt-in
with a random stream of their own, so issue 6's default run and the stacked points keep every
id (their digests are pinned in test_stacked.py)."""

from __future__ import annotations

from vmtests.faults import matrix as faults
from vmtests.faults.matrix import all_cuts, choose


def test_zfs_points_cover_every_step_and_only_the_zfs_filesystem() -> None:
    zfs = [c for c in all_cuts() if c.method == "zfs"]
    assert {c.fs for c in zfs} == {"zfs"}
    steps = {(c.phase, c.plan, c.step) for c in zfs if c.step}
    # each step, and the pause after the last one (before the flow saves the record)
    assert steps == {
        ("create", 1, 1),
        ("create", 1, 2),
        ("merge", 1, 1),  # before zfs rollback
        ("merge", 1, 2),  # before zfs destroy
        ("merge", 1, 3),
        ("discard", 1, 1),
        ("discard", 1, 2),
    }
    seeded = [c for c in zfs if not c.step]
    assert {c.phase for c in seeded} == {"create", "merge", "discard"}
    assert all(c.marker.startswith("run: zfs ") for c in seeded)
    assert {c.kid for c in zfs} == {"zfzfe", "zfzfs"}


def test_zfs_points_are_opt_in_and_come_last() -> None:
    assert "zfs" not in faults.METHODS and "zfs" in faults.ALL_METHODS
    assert {c.method for c in choose(None)} == set(faults.METHODS)
    picked = choose(5, methods=("zfs",))
    assert len(picked) == 5 and {c.method for c in picked} == {"zfs"}
    everything = all_cuts()
    first_zfs = next(i for i, c in enumerate(everything) if c.method == "zfs")
    assert all(c.method == "zfs" for c in everything[first_zfs:])
    assert len({c.id for c in everything}) == len(everything)
