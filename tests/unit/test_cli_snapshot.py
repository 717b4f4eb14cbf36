"""The snapshot and device CLI contract that needs no kernel: usage errors exit 2 with one
line, and --help says what merge and discard mean for dm-direct."""

from __future__ import annotations

import pytest

from snapkit.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshot", "create", "/mnt"],  # no --name
        ["snapshot", "create", "/mnt", "--name", "x", "--method", "zfs"],
        ["snapshot", "merge"],
        ["snapshot", "bogus"],
        ["device", "prepare", "/dev/loop0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_bare_groups_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot"]) == 2
    assert main(["device"]) == 2


def test_help_explains_the_dm_direct_inversion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["snapshot", "merge", "--help"])
    out = capsys.readouterr().out
    assert "dm-direct" in out and "snapshot-merge" in out and "roll the origin back" in out


def test_a_bad_name_is_refused_before_touching_the_kernel(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import contextmanager

    import snapkit.cli.snapshot as cli

    @contextmanager
    def no_host():  # type: ignore[no-untyped-def]
        yield None

    monkeypatch.setattr(cli, "real_host", no_host)
    assert main(["snapshot", "create", "/mnt", "--name", "a b"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "contains ' '" in err
