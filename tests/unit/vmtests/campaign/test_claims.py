"""The claims' judges on synthetic rows: a claim holds only when every row behind it passed,
is ``holds in part`` when one failed or did not run (and names it), ``not measured`` when none
ran; the journal check and the controls flip their claims (the negative controls here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vmtests.campaign import claims, oracle


def _row(sid: str, verdict: str = "pass", **checks: bool) -> oracle.Result:
    return oracle.Result(
        id=sid, fs="ext4", method="lvm", workload="writer", control=sid.startswith("control"),
        control_kind="", verdict=oracle.Verdict(verdict), reason=f"{verdict} reason",
        fsck_ok=True, acked_writes_checked=10, acked_writes_lost=0, torn=0, future_writes=0,
        window_new=0, window_old=0, freeze_window_ms=5.0, snapshot_window_ms=6.0,
        duration_s=1.0, seed=7, repro="", checks=dict(checks),
    )  # fmt: skip


def _every_row(**overrides: oracle.Result) -> list[oracle.Result]:
    rows = {i: _row(i, clean=True, merge=True) for i in claims.scenario_ids()}
    rows[claims.DISCARD_CONTROL] = _row(claims.DISCARD_CONTROL, "caught")
    rows[claims.WAL_CONTROL] = _row(claims.WAL_CONTROL, "caught")
    rows[claims.PLAIN_CONTROL] = _row(claims.PLAIN_CONTROL, "caught")
    rows.update(overrides)
    return list(rows.values())


def _verdicts(rows: list[oracle.Result]) -> dict[int, str]:
    return {c.number: f.verdict for c, f in claims.judge(rows)}


def test_every_claim_gets_a_verdict_when_every_row_ran() -> None:
    verdicts = _verdicts(_every_row())
    assert set(verdicts) == set(range(1, 12))
    assert claims.UNMEASURED not in verdicts.values()
    assert verdicts[6] == claims.PART  # remount-ro: refused while files are open
    assert verdicts[11] == claims.NOT  # SQLite keeps every acknowledged transaction


def test_a_failed_row_is_named_and_makes_the_claim_partial() -> None:
    bad = _row("reiserfs-lvm-writer", "fail")
    found = dict((c.number, f) for c, f in claims.judge(_every_row(**{bad.id: bad})))
    assert found[2].verdict == claims.PART and "reiserfs-lvm-writer" in found[2].why
    assert "fail reason" in found[2].why


def test_a_row_that_did_not_run_is_said() -> None:
    rows = [r for r in _every_row() if r.id != "zfs-zfs-native-writer"]
    found = dict((c.number, f) for c, f in claims.judge(rows))
    assert found[10].verdict == claims.PART and "zfs-zfs-native-writer" in found[10].why
    assert _verdicts([])[10] == claims.UNMEASURED


def test_a_copy_that_needs_recovery_refutes_always_clean() -> None:
    dirty = {i: _row(i, clean=False) for i in claims.CLEAN_ROWS}
    assert _verdicts(_every_row(**dirty))[3] == claims.NOT


def test_a_control_not_caught_refutes_its_claim() -> None:
    missed = _row(claims.DISCARD_CONTROL, "fail")
    assert _verdicts(_every_row(**{missed.id: missed}))[9] == claims.NOT


def test_a_database_row_that_lost_transactions_confirms_claim_11() -> None:
    lost = dataclasses.replace(_row("ext4-freeze-lvm-sqlite", "fail"), acked_writes_lost=3)
    assert _verdicts(_every_row(**{lost.id: lost}))[11] == claims.HOLDS


def test_claims_md_names_every_row_with_its_figures_and_seed() -> None:
    text = claims.render(_every_row(), command="vmtest claims", kernel="6.1", seconds=600.0)
    for sid in claims.scenario_ids():
        assert f"- `{sid}`: pass" in text or f"- `{sid}`: caught" in text
    assert "10 acknowledged writes checked, 0 lost" in text and "(seed 7)" in text
    assert "in 10 min" in text and text.count("\n## ") == 11


def test_claim_11_says_what_synchronous_off_and_the_pre_hook_showed() -> None:
    """The OFF rows' figures and the hook's WAL figure reach the verdict's text; an OFF row
    that lost commits would confirm the claim (the control: a lost one flips it)."""
    hooked = dataclasses.replace(
        _row("ext4-lvm-sqlite-pre", "pass"),
        database={
            "wal_bytes": 4096,
            "pre_hook": {"busy": 0, "wal_before": 1 << 20, "wal_after": 0},
        },
    )
    found = dict((c.number, f) for c, f in claims.judge(_every_row(**{hooked.id: hooked})))[11]
    assert found.verdict == claims.NOT
    assert "synchronous=OFF too: 30 acknowledged commits checked, 0 lost" in found.why
    assert "WAL at 4 KiB" in found.why and "the WAL went from 1024 KiB to 0 KiB" in found.why
    lost = dataclasses.replace(_row("xfs-dm-sqlite-off", "fail"), acked_writes_lost=2)
    assert _verdicts(_every_row(**{lost.id: lost}))[11] == claims.HOLDS


def test_claim_6_counts_the_desktop_refusals() -> None:
    """The desktop probes' counts make claim 6 partial with the figure; without them it says
    the rate was not measured."""
    probes = {
        sid: dataclasses.replace(_row(sid, "refused"), busy={"tries": 10, "refused": 10})
        for sid in claims.DESKTOP_ROWS
    }
    found = dict((c.number, f) for c, f in claims.judge(_every_row(**probes)))[6]
    assert found.verdict == claims.PART and "refused (EBUSY) in 30 of 30 tries" in found.why
    bare = dict((c.number, f) for c, f in claims.judge(_every_row()))[6]
    assert bare.verdict == claims.PART and "not measured" in bare.why


def test_report_html_gets_a_claims_section_linking_every_row(tmp_path: Path) -> None:
    """vmtest claims --from-report rewrites the report folder's report.html with the claims'
    verdicts before the matrix, each row linked to its details."""
    from vmtests.campaign import report
    from vmtests.cli import main

    rows = _every_row()
    report.write_all(tmp_path, rows)
    assert "The question's claims" not in (tmp_path / "report.html").read_text()
    out = tmp_path / "CLAIMS.md"
    assert main(["claims", "--from-report", str(tmp_path), "--out", str(out)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.index("The question's claims") < page.index("<h2>Matrix</h2>")
    for sid in claims.scenario_ids():
        assert f"<a href='#{sid}'>{sid}</a>" in page and f'id="{sid}"' in page
    assert page.count("<details><summary>") == len(claims.CLAIMS)
    assert "| 11 |" in out.read_text()


def test_claim_4_says_when_the_xfs_logs_were_not_clean() -> None:
    """A frozen XFS copy whose log needs a replay makes claim 4 partial with the count; clean
    logs (the control) keep it whole."""
    dirty = {sid: dataclasses.replace(_row(sid), log_clean=False) for sid in claims.XFS_ROWS}
    found = dict((c.number, f) for c, f in claims.judge(_every_row(**dirty)))[4]
    assert found.verdict == claims.PART and "in 2 of 2 snapshots" in found.why
    clean = {sid: dataclasses.replace(_row(sid), log_clean=True) for sid in claims.XFS_ROWS}
    assert _verdicts(_every_row(**clean))[4] == claims.HOLDS


def test_claim_2_judges_plain_lvcreate_apart_from_snapkit() -> None:
    """The btrfs control caught (a bare lvcreate -s loses writes) makes claim 2 partial,
    naming btrfs and saying snapkit's own rows hold; a plain ext row failing is named too."""
    found = dict((c.number, f) for c, f in claims.judge(_every_row()))[2]
    assert found.verdict == claims.PART and "but not of btrfs" in found.why
    assert "snapkit's LVM snapshots are consistent" in found.why
    bad = _row("ext3-lvm-plain-writer", "fail")
    worse = dict((c.number, f) for c, f in claims.judge(_every_row(**{bad.id: bad})))[2]
    assert "ext3-lvm-plain-writer" in worse.why
    missed = _row(claims.PLAIN_CONTROL, "fail")
    assert _verdicts(_every_row(**{missed.id: missed}))[2] == claims.HOLDS
