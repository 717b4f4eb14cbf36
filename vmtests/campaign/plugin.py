"""The campaign as a pytest plugin: ``pytest -p vmtests.campaign.plugin tests/campaign``, which
is what ``vmtest run`` does.

It parametrizes ``test_scenario`` with the chosen scenarios, each a test with a readable id, so
pytest-xdist spreads them over VMs; every result travels to the controller in the test
report's ``user_properties`` (under ``live.RESULT_KEY``) and the controller's ``Collector``
writes results.json, junit.xml and report.html, with a live progress display while it runs.
The collector is handed the scenario list here, so it never reaches back into this plugin.

A row that needs another flavour of the run's kernel (``Scenario.flavour``) boots that one:
``row_image`` prepares its layer the first time such a row runs in this process (cached on disk
after that), so a run without such rows never fetches it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmtests.campaign import campaign_kernels, oracle, scenarios
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


@pytest.fixture(scope="session")
def row_image(vm_image: Image) -> Callable[[Scenario], Image]:
    """The image a scenario boots: the run's, or the flavour the row needs (built on first use;
    a kernel that cannot be had raises, and the row's result is a harness error naming it)."""
    from vmtests.vm import guest_image

    made: dict[str, Image] = {}

    def image_for(scenario: Scenario) -> Image:
        wanted = campaign_kernels.row_spec(vm_image.layer.spec, scenario.flavour)
        if wanted is None:
            return vm_image
        if wanted not in made:
            made[wanted] = guest_image.prepare(wanted, build_userland=False)
        return made[wanted]

    return image_for


@pytest.fixture
def campaign_run(
    request: pytest.FixtureRequest,
    vm_image: Image,
    row_image: Callable[[Scenario], Image],
    vm_accel: Accel,
) -> Callable[[Scenario], Result]:
    """Runs a scenario and hands its result to the controller (see Collector)."""
    from vmtests.campaign.runner import run_harnessed, why_not_runnable
    from vmtests.vm.errors import VmError

    folder = Path(request.config.getoption("--report")).resolve() / "scenarios"

    def run(scenario: Scenario) -> Result:
        image, reason = vm_image, why_not_runnable(scenario)
        if reason:
            result = oracle.skipped(scenario, reason)
        else:
            try:
                image = row_image(scenario)
            except VmError as exc:  # the row's kernel could not be fetched, built or booted
                result = oracle.harness_error(scenario, exc)
            else:
                result = run_harnessed(scenario, image, vm_accel, folder / scenario.id)
        kernel = {"spec": image.layer.spec, "release": image.release}
        result = dataclasses.replace(result, kernel=kernel)
        request.node.user_properties.append((RESULT_KEY, json.dumps(result.to_json())))
        return result

    return run
