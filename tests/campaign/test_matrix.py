"""One test per campaign scenario: ``tests/campaign/test_matrix.py::test_scenario[ID]``.

The id is the scenario's readable id, so ``-k ext4-lvm`` or a full node id runs one alone.
"""

from collections.abc import Callable

import pytest

from vmtests.campaign.oracle import Result, Verdict
from vmtests.campaign.scenarios import Scenario


def test_scenario(scenario: Scenario, campaign_run: Callable[[Scenario], Result]) -> None:
    result = campaign_run(scenario)
    if not result.verdict.ran:  # skipped or refused: the reason is in the report
        pytest.skip(result.reason)
    where = f"repro: {result.repro}; artifacts: {result.artifacts}"
    if scenario.is_control:
        assert result.verdict is Verdict.CAUGHT, f"control not caught: {result.reason} ({where})"
    else:
        assert result.verdict is Verdict.PASS, f"{result.reason} ({where})"
