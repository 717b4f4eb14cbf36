"""The oracle: placing snapshot states in ledger histories, and the verdict rules."""

from vmtests.campaign import oracle
from vmtests.campaign.oracle import Verdict
from vmtests.campaign.scenarios import Scenario
from vmtests.guest.campaign import verify
from vmtests.guest.campaign.ledger import Op

BEGIN, END = 10.0, 12.0
# One object's history: acked before (1, 2), in the window (3), begun after the end (4).
HIST = [
    Op("w:x#0", 1, "s1", 1.0, 2.0),
    Op("w:x#0", 2, "s2", 3.0, 4.0),
    Op("w:x#0", 3, "s3", 11.0, 13.0),
    Op("w:x#0", 4, "s4", 14.0, 15.0),
]


def classify(seen: str, hist: list[Op] = HIST) -> verify.Counts:
    return verify.classify(verify.histories(hist), lambda _obj: seen, BEGIN, END)


def test_the_last_acked_state_passes_and_the_window_write_is_old() -> None:
    c = classify("s2")
    assert (c.acked_checked, c.acked_lost, c.torn, c.future) == (2, 0, 0, 0)
    assert (c.window_new, c.window_old) == (0, 1)


def test_a_window_write_may_be_new() -> None:
    c = classify("s3")
    assert (c.acked_lost, c.torn, c.future, c.window_new) == (0, 0, 0, 1)


def test_an_older_state_loses_acked_writes() -> None:
    assert classify("s1").acked_lost == 1
    assert classify("absent").acked_lost == 2


def test_a_write_begun_after_the_end_must_not_show() -> None:
    assert classify("s4").future == 1


def test_an_unexplained_state_is_torn_and_loses_the_acked_write_when_nothing_was_in_flight() -> (
    None
):
    c = classify("torn:crc")
    assert (c.torn, c.acked_lost) == (1, 0)  # write 3 was in flight: it may be what tore
    quiet = HIST[:2]
    c = classify("torn:crc", quiet)
    assert (c.torn, c.acked_lost) == (1, 1)


def test_objects_created_after_the_snapshot_may_be_absent() -> None:
    late = [Op("c:1", 1, "a100/1", 13.0, 14.0)]
    c = classify("absent", late)
    assert (c.acked_checked, c.acked_lost, c.future, c.torn) == (0, 0, 0, 0)
    assert classify("a100/1", late).future == 1


REAL = Scenario("ext4", "lvm", "writer")
CONTROL = Scenario("ext4", "none", "writer", "dd-copy")
GOOD = {
    "checks": {"snapshot": True, "fsck": True, "mount": True, "ledger": True, "merge": True},
    "counts": {"acked_checked": 50, "acked_lost": 0, "torn": 0},
    "attempts": 1,
    "freeze_window_ms": 40.0,
}


def test_a_clean_real_scenario_passes_and_names_its_repro() -> None:
    r = oracle.judge(REAL, GOOD, 9.5)
    assert r.verdict is Verdict.PASS
    assert r.repro == f"vmtest run --scenario ext4-lvm-writer --seed {REAL.effective_seed}"
    assert oracle.Result.from_json(r.to_json()) == r


def test_any_failed_check_or_error_fails_a_real_scenario() -> None:
    bad = {**GOOD, "checks": {**GOOD["checks"], "fsck": False}}
    assert oracle.judge(REAL, bad, 1).verdict is Verdict.FAIL
    assert oracle.judge(REAL, {**GOOD, "errors": ["boom"]}, 1).verdict is Verdict.FAIL
    none = {**GOOD, "counts": {"acked_checked": 0}}
    assert oracle.judge(REAL, none, 1).reason == "no acknowledged write was checked"


def test_a_control_is_caught_only_by_a_failed_check() -> None:
    caught = oracle.judge(CONTROL, {**GOOD, "checks": {"fsck": False, "ledger": True}}, 1)
    assert (caught.verdict, caught.caught_by, caught.catch_rate) == (
        Verdict.CAUGHT,
        ("fsck",),
        1.0,
    )
    missed = oracle.judge(CONTROL, {**GOOD, "attempts": 3}, 1)
    assert (missed.verdict, missed.catch_rate) == (Verdict.FAIL, 0.0)


def test_a_control_whose_own_copy_failed_is_not_a_catch() -> None:
    """Seen: the lvm-under-crypt control's lvcreate found no room in the VG, and the failed
    `snapshot` check counted as the catch. A control must be caught by the oracle's checks
    of a copy it made, so this is a failure with the harness's error in the reason."""
    raw = {**GOOD, "checks": {"snapshot": False}, "errors": ["snapshot: lvcreate exited 5"]}
    judged = oracle.judge(CONTROL, raw, 1)
    assert judged.verdict is Verdict.FAIL and judged.caught_by == ()
    assert "lvcreate exited 5" in judged.reason


def test_a_lost_vm_is_judged_lost_never_a_pass_a_catch_nor_a_failure() -> None:
    for scenario in (REAL, CONTROL):
        lost = oracle.lost_vm(scenario, 3, "VM lost: QEMU was killed\n--- console tail ---")
        assert lost.verdict is Verdict.LOST and not lost.verdict.ok
        assert lost.reason == "VM lost: QEMU was killed"
        assert oracle.Result.from_json(lost.to_json()) == lost


def test_a_guest_that_printed_no_result_is_a_failure() -> None:
    assert oracle.no_result(REAL, 3, "the guest runner exited 1").verdict is Verdict.FAIL
    assert oracle.no_result(CONTROL, 3, "the guest runner exited 1").verdict is Verdict.FAIL


