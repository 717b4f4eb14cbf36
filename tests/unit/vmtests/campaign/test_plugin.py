"""The campaign's pytest plugin and its collector, seen from a pytest run of their own
(pytester), in the style of pytest-xdist's own tests. No VM boots: the conftest of the inner
run replaces the image, the accelerator and ``run_scenario`` with fakes, so what is tested is
the plumbing -- one test per scenario, each result carried to the controller and written to
the report, and a lost VM reported as ``lost``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# Imported here, before any inner run: pytester drops the modules an inner run imported, so a
# runner first imported inside one would be a different module object in the next, and the
# conftest would patch a stale copy.
import vmtests.campaign.plugin
import vmtests.campaign.runner  # noqa: F401

pytest_plugins = ("pytester",)

TEST_MATRIX = Path(__file__).resolve().parents[3] / "campaign" / "test_matrix.py"
CONFTEST = """
import pytest
from vmtests.campaign import oracle, runner

GOOD = {"checks": {"fsck": True, "ledger": True}, "counts": {"acked_checked": 5}, "attempts": 1}
CAUGHT = {"checks": {"fsck": False}, "counts": {}, "attempts": 1}


def fake_run(scenario, image, accel, folder, *, keep_all=False):
    if "xfs" in scenario.id:
        return oracle.lost_vm(scenario, 1.0, "VM lost: QEMU was killed")
    return oracle.judge(scenario, CAUGHT if scenario.is_control else GOOD, 1.0)


@pytest.fixture(scope="session")
def vm_image():
    from types import SimpleNamespace

    layer = SimpleNamespace(spec="debian:bookworm/cloud-amd64")
    return SimpleNamespace(layer=layer, release="6.1.0-57-cloud-amd64")


@pytest.fixture(scope="session")
def vm_accel():
    return "tcg"


@pytest.fixture(autouse=True)
def no_vm(monkeypatch):
    monkeypatch.setattr(runner, "run_scenario", fake_run)
    monkeypatch.setattr(runner, "why_not_runnable", lambda scenario: "")
"""
IDS = ("ext4-lvm-mixed", "xfs-lvm-fio", "ext4-dm-writer")


@pytest.fixture
def campaign(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_matrix=TEST_MATRIX.read_text())
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "vmtests.campaign.plugin", "--report", "rep", *args)


def test_one_test_per_chosen_scenario_with_the_scenario_id(campaign: pytest.Pytester) -> None:
    result = run(campaign, "--matrix", "quick", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_matrix.py::test_scenario[ext4-lvm-mixed]"])
    from vmtests.campaign import scenarios

    items = [line for line in result.stdout.lines if "::test_scenario[" in line]
    assert len(items) == len(scenarios.quick())


def test_results_reach_the_collector_and_the_report(campaign: pytest.Pytester) -> None:
    picked = [a for sid in IDS for a in ("--scenario", sid)]
    result = run(campaign, *picked)
    result.assert_outcomes(passed=2, failed=1)  # the lost VM fails its test...
    result.stdout.fnmatch_lines(["*lost  xfs-lvm-fio  1.0s (VM lost: QEMU was killed)"])
    result.stdout.fnmatch_lines(["*pass  ext4-dm-writer  1.0s"])
    rows = json.loads((campaign.path / "rep" / "results.json").read_text())
    assert {r["id"]: r["verdict"] for r in rows} == {  # ...and the report says lost, not fail
        "ext4-lvm-mixed": "pass",
        "xfs-lvm-fio": "lost",
        "ext4-dm-writer": "pass",
    }
    # one kernel: ids unchanged (replayable), every row names the kernel it ran on
    assert {r["kernel"]["release"] for r in rows} == {"6.1.0-57-cloud-amd64"}
    suite = ET.fromstring((campaign.path / "rep" / "junit.xml").read_bytes())
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "1")
    assert (campaign.path / "rep" / "report.html").exists()
    result.stdout.fnmatch_lines(["report: *report.html  (3 scenarios, * s) -> FAILED"])


def test_with_xdist_workers_the_controller_alone_writes_the_report(
    campaign: pytest.Pytester,
) -> None:
    result = run(
        campaign, "-n", "2", "--scenario", "ext4-lvm-mixed", "--scenario", "ext4-dm-writer"
    )
    result.assert_outcomes(passed=2)
    rows = json.loads((campaign.path / "rep" / "results.json").read_text())
    assert sorted(r["id"] for r in rows) == ["ext4-dm-writer", "ext4-lvm-mixed"]
    result.stdout.fnmatch_lines(["report: *(2 scenarios, * s) -> OK"])
