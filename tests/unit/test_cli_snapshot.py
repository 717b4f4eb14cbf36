"""The snapshot and device CLI contract that needs no kernel: usage errors exit 2 with one
line, and --help says what merge and discard mean for dm-direct."""

from __future__ import annotations

import pytest

from snapkit.cli import main
from snapkit.model import SnapshotRecord, SnapshotStatus, State


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshot", "create", "/mnt"],  # no --name
        ["snapshot", "create", "/mnt", "--name", "x", "--method", "hammer2"],
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


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_create_help_opens_with_what_create_does(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["snapshot", "create"], capsys)
    usage, _, rest = out.partition("\n\n")
    assert usage == "usage: snapkit snapshot create TARGET --name NAME [options] [-- CMD...]"
    assert rest.startswith("Take a point-in-time snapshot of TARGET")
    assert "roll the origin back" not in out  # the merge/discard glossary lives with them
    assert "--name NAME           what to call the snapshot" in out
    assert "(default: auto)" in out


def test_cow_size_help_states_each_methods_real_default() -> None:
    """The numbers in the help are the ones the methods use, and every method is named."""
    from snapkit.cli.snapshot import COW_SIZE_HELP
    from snapkit.methods import registry
    from snapkit.methods.dm import shared
    from snapkit.methods.lvm import snapshot as lvm

    words = {4: "a quarter", 5: "a fifth"}
    dm_default = f"sparse COW file (default {words[shared.DEFAULT_COW_FRACTION]} of the origin"
    lvm_default = f"lvcreate -L (default {words[lvm.DEFAULT_COW_FRACTION]} of the origin, at least"
    assert dm_default in COW_SIZE_HELP
    assert f"{lvm_default} {lvm.MIN_COW >> 20}M)" in COW_SIZE_HELP
    assert "origin/4" not in COW_SIZE_HELP
    for name in registry.names():
        assert name in COW_SIZE_HELP or name == "auto"


@pytest.mark.parametrize(
    ("argv", "opening"),
    [
        (["snapshot", "list"], "List every snapshot snapkit recorded"),
        (["snapshot", "status"], "Show snapshot NAME as the kernel sees it now"),
        (["snapshot", "mount"], "Mount snapshot NAME's point-in-time view on DIR"),
        (["device"], "The dm and dm-direct methods snapshot a device-mapper device"),
    ],
)
def test_verbs_have_a_description(
    argv: list[str], opening: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _help(argv, capsys)
    assert out.split("\n\n")[1].replace("\n", " ").startswith(opening)


def _status_with_created_at(epoch: float) -> SnapshotStatus:
    record = SnapshotRecord(
        name="s1", method="dm", origin="/srv", device="/dev/mapper/s1", created_at=epoch
    )
    return SnapshotStatus(record, State.ACTIVE, usage_percent=1.5, merge_progress=None)


def test_text_status_prints_created_at_as_local_time(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from snapkit.cli import snapshot as cli

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        status = _status_with_created_at(1796282052.7164145)
        cli._print_status(status, as_json=False)
        text = capsys.readouterr().out
        cli._print_status(status, as_json=True)
        doc = capsys.readouterr().out
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "\ncreated_at:    2026-12-03 07:14:12 UTC\n" in text
    assert "1796282052" not in text
    assert '"created_at": 1796282052.7164145' in doc  # the control: --json keeps the number
