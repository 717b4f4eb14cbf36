"""Kernels as a campaign axis: ids, the kernel in every row, the report's comparison."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from vmtests.campaign import campaign_kernels, oracle, report, scenarios

GOOD = {"checks": {"fsck": True}, "counts": {"acked_checked": 3}, "attempts": 1}


def _results() -> list[oracle.Result]:
    picked = scenarios.select("quick", ids=["ext4-dm-writer"], seed=None, shard_spec=None)
    return [oracle.judge(s, GOOD, 1.0) for s in picked]


def test_one_kernel_keeps_the_ids_replayable() -> None:
    rows = campaign_kernels.tagged(
        _results(), {"spec": "debian:bookworm", "release": "6.1"}, several=False
    )
    assert [r.id for r in rows] == ["ext4-dm-writer"]
    assert rows[0].kernel == {"spec": "debian:bookworm", "release": "6.1"}


def test_several_kernels_put_the_release_in_every_id_and_in_every_output(tmp_path: Path) -> None:
    a = campaign_kernels.tagged(
        _results(), {"spec": "debian:bookworm", "release": "6.1.0-57"}, several=True
    )
    b = campaign_kernels.tagged(
        _results(), {"spec": "debian:trixie", "release": "6.12.118"}, several=True
    )
    a = [oracle.Result(**{**r.__dict__, "verdict": oracle.Verdict.PASS}) for r in a]
    b = [oracle.Result(**{**r.__dict__, "verdict": oracle.Verdict.FAIL}) for r in b]
    report.write_all(tmp_path, a + b)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["id"] for r in rows) == ["ext4-dm-writer@6.1.0-57", "ext4-dm-writer@6.12.118"]
    assert {r["kernel"]["release"] for r in rows} == {"6.1.0-57", "6.12.118"}
    assert campaign_kernels.base_id(rows[0]["id"]) == "ext4-dm-writer"
    suite = ET.fromstring((tmp_path / "junit.xml").read_bytes())
    assert {p.get("value") for p in suite.iter("property") if p.get("name") == "uname_r"} == {
        "6.1.0-57",
        "6.12.118",
    }
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Kernels</h2>" in page and "<th>6.12.118</th>" in page
    assert "outline:3px solid" in page  # the verdicts differ: the row is marked


def test_one_kernel_has_no_comparison_table() -> None:
    assert report.kernel_table(_results()) == ""


def test_a_row_that_needs_the_generic_flavour_boots_the_runs_suite_in_it() -> None:
    row = campaign_kernels.row_spec
    assert row("debian:bookworm/cloud-amd64", "generic") == "debian:bookworm/amd64"
    assert row("debian:trixie/6.12-cloud-amd64", "generic") == "debian:trixie/6.12-amd64"
    assert row("debian:bookworm/amd64", "generic") is None  # the run's kernel has it already
    assert row("debian:bookworm/cloud-amd64", "") is None  # the row needs nothing
    assert row("/src/linux (modules /mods)", "generic") is None  # a user's kernel: as given


def test_a_row_keeps_the_kernel_it_booted_when_tagged() -> None:
    import dataclasses

    (r,) = _results()
    r = dataclasses.replace(
        r, kernel={"spec": "debian:bookworm/amd64", "release": "6.1.0-57-amd64"}
    )
    (t,) = campaign_kernels.tagged(
        [r],
        {"spec": "debian:bookworm/cloud-amd64", "release": "6.1.0-57-cloud-amd64"},
        several=True,
    )
    assert t.id == "ext4-dm-writer@6.1.0-57-cloud-amd64"  # grouped with the run's kernel
    assert t.kernel["release"] == "6.1.0-57-amd64"  # but says what it booted
