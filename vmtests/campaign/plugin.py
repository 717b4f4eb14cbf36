"""The campaign as a pytest plugin: ``pytest -p vmtests.campaign.plugin tests/campaign``, which
is what ``vmtest run`` does.

It parametrizes ``test_scenario`` with the chosen scenarios, each a test with a readable id, so
pytest-xdist spreads them over VMs; every result travels to the controller in the test
report's ``user_properties`` (under ``live.RESULT_KEY``) and the controller's ``Collector``
writes results.json, junit.xml and report.html, with a live progress display while it runs.
The collector is handed the scenario list here, so it never reaches back into this plugin.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmtests.campaign import oracle, scenarios
from vmtests.campaign.live import RESULT_KEY, Collector
from vmtests.campaign.oracle import Result
from vmtests.campaign.scenarios import Scenario

if TYPE_CHECKING:
    from vmtests.vm.image import Image
    from vmtests.vm.qemu import Accel


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("campaign", "snapkit consistency campaign")
    g.addoption("--matrix", default="full", choices=scenarios.MATRICES)
    g.addoption(
        "--scenario",
        action="append",
        default=[],
        metavar="ID",
        help="run only this scenario (repeatable)",
    )
    g.addoption("--seed", type=int, default=None, help="override every scenario's seed")
    g.addoption("--shard", default=None, metavar="K/N", help="run the K-th of N slices")
    g.addoption("--report", default="report", metavar="DIR", help="report folder")
    g.addoption("--live", action="store_true", help="live progress display (rich)")


def chosen(config: pytest.Config) -> list[Scenario]:
    return scenarios.select(
        config.getoption("--matrix"),
        ids=config.getoption("--scenario"),
        seed=config.getoption("--seed"),
        shard_spec=config.getoption("--shard"),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" in metafunc.fixturenames:
        picked = chosen(metafunc.config)
        metafunc.parametrize("scenario", picked, ids=[s.id for s in picked])


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # results are collected on the controller only
    collector = Collector(
        Path(config.getoption("--report")), chosen(config), live=config.getoption("--live")
    )
    config.pluginmanager.register(collector, "campaign-collector")


@pytest.fixture
def campaign_run(
    request: pytest.FixtureRequest, vm_image: Image, vm_accel: Accel
) -> Callable[[Scenario], Result]:
    """Runs a scenario and hands its result to the controller (see Collector)."""
    from vmtests.campaign.runner import run_harnessed, why_not_runnable

    folder = Path(request.config.getoption("--report")).resolve() / "scenarios"

    def run(scenario: Scenario) -> Result:
        reason = why_not_runnable(scenario)
        if reason:
            result = oracle.skipped(scenario, reason)
        else:
            result = run_harnessed(scenario, vm_image, vm_accel, folder / scenario.id)
        kernel = {"spec": vm_image.layer.spec, "release": vm_image.release}
        result = dataclasses.replace(result, kernel=kernel)
        request.node.user_properties.append((RESULT_KEY, json.dumps(result.to_json())))
        return result

    return run
