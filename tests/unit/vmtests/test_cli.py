"""`vmtest run` shows its options in three groups and refuses one the chosen matrix would
ignore (exit 2, one line), and `vmtest shell` has no time limit unless asked for one."""

from __future__ import annotations

import pytest

from vmtests import cli
from vmtests.campaign.cli import inapplicable
from vmtests.faults import cli as faults_cli
from vmtests.faults import matrix


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--matrix", "quick", "--cuts", "5"], "--cuts"),
        (["--bad-inputs", "0"], "--bad-inputs"),
        (["--matrix", "full", "--methods", "dm"], "--methods"),
        (["--json"], "--json"),
        (["--matrix", "faults", "--shard", "1/2"], "--shard"),
        (["--matrix", "faults", "--kernels", "debian:trixie"], "--kernels"),
        (["--matrix", "faults", "--no-live"], "--no-live"),
        (["--matrix", "faults", "--modules", "/tmp/mods"], "--modules"),
    ],
)
def test_an_option_of_the_other_matrix_is_refused(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", *argv]) == 2  # before any runner is imported or any VM boots
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vmtest run: error: {flag} applies to")


@pytest.mark.parametrize(
    "argv",
    [
        ["--matrix", "faults", "--cuts", "5", "--bad-inputs", "0", "--methods", "dm", "--json"],
        ["--matrix", "faults", "--kernel", "debian:trixie", "--seed", "3", "-n", "1"],
        ["--matrix", "quick", "--shard", "1/2", "--no-live", "--kernels", "debian:trixie"],
        ["--matrix", "full", "--kernel", "/tmp/linux", "--modules", "/tmp/mods"],
    ],
)
def test_the_options_of_the_chosen_matrix_are_taken(argv: list[str]) -> None:
    assert inapplicable(cli.build_parser().parse_args(["run", *argv])) is None


def test_run_help_shows_the_three_groups(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    _, every = out.split("\nevery matrix:\n")
    every, campaign = every.split("\ncampaign matrices only (--matrix quick or full):\n")
    campaign, faults = campaign.split("\nfaults matrix only (--matrix faults):\n")
    assert "--seed SEED" in every and "--kernel SPEC" in every and "--cuts" not in every
    assert "--shard K/N" in campaign and "--modules DIR" in campaign and "--json" not in campaign
    assert "--cuts N" in faults and "--json" in faults and "--shard" not in faults


def test_the_faults_runner_fills_in_its_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[faults_cli.Options] = []

    def run_matrix(opts: faults_cli.Options) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr(faults_cli, "run_matrix", run_matrix)
    assert cli.main(["run", "--matrix", "faults"]) == 0
    assert seen[0].methods == matrix.METHODS and seen[0].cuts == faults_cli.FULL_RUN_CUTS
    assert cli.main(["run", "--matrix", "faults", "--methods", "dm,lvm", "--cuts", "4"]) == 0
    assert seen[1].methods == ("dm", "lvm") and seen[1].cuts == 4
    assert seen[0].phases == matrix.PHASES  # no --phases: issue 6's run, exactly
    # issue 17: --phases merge-sibling runs every point of the phase, for dm and lvm
    assert cli.main(["run", "--matrix", "faults", "--phases", "merge-sibling"]) == 0
    assert list(seen[2].phases) == [matrix.SIBLING_PHASE] and seen[2].cuts is None
    assert list(seen[2].methods) == list(matrix.SIBLING_METHODS)
    argv = ["run", "--matrix", "faults", "--phases", "merge-sibling", "--methods", "lvm"]
    assert cli.main([*argv, "--cuts", "3"]) == 0
    assert list(seen[3].methods) == ["lvm"] and seen[3].cuts == 3


def test_phases_is_a_faults_option_whose_help_says_why_not_dm_direct(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["run", "--matrix", "quick", "--phases", "merge-sibling"]) == 2
    assert "--phases applies to --matrix faults" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "merge-sibling" in shown and "dm-direct's origin is itself a snapshot table" in shown


def test_shell_has_no_time_limit_unless_asked() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["shell"]).timeout is None
    assert parser.parse_args(["shell", "--timeout", "30"]).timeout == 30.0
    assert parser.parse_args(["exec", "--", "true"]).timeout == 600.0  # a command keeps one
