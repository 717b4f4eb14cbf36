"""The matrix as data: ids, seeds, the quick subset's promises, shards and selection."""

import pytest

from vmtests.campaign import scenarios
from vmtests.campaign.scenarios import Scenario


def test_ids_are_unique_readable_and_stable() -> None:
    full = scenarios.full()
    ids = [s.id for s in full]
    assert len(ids) == len(set(ids))
    assert "ext4-lvm-writer" in ids and "control-dd-copy-xfs-writer" in ids
    assert (
        Scenario("ext4", "lvm", "writer").effective_seed
        == Scenario("ext4", "lvm", "writer").effective_seed
    )


def test_full_is_every_valid_combination() -> None:
    real = [s for s in scenarios.full() if not s.is_control and not s.stack]
    assert not any(s.method == "btrfs-native" and s.fs != "btrfs" for s in real)
    per_fs = {
        fs: {(s.method, s.workload) for s in real if s.fs == fs} for fs in scenarios.FILESYSTEMS
    }
    assert ("lvm-thin", "mmap") in per_fs["ext4"] and ("lvm", "sqlite") in per_fs["ext4"]
    # every method but btrfs's own on every block filesystem, with every workload (remount-ro
    # with those that hold no file open); dm-direct on all of them (its xfs and btrfs copies
    # are mounted through a throwaway layer)
    # the database's variants (claim 11) only on the core filesystems; sqlite-pre only where
    # the verb takes a --pre hook (freeze-lvm)
    variants = {
        (m, w) for m, w in per_fs["ext4"] if w in (*scenarios.DB_VARIANTS, *scenarios.PROBES)
    }
    assert variants == {
        *((m, "sqlite-off") for m in ("lvm", "lvm-thin", "dm", "dm-direct", "freeze-lvm")),
        ("lvm", "sqlite-pre"),
        ("dm", "sqlite-pre"),
        ("remount-ro", "desktop"),  # claim 6's probe: remount-ro with a database held open
    }
    plain = {("lvm-plain", w) for w in scenarios.PLAIN_WORKLOADS}  # claim 2's filesystems
    assert per_fs["xfs"] == per_fs["ext4"] - plain
    for fs in ("ext3", "reiserfs"):
        assert per_fs[fs] == per_fs["ext4"] - variants, fs
    for fs in ("ext2", "f2fs", "jfs"):
        assert per_fs[fs] == per_fs["ext4"] - variants - plain, fs
    assert {s.fs for s in real if s.method == "dm-direct"} == set(scenarios.BLOCK_FILESYSTEMS)
    # zfs: only its own snapshots, every workload; no block method, stack or control on it
    assert {(s.method, s.workload) for s in real if s.fs == "zfs"} == {
        ("zfs-native", w)
        for w in scenarios.WORKLOADS
        if w not in (*scenarios.DB_VARIANTS, *scenarios.PROBES)
    }
    assert not any(s.method == "zfs-native" and s.fs != "zfs" for s in real)
    controls = [s for s in scenarios.full() if s.is_control]
    assert {(s.control, s.fs, s.workload) for s in controls} == {
        (c, fs, scenarios.CONTROL_WORKLOAD.get(c, "writer"))
        for c in scenarios.CONTROLS
        for fs in scenarios.CONTROL_FILESYSTEMS.get(c, scenarios.CORE_FILESYSTEMS)
    }
    stacked = {(s.fs, s.method, s.stack) for s in scenarios.full() if s.stack}
    assert stacked == {
        (fs, m, "crypt") for fs in scenarios.CORE_FILESYSTEMS for m in scenarios.STACKED_METHODS
    }
    assert scenarios.select("full", ids=["zfs-zfs-native-writer"])[0].snapkit_method == "zfs"
    assert "zfs-zfs-native-writer" in {s.id for s in scenarios.quick()}


def test_the_older_filesystems_keep_todays_id_form() -> None:
    ids = {s.id for s in scenarios.full()}
    assert {"ext3-lvm-writer", "ext2-lvm-writer", "reiserfs-lvm-writer"} <= ids
    assert {"ext2-freeze-lvm-churn", "ext3-remount-ro-writer", "ext4-lvm-sqlite"} <= ids
    assert "control-drop-wal-ext4-sqlite" in ids


def test_only_the_generic_flavours_filesystems_name_a_kernel_flavour() -> None:
    needs = {s.fs for s in scenarios.full() if s.flavour}
    assert needs == {"reiserfs", "f2fs", "jfs"}
    assert Scenario("reiserfs", "lvm", "writer").flavour == "generic"


def test_a_stack_only_goes_under_a_block_method() -> None:
    assert Scenario("ext4", "lvm", "writer", stack="crypt").id == "ext4-crypt-lvm-writer"
    for method in ("remount-ro", "freeze-lvm", "dm-direct"):
        with pytest.raises(ValueError):
            Scenario("ext4", method, "writer", stack="crypt")
    with pytest.raises(ValueError):
        Scenario("ext2", "lvm", "writer", stack="crypt")


