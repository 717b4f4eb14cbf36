"""The stacked cut points (issue 19) as data: dm+crypt and lvm+crypt, create and merge.

They must cover every plan step a stacked create and merge start have (counted with
``--dry-run`` in a guest), and adding them must not move one point of issue 6's default run:
its ids, their order and what ``--cuts N`` picks are pinned here by digest.
"""

from __future__ import annotations

import hashlib

import pytest

from vmtests.faults import matrix as faults
from vmtests.faults import report as faults_report
from vmtests.faults.matrix import Cut, all_cuts, choose

STACKED = faults.STACKED_METHODS


def _digest(cuts: list[Cut]) -> str:
    return hashlib.sha256(" ".join(c.id for c in cuts).encode()).hexdigest()[:16]


def test_the_default_run_is_unchanged_by_the_stacked_points() -> None:
    # digests of the default run without the stacked methods: taken at commit ffe278b, and
    # again when every dm and dm-direct create gained the resume watchdog's three steps
    # (issue 17: more plan steps are more cut points, so the ids moved then, and only then)
    assert _digest(choose(78)) == "f9244b73994b5d56"
    assert _digest(choose(8)) == "7c42ba9b3b9f4403"
    assert _digest(choose(None)) == "0741100d8b7ded74"
    assert (
        _digest([c for c in all_cuts() if c.method in faults.METHODS and c.phase in faults.PHASES])
        == "0741100d8b7ded74"
    )
    assert all_cuts()[: len(choose(None))] == choose(None)  # the stacked ones come after


def test_stacked_methods_are_opt_in_and_unknown_ones_refused() -> None:
    assert not set(STACKED) & set(faults.METHODS)
    assert {c.method for c in choose(None)} == set(faults.METHODS)
    with pytest.raises(ValueError, match="unknown method"):
        choose(4, methods=("dm+luks",))


@pytest.mark.parametrize("method", STACKED)
@pytest.mark.parametrize("fs", faults.FILESYSTEMS)
def test_every_step_of_a_stacked_create_and_merge_start_is_a_cut(fs: str, method: str) -> None:
    steps = {
        (c.phase, c.plan, c.step)
        for c in all_cuts()
        if c.fs == fs and c.method == method and c.step
    }
    # create: watchdog, FIFREEZE, the inner create, FITHAW, watchdog stop, NAME-crypt x3
    assert {s for p, n, s in steps if (p, n) == ("create", 1)} == set(range(1, 10))
    # merge: remove NAME-crypt, NAME-park x3, park, the inner merge, unpark, remove the park
    assert {s for p, n, s in steps if (p, n) == ("merge", 1)} == set(range(1, 10))
    finish = {s for p, n, s in steps if (p, n) == ("merge", 2)}
    assert finish == (set(range(1, 8)) if method == "dm+crypt" else set())  # dm's own finish


def test_stacked_points_have_their_own_kinds_ids_and_markers() -> None:
    stacked = [c for c in all_cuts() if c.method in STACKED]
    assert len({c.id for c in all_cuts()}) == len(all_cuts())
    kinds = {c.kid for c in stacked}
    assert kinds == {f"{fs}{m}{e}" for fs in ("e4", "xf", "bt") for m in ("dc", "lc") for e in "es"}
    assert not kinds & {c.kid for c in all_cuts() if c.method in faults.METHODS}
    assert all(len(f"{k}-o") <= 20 and k.isalnum() for k in kinds)
    assert {c.phase for c in stacked} == set(faults.MAIN_PHASES)
    seeded = {(c.method, c.phase): c.marker for c in stacked if not c.step}
    assert seeded == {
        ("lvm+crypt", "create"): "run: lvcreate",
        ("lvm+crypt", "merge"): "run: lvconvert",
        ("dm+crypt", "create"): faults.OP_EXITED,
        ("dm+crypt", "merge"): "step 7/8: dmsetup reload",
    }
    assert Cut("ext4", "dm+crypt", "create", 1, 3).id == "ext4-dm+crypt-create-p1s3"


def test_a_stacked_sample_spends_every_point_on_create_and_merge() -> None:
    picked = choose(8, methods=STACKED)
    assert len(picked) == 8 and {c.method for c in picked} == set(STACKED)
    assert len({c.group for c in picked}) == 8  # spread over the groups
    assert choose(8, methods=STACKED) == choose(8, methods=STACKED)
    assert choose(None, ids=(picked[0].id,)) == [picked[0]]  # a replay finds it


def test_the_report_grid_shows_stacked_columns() -> None:
    r = {"id": "x", "fs": "ext4", "method": "dm+crypt", "phase": "create", "ok": True}
    f = faults_report.summary([r], None, 1.0)
    assert "ext4/dm+crypt" in faults_report.table(f)


def test_the_guest_kind_of_a_stacked_cut_runs_the_base_method_under_crypt() -> None:
    from vmtests.guest.faults.kind import Kind

    k = Kind.of(Cut("ext4", "lvm+crypt", "merge").spec())
    assert (k.base_method, k.crypt) == ("lvm", True)
    assert k.base_dev == f"/dev/vg{k.kid}/lv0" and k.origin_dev == f"/dev/mapper/c{k.kid}"
    assert k.dm_name == f"c{k.kid}" and k.key_file.startswith(k.keep + "/")
    d = Kind.of(Cut("xfs", "dm+crypt", "create").spec())
    assert d.base_dev == f"/dev/mapper/o{d.kid}" and d.base_method == "dm"
    plain = Kind.of(Cut("ext4", "lvm", "merge").spec())
    assert not plain.crypt and plain.origin_dev == plain.base_dev == f"/dev/vg{plain.kid}/lv0"
