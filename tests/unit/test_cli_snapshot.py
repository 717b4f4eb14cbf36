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


def _captured_create(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict[str, object]:
    from contextlib import contextmanager

    import snapkit.cli.snapshot as cli

    seen: dict[str, object] = {}

    @contextmanager
    def no_host():  # type: ignore[no-untyped-def]
        yield None

    class FakeFlow:
        def __init__(self, host: object) -> None:
            pass

        def create(self, target: str, **kw: object) -> str:
            seen.update(kw, target=target)
            return ""

    monkeypatch.setattr(cli, "real_host", no_host)
    monkeypatch.setattr(cli, "Flow", FakeFlow)
    assert main(argv) == 0
    return seen


def test_create_takes_the_snapshot_command_after_a_double_dash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _captured_create(
        monkeypatch,
        [
            "snapshot",
            "create",
            "/mnt",
            "--name",
            "x",
            "--method",
            "freeze",
            "--pre",
            "true",
            "--",
            "sh",
            "-c",
            "dd if=$SNAPKIT_DEVICE of=/tmp/c bs=1M",
            "--name",
            "y",
        ],
    )
    assert seen["target"] == "/mnt" and seen["name"] == "x" and seen["method"] == "freeze"
    assert seen["pre"] == "true"
    assert seen["command"] == ("sh", "-c", "dd if=$SNAPKIT_DEVICE of=/tmp/c bs=1M", "--name", "y")


def test_create_takes_the_snapshot_command_as_a_string(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _captured_create(
        monkeypatch, ["snapshot", "create", "--command", "cp a b", "/mnt", "--name", "x"]
    )
    assert seen["command"] == ("sh", "-c", "cp a b") and seen["name"] == "x"
    assert (
        _captured_create(monkeypatch, ["snapshot", "create", "/mnt", "--name", "x"])["command"]
        == ()
    )


def test_create_refuses_two_commands(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["snapshot", "create", "/mnt", "--name", "x", "--command", "a", "--", "b"]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_create_help_documents_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["snapshot", "create", "--help"])
    out = capsys.readouterr().out
    assert "-- CMD" in out and "--command" in out and "SNAPKIT_DEVICE" in out
