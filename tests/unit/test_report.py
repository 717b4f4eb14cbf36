"""results.json, junit.xml, report.html, the exit code and merging shard reports."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from vmtests import oracle, report
from vmtests.oracle import Verdict
from vmtests.scenarios import Scenario

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


def test_a_harness_error_is_named_in_the_note_and_junit_calls_it_an_error(tmp_path: Path) -> None:
    crash = oracle.harness_error(Scenario("xfs", "lvm", "fio"), TypeError("bad keyword"), 2.0)
    rows = [*results(), crash]
    assert report.exit_code(rows) == 1
    report.write_all(tmp_path, rows)
    saved = {r.id: r for r in report.load(tmp_path)}
    assert saved[crash.id].verdict is Verdict.ERROR  # distinct from fail in results.json
    suite = ET.fromstring((tmp_path / "junit.xml").read_bytes())
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    case = next(c for c in suite.iter("testcase") if c.get("name") == crash.id)
    error = case.find("error")
    assert error is not None and error.get("message") == "harness error: TypeError: bad keyword"
    assert case.find("failure") is None
    from rich.console import Console

    console = Console(width=240, record=True)
    console.print(report.summary_table(rows))
    assert "harness error: TypeError: bad keyword" in console.export_text()
    assert "error" in (tmp_path / "report.html").read_text()
