"""results.json, junit.xml, report.html, the exit code and merging shard reports."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmtests.campaign import oracle, report
from vmtests.campaign.oracle import Verdict
from vmtests.campaign.scenarios import Scenario

RAW = {
    "checks": {"snapshot": True, "fsck": True, "ledger": True},
    "counts": {"acked_checked": 10},
    "attempts": 1,
    "freeze_window_ms": 25.0,
}


def results() -> list[oracle.Result]:
    ok = oracle.judge(Scenario("ext4", "lvm", "writer"), RAW, 8.0)
    caught = oracle.judge(
        Scenario("xfs", "none", "writer", "dd-copy"), {**RAW, "checks": {"fsck": False}}, 9.0
    )
    skipped = oracle.skipped(Scenario("btrfs", "btrfs-native", "writer"), "not yet")
    return [ok, caught, skipped]


def test_exit_code_is_zero_only_when_everything_that_ran_is_ok() -> None:
    rs = results()
    assert report.exit_code(rs) == 0
    failed = oracle.judge(Scenario("ext4", "dm", "writer"), {**RAW, "errors": ["x"]}, 1)
    assert report.exit_code([*rs, failed]) == 1
    assert report.exit_code([rs[2]]) == 1  # nothing ran at all
    refused = oracle.judge(Scenario("reiserfs", "lvm", "writer"), {"unsupported": "no module"}, 1)
    assert report.exit_code([*rs, refused]) == 0  # a refusal says why; it fails nothing
    assert report.exit_code([refused]) == 1  # but it is not a run either


def test_write_all_produces_the_three_files(tmp_path: Path) -> None:
    report.write_all(tmp_path, results())
    rows = json.loads((tmp_path / "results.json").read_text())
    required = {
        "id",
        "fs",
        "method",
        "workload",
        "control",
        "verdict",
        "fsck_ok",
        "acked_writes_checked",
        "acked_writes_lost",
        "torn",
        "freeze_window_ms",
        "duration_s",
        "seed",
        "repro",
    }
    assert all(required <= set(r) for r in rows)
    assert {r["verdict"] for r in rows} == {"pass", "caught", "skipped"}
    suite = ET.fromstring((tmp_path / "junit.xml").read_bytes())
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "0", "1")
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "<script" not in page and "ext4-lvm-writer" in page


def test_merge_combines_shards_and_copies_artifacts(tmp_path: Path) -> None:
    rs = results()
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    report.write_all(a, rs[:1])
    report.write_all(b, rs[1:])
    (b / "scenarios" / rs[1].id).mkdir(parents=True)
    (b / "scenarios" / rs[1].id / "guest.log").write_text("log")
    merged = report.merge([a, b], out)
    assert sorted(r.id for r in merged) == sorted(r.id for r in rs)
    assert (out / "scenarios" / rs[1].id / "guest.log").read_text() == "log"
    assert [r.verdict for r in report.load(out)].count(Verdict.CAUGHT) == 1
    assert 'href="scenarios/' in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("row", "verdict", "message", "in_page", "in_table"),
    [
        pytest.param(
            oracle.harness_error(Scenario("xfs", "lvm", "fio"), TypeError("bad keyword"), 2.0),
            Verdict.ERROR,  # distinct from fail in results.json
            "harness error: TypeError: bad keyword",
            "error",
            "harness error: TypeError: bad keyword",
            id="harness-error-named-in-the-note",
        ),
        pytest.param(
            oracle.lost_vm(Scenario("xfs", "lvm", "fio"), 2.0, "VM lost: QEMU was killed"),
            Verdict.LOST,
            "VM lost: QEMU was killed",
            ">lost</span>",
            "lost ",
            id="lost-vm-lost-in-every-output",
        ),
    ],
)
def test_a_harness_error_or_lost_vm_is_a_junit_error_not_a_failure(
    tmp_path: Path, row: oracle.Result, verdict: Verdict, message: str, in_page: str, in_table: str
) -> None:
    rows = [*results(), row]
    assert report.exit_code(rows) == 1
    report.write_all(tmp_path, rows)
    assert {r.id: r for r in report.load(tmp_path)}[row.id].verdict is verdict
    suite = ET.fromstring((tmp_path / "junit.xml").read_bytes())
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    case = next(c for c in suite.iter("testcase") if c.get("name") == row.id)
    error = case.find("error")
    assert error is not None and error.get("message") == message
    assert case.find("failure") is None
    assert in_page in (tmp_path / "report.html").read_text()
    from rich.console import Console

    console = Console(width=240, record=True)
    console.print(report.summary_table(rows))
    assert in_table in console.export_text()
