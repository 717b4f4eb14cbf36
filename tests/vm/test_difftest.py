"""The offline model against the real kernel (``vmtest difftest``), in one guest per test.

The small run is CI's bounded share; the 200-history run is the acceptance bar. The negative
control plants a bug in the host's model only (the guest runs no model), so the kernel stays
the reference: the difftest must catch the bug and shrink it to a short reproducer.
"""

from __future__ import annotations

import pytest

from snapkit.cow.format import Geometry
from vmtests.difftest.cli import render
from vmtests.difftest.run import GuestExecutor, Report, run_history, search
from vmtests.vm.session import Session


def _agree(report: Report, examples: int) -> None:
    assert report.examples == examples
    assert report.found is None, render(report)
    assert report.counts.reads and report.counts.cow_images and report.counts.statuses


def test_model_and_kernel_agree_on_ten_histories(vm: Session) -> None:
    _agree(search(GuestExecutor(vm), 10, seed=7), 10)


@pytest.mark.slow
def test_model_and_kernel_agree_on_two_hundred_histories(vm: Session) -> None:
    report = search(GuestExecutor(vm), 200, seed=1)
    _agree(report, 200)
    # issue 17: at least a fifth of the histories stop a merge between two batches
    assert report.counts.merges_stopped_midway >= 40, report.counts


def _no_metadata_skip(self: Geometry, next_free: int) -> int:
    """The planted bug: allocation runs straight over the next metadata area's chunk."""
    return next_free


@pytest.mark.slow
def test_a_planted_allocation_bug_is_caught_and_shrunk(
    vm: Session, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    executor = GuestExecutor(vm)
    monkeypatch.setattr(Geometry, "skip_metadata", _no_metadata_skip)
    report = search(executor, 200, seed=1)
    with capsys.disabled():
        print("\n" + render(report))
    assert report.found is not None, "the planted bug went unnoticed"
    assert report.examples <= 200 and report.confirmed
    ops = report.found.history.ops
    assert len(ops) <= 3  # a snapshot and a write big enough to cross an area
    monkeypatch.undo()
    assert not run_history(executor, report.found.history).failed  # the real model passes