def test_an_in_flight_multi_step_operation_may_show_its_intermediate_state() -> None:
    create = [Op("c:1", 1, "a100/1~a0/1", 11.0, 11.5)]  # in the window
    c = classify("a0/1", create)
    assert (c.torn, c.window_old, c.window_new) == (0, 1, 0)
    acked = [Op("c:1", 1, "a100/1~a0/1", 1.0, 2.0)]  # acked before: must be whole
    assert classify("a0/1", acked).torn == 1


# A slot first written in the window: what the btrfs-native run of 2026-11-26 showed (its
# inode's size covered the append, its extents did not).
NEW_IN_WINDOW = [Op("w:w2/f007#1", 1, "s1", 11.0, 11.5)]


def test_a_new_region_reading_zeros_is_a_hole_not_a_tear() -> None:
    c = classify("zero", NEW_IN_WINDOW)
    assert (c.holes, c.torn, c.acked_lost, c.future) == (1, 0, 0, 0)


def test_a_hole_fails_every_method_but_the_btrfs_commit_one() -> None:
    c = classify("zero", NEW_IN_WINDOW)
    assert not verify.ledger_ok(c, "lvm")
    assert not verify.ledger_ok(c, "dm")
    assert verify.ledger_ok(c, "btrfs-native")


def test_zeros_over_acknowledged_data_are_never_a_hole() -> None:
    # The negative control of the rule above: it must not excuse a lost durable write.
    c = classify("zero")  # HIST: s1 and s2 acked before the window
    assert (c.holes, c.torn) == (0, 1)
    assert not verify.ledger_ok(c, "btrfs-native")
    late = [Op("w:y#0", 1, "s1", 13.0, 14.0)]  # nothing in flight: zeros are unexplained
    assert classify("zero", late).torn == 1


def test_a_harness_crash_is_an_error_that_names_itself_not_a_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vmtests.campaign import runner as campaign

    def crash(*_args: object) -> oracle.Result:
        raise TypeError(
            "TarFile.extractall() got an unexpected keyword argument 'filter'\nsecond line"
        )

    s = Scenario("ext4", "lvm", "writer")
    r = campaign.run_harnessed(s, None, None, tmp_path / "a", runner=crash)  # type: ignore[arg-type]
    assert r.verdict is Verdict.ERROR and not r.verdict.ok
    assert r.reason == (
        "harness error: TypeError: TarFile.extractall() got an unexpected keyword argument 'filter'"
    )
    assert "Traceback" in (tmp_path / "a" / "harness.log").read_text()
    assert oracle.Result.from_json(r.to_json()) == r
    # negative control: a scenario that failed on its own is a failure, not a harness error
    fine = oracle.judge(s, {"checks": {"fsck": False}, "counts": {"acked_checked": 3}}, 1.0)
    ok = campaign.run_harnessed(s, None, None, tmp_path / "b", runner=lambda *_: fine)  # type: ignore[arg-type]
    assert ok.verdict is Verdict.FAIL and not ok.reason.startswith("harness error")


def test_a_kernel_that_cannot_host_the_row_is_refused_with_its_reason() -> None:
    s = Scenario("reiserfs", "lvm", "writer")
    raw = {"unsupported": "kernel 6.1.0-57-cloud-amd64 has no reiserfs filesystem", "checks": {}}
    r = oracle.judge(s, raw, 3.0)
    assert r.verdict is Verdict.REFUSED and r.verdict.ok and not r.verdict.ran
    assert r.reason == "refused: kernel 6.1.0-57-cloud-amd64 has no reiserfs filesystem"
    assert r.acked_writes_checked == 0 and r.fsck_ok is None


def test_the_database_check_fails_a_real_row_and_catches_the_drop_wal_control() -> None:
    raw = {"checks": {"fsck": True, "ledger": False, "sqlite": False}, "attempts": 1}
    raw["counts"] = {"acked_checked": 40, "acked_lost": 12}
    real = oracle.judge(Scenario("ext4", "lvm", "sqlite"), raw, 1.0)
    assert real.verdict is Verdict.FAIL and "sqlite" in real.reason
    control = oracle.judge(Scenario("ext4", "none", "sqlite", "drop-wal"), raw, 1.0)
    assert control.verdict is Verdict.CAUGHT and control.caught_by == ("ledger", "sqlite")


def test_a_probe_refused_every_time_is_refused_with_its_count() -> None:
    """The desktop probe: every remount refused (EBUSY) is the documented refusal, measured;
    with a workload error beside it, or on a real row without the count, it is a failure."""
    s = Scenario("ext4", "remount-ro", "desktop")
    raw = {
        "checks": {},
        "errors": [],
        "busy": {"tries": 10, "refused": 10},
        "refused_create": "mount point is busy.",
    }
    r = oracle.judge(s, raw, 3.0)
    assert r.verdict is Verdict.REFUSED and r.busy == {"tries": 10, "refused": 10}
    assert "refused in 10 of 10 tries" in r.reason
    assert oracle.Result.from_json(r.to_json()) == r
    broken = oracle.judge(s, {**raw, "errors": ["sqlite: OperationalError: x"]}, 3.0)
    assert broken.verdict is Verdict.FAIL


def test_a_create_snapkit_refuses_by_design_is_refused_with_its_words() -> None:
    """A jfs row of a freezing method: snapkit refuses to freeze JFS, as it documents; the
    row says so, as `refused`, and fails nothing. The same words with an error beside fail."""
    s = Scenario("jfs", "lvm", "writer")
    words = "snapkit: error: method lvm would freeze jfs: a frozen JFS is not consistent on disk"
    raw = {"checks": {}, "errors": [], "refused_create": words}
    r = oracle.judge(s, raw, 2.0)
    assert r.verdict is Verdict.REFUSED and r.reason == f"refused by snapkit: {words}"
    assert oracle.judge(s, {**raw, "errors": ["writer: boom"]}, 2.0).verdict is Verdict.FAIL
