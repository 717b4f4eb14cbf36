"""A failing state's replay line, run as printed, names that very state: its kid's kept log,
its cut and its seed (0 for a durable point, which the guest reads as "not reordered")."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from vmtests import cli
from vmtests.crashstates import cli as cs_cli
from vmtests.crashstates import report


def _options(line: str, monkeypatch: pytest.MonkeyPatch) -> cs_cli.Options:
    """What ``vmtest`` hands the crash-state runner for ``line``, no VM booted."""
    seen: list[cs_cli.Options] = []

    def capture(opts: cs_cli.Options) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr(cs_cli, "run_matrix", capture)
    argv = shlex.split(line)
    assert argv[0] == "vmtest"
    assert cli.main(argv[1:]) == 0
    (opts,) = seen
    return opts


@pytest.mark.parametrize(("replayed", "seed"), [("flush", 0), ("fua", 0), ("reorder", 123456789)])
def test_the_printed_line_replays_the_state_with_its_seed(
    replayed: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"kid": "e4lt", "cut": 4711, "replayed": replayed, "seed": seed}
    opts = _options(report.replay_line(state, "/tmp/r"), monkeypatch)
    assert opts.replay == Path("/tmp/r/logs/e4lt") and opts.cut == 4711
    assert opts.seed == seed and opts.workers == 1


def test_negative_control_a_durable_point_without_seed_would_become_a_reordered_draw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old line left ``--seed`` out for a durable point: the run's default seed (17) then
    reached the guest, which reads a non-zero seed as a reordered state's. A replay without
    ``--seed`` now means a durable point; the printed line carries it either way."""
    line = "vmtest run --matrix crash-states --replay /tmp/r/logs/e4dm --cut 9 -n 1 --report x"
    assert _options(line, monkeypatch).seed == 0
    assert "--seed 0" in report.replay_line({"kid": "e4dm", "cut": 9, "replayed": "flush"}, "r")