def test_quick_keeps_its_promises() -> None:
    quick = scenarios.quick()
    assert len(quick) <= 16
    on_default_kernel = {fs for fs in scenarios.FILESYSTEMS if fs not in scenarios.FS_FLAVOUR}
    assert {s.fs for s in quick} == on_default_kernel
    assert not any(s.flavour for s in quick)  # the quick matrix builds no second kernel
    assert len({s.method for s in quick if not s.is_control}) >= 4
    # every control once, but those whose filesystem needs another kernel flavour (jfs-freeze)
    assert {s.control for s in quick if s.is_control} == {
        c
        for c in scenarios.CONTROLS
        if any(
            fs not in scenarios.FS_FLAVOUR for fs in scenarios.CONTROL_FILESYSTEMS.get(c, ("ext4",))
        )
    }


@pytest.mark.parametrize(
    ("fs", "method", "workload", "control"),
    [
        ("ext4", "btrfs-native", "writer", ""),
        ("zfs", "lvm", "writer", ""),
        ("ext4", "zfs-native", "writer", ""),
        ("zfs", "none", "writer", "dd-copy"),
        ("ext4", "lvm", "nope", ""),
        ("ext4", "lvm", "writer", "dd-copy"),
        ("ext4", "remount-ro", "mmap", ""),
        ("ext4", "remount-ro", "sqlite", ""),
        ("ext4", "none", "writer", "drop-wal"),
        ("xfs", "none", "sqlite", "drop-wal"),
        ("ext2", "none", "writer", "dd-copy"),
        ("reiserfs", "btrfs-native", "writer", ""),
        ("ext4", "freeze-lvm", "sqlite-pre", ""),  # snapkit freeze takes no --pre hook
        ("ext3", "lvm", "sqlite-off", ""),  # the variants run on the core filesystems
        ("ext4", "remount-ro", "sqlite-off", ""),
        ("ext4", "lvm", "desktop", ""),  # the probe measures remount-ro only
        ("ext3", "remount-ro", "desktop", ""),
    ],
)
def test_invalid_scenarios_are_refused(fs: str, method: str, workload: str, control: str) -> None:
    with pytest.raises(ValueError):
        Scenario(fs, method, workload, control)


def test_shards_partition_the_matrix_deterministically() -> None:
    full = scenarios.full()
    parts = [scenarios.shard(full, k, 4) for k in range(1, 5)]
    assert sorted(s.id for p in parts for s in p) == sorted(s.id for s in full)
    assert parts[1] == scenarios.shard(list(reversed(full)), 2, 4)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "1/0", "1-2"])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        scenarios.parse_shard(text)


def test_select_by_id_with_a_seed_replays_that_seed() -> None:
    (s,) = scenarios.select("quick", ids=["xfs-dm-writer"], seed=42)
    assert (s.id, s.effective_seed) == ("xfs-dm-writer", 42)
    assert s.guest_spec()["seed"] == 42
    with pytest.raises(ValueError, match="unknown scenario"):
        scenarios.select("quick", ids=["no-such"])


def test_group_rows_and_their_refusals() -> None:
    rows = {s.id: s for s in scenarios.full() if s.group}
    assert "group-ext4+xfs+ext4-lvm-writer" in rows and "group-ext4+xfs-dm-direct-writer" in rows
    assert {s.method for s in rows.values()} == set(scenarios.GROUP_METHODS)
    assert any(s.group for s in scenarios.quick())
    assert rows["group-ext4+xfs-dm-writer"].guest_spec()["group"] == "ext4+xfs"
    for method, group in [("lvm-thin", "ext4+xfs"), ("dm", "ext4"), ("dm", "xfs+ext4")]:
        with pytest.raises(ValueError):
            Scenario("ext4", method, "writer", group=group)


def test_only_rows_that_need_a_missing_snapkit_method_are_skipped() -> None:
    """lvm-plain runs no snapkit (the first VM run skipped its rows as 'no method'); a row
    of a method snapkit lacks is still skipped (the control)."""
    from vmtests.campaign import runner

    assert runner.why_not_runnable(Scenario("ext4", "lvm-plain", "writer")) == ""
    assert runner.why_not_runnable(Scenario("ext4", "lvm", "writer")) == ""
    ghost = Scenario("ext4", "lvm", "writer")
    object.__setattr__(ghost, "method", "zfs-native")  # a method whose snapkit name is absent
    original = runner.snapkit_methods
    try:
        runner.snapkit_methods = lambda: frozenset({"lvm"})  # type: ignore[assignment]
        assert "has no method" in runner.why_not_runnable(ghost)
    finally:
        runner.snapkit_methods = original  # type: ignore[assignment]
