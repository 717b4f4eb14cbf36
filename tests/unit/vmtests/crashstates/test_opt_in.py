"""The opt-in crash-state kinds and operations (lvm-thin, extend): the default run is left as
measured, and the thin kind's own check catches a kept snapshot without its device node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmtests.crashstates import cli as cs_cli
from vmtests.crashstates import run
from vmtests.guest.crashstates import extend, thin
from vmtests.guest.crashstates.layout import Kind


def test_the_default_run_has_neither_lvm_thin_nor_extend() -> None:
    assert "lvm-thin" not in run.METHODS and cs_cli.Options().methods == run.METHODS
    assert cs_cli.Options().operations == ()
    assert run.kid("ext4", "lvm-thin") == "e4lt"
    spec: dict[str, Any] = {}

    class _Runner(run.Runner):
        def _boot(self, group: list[run.Kind], s: dict[str, Any], **kw: Any) -> list[Any]:
            spec.update(s)
            return []

    _Runner(None, None, Path("/nonexistent")).group([run.Kind("ext4", "dm")], 10, 1)
    assert "operations" not in spec  # the guest records the lifecycle it always did
    _Runner(None, None, Path("/x"), operations=("extend",)).group([run.Kind("ext4", "dm")], 1, 1)
    assert spec["operations"] == ["extend"]


def test_an_unknown_method_or_operation_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cs_cli.run_matrix(cs_cli.Options(operations=("shrink",))) == 2
    assert cs_cli.run_matrix(cs_cli.Options(methods=("lvm-fat",))) == 2
    err = capsys.readouterr().err
    assert "unknown shrink" in err and "unknown lvm-fat" in err and "lvm-thin" in err


def test_extend_is_recorded_for_dm_and_lvm_only_when_asked() -> None:
    ops = ("extend",)
    assert extend.wanted(Kind("e4dm", "ext4", "dm"), ops)
    assert extend.wanted(Kind("e4lv", "ext4", "lvm"), ops)
    assert not extend.wanted(Kind("e4lt", "ext4", "lvm-thin"), ops)  # no COW of its own
    assert not extend.wanted(Kind("e4dm", "ext4", "dm"), ())


def test_a_thin_kind_is_an_lvm_kind_without_a_cow_size() -> None:
    k = Kind("e4lt", "ext4", "lvm-thin")
    assert k.lvm and k.origin_dev == "/dev/vge4lt/lv0"
    assert thin.size_args(k, "32M") == []
    assert thin.size_args(Kind("e4lv", "ext4", "lvm"), "32M") == ["--cow-size", "32M"]
    assert Kind("e4dm", "ext4", "dm").origin_dev == "/dev/mapper/oe4dm"


def test_a_kept_thin_snapshot_without_its_node_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check and its negative control: the same snapshot with its node holds. A problem
    also logs what LVM holds (``lvs``), once."""
    ran: list[list[str]] = []
    monkeypatch.setattr(thin, "run", lambda argv, **kw: ran.append(list(argv)))
    k = Kind("e4lt", "ext4", "lvm-thin")
    node = tmp_path / "vge4lt-se4lt"
    shown = {"se4lt": {"device": str(node)}}
    states = {"se4lt": "active", "te4lt": "absent"}
    (problem,) = thin.missing_nodes(k, states, shown)
    assert "kept thin snapshot se4lt without /dev/mapper node" in problem
    assert [argv[:2] for argv in ran] == [["lvs", "-a"]]
    node.touch()
    assert thin.missing_nodes(k, states, shown) == []
    assert len(ran) == 1
    assert thin.missing_nodes(Kind("e4lv", "ext4", "lvm"), states, {}) == []  # thin only
