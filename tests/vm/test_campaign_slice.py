"""A small slice of the consistency campaign in the ordinary test suite: two real scenarios and
one negative control, each in its own VM, judged by the same oracle as ``make demo``."""

from pathlib import Path

import pytest

from vmtests.campaign import runner, scenarios
from vmtests.campaign.oracle import Verdict
from vmtests.vm.image import Image
from vmtests.vm.qemu import Accel

pytestmark = pytest.mark.vm

SLICE = ("ext4-dm-writer", "btrfs-btrfs-native-writer", "control-dd-copy-ext4-writer")


@pytest.mark.parametrize("sid", SLICE)
def test_campaign_slice(sid: str, vm_image: Image, vm_accel: Accel, tmp_path: Path) -> None:
    (scenario,) = scenarios.select("full", ids=[sid])
    reason = runner.why_not_runnable(scenario)
    if reason:
        pytest.skip(reason)
    result = runner.run_scenario(scenario, vm_image, vm_accel, tmp_path / sid)
    where = f"{result.reason} (repro: {result.repro}; artifacts in {tmp_path / sid})"
    if scenario.is_control:
        assert result.verdict is Verdict.CAUGHT, where
        assert result.caught_by, "a caught control names the check that caught it"
    else:
        assert result.verdict is Verdict.PASS, where
        assert result.acked_writes_checked > 0 and result.acked_writes_lost == 0
