"""The per-boot archive carries the command byte for byte, one file per argument, in order."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.vmtests.vm.test_cpio import read_newc
from vmtests.vm import payload
from vmtests.vm.payload import Mode, Payload

NASTY = [
    "sh",
    "-c",
    "echo \"double\" 'single' `tick` $HOME \\back\\slash\n\ttab",
    "",
    " leading and trailing spaces ",
    "trailing newlines\n\n",
    "\n",
    "ünïcødé ✓",
    "--",
    "*",
    "a" * 20000,
]


def files(p: Payload) -> dict[str, bytes]:
    return {m.name: m.data for m in read_newc(payload.build(p))}


def argv_of(p: Payload) -> list[str]:
    archive = files(p)
    names = sorted(n for n in archive if n.startswith("vmtest/argv/"))  # the guest's glob order
    return [archive[n].decode() for n in names]


def test_every_argument_survives_byte_for_byte() -> None:
    assert argv_of(Payload(Mode.EXEC, tuple(NASTY))) == NASTY


def test_order_holds_past_ten_arguments() -> None:
    argv = [str(i) for i in range(123)]
    assert argv_of(Payload(Mode.EXEC, tuple(argv))) == argv


def test_mode_ports_and_hostname() -> None:
    archive = files(Payload(Mode.AGENT, hostname="guest-1"))
    assert archive["vmtest/mode"] == b"agent\n"
    assert archive["vmtest/ports"] == b"agent\n"
    assert archive["vmtest/hostname"] == b"guest-1\n"
    assert "vmtest/argv" in archive
    exec_archive = files(Payload(Mode.EXEC, ("true",)))
    assert exec_archive["vmtest/ports"] == b"stdin stdout stderr status\n"


def test_the_working_tree_rides_along() -> None:
    archive = files(Payload(Mode.EXEC, ("true",)))
    assert archive["init"].startswith(b"#!/bin/sh")
    assert "src/snapkit/__init__.py" in archive
    assert "src/vmtests/guest/agent.py" in archive
    assert archive["src/bin/snapkit"].startswith(b"#!/bin/sh")


def test_bytecode_rides_along_and_is_checked_against_its_own_source() -> None:
    """Host __pycache__ folders never ride along; the payload's own .pyc files are hash-checked
    (PEP 552) against the very source next to them, so the guest can never run stale code."""
    import importlib.util
    import marshal
    import sys

    archive = files(Payload(Mode.EXEC, ("true",)))
    pycs = {n: d for n, d in archive.items() if n.endswith(".pyc")}
    assert all(n.endswith(("__pycache__", ".pyc")) for n in archive if "__pycache__" in n)
    assert pycs, "no bytecode in the payload"
    tag = sys.implementation.cache_tag
    for name, data in pycs.items():
        folder, _, base = name.rpartition("/__pycache__/")
        assert base.endswith(f".{tag}.pyc")
        source = archive[f"{folder}/{base.removesuffix(f'.{tag}.pyc')}.py"]
        assert data[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(data[4:8], "little") == 0b11  # hash-based, checked
        assert data[8:16] == importlib.util.source_hash(source)
        assert marshal.loads(data[16:]).co_filename == "/" + name.split("/__pycache__/")[0] + (
            "/" + base.removesuffix(f".{tag}.pyc") + ".py"
        )
    assert set(pycs) == {
        n.rpartition("/")[0] + "/__pycache__/" + n.rpartition("/")[2][:-3] + f".{tag}.pyc"
        for n, d in archive.items()
        if n.endswith(".py") and d
    }


def test_extra_environment_is_appended_quoted() -> None:
    env = files(Payload(Mode.EXEC, ("true",), env={"SEED": "42 x"}))["vmtest/env"]
    assert env.endswith(b"SEED='42 x'\n")
    assert b"DM_DISABLE_UDEV=1" in env


@pytest.mark.parametrize("key, value", [("A", "it's"), ("A", "two\nlines"), ("1BAD", "x")])
def test_environment_that_cannot_be_passed_safely_is_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match="cannot be passed safely"):
        payload.build(Payload(Mode.EXEC, ("true",), env={key: value}))


def test_command_argv_refuses_nul_and_empty() -> None:
    assert payload.command_argv(["a", "b c"]) == ("a", "b c")
    with pytest.raises(ValueError, match="NUL"):
        payload.command_argv(["echo", "a\0b"])
    with pytest.raises(ValueError, match="no command"):
        payload.command_argv([])


def test_the_default_tree_is_this_checkout_so_the_suite_tests_it() -> None:
    """Run from a checkout (make venv installs it editable), a guest runs the working tree."""
    checkout = Path(__file__).resolve().parents[4]
    assert checkout == payload.TREE and payload.is_checkout(payload.TREE)
    archive = files(Payload(Mode.EXEC, ("true",)))
    here = (checkout / "snapkit" / "__init__.py").read_bytes()
    assert archive["src/snapkit/__init__.py"] == here
    assert archive["init"] == (checkout / "vmtests" / "images" / "init.sh").read_bytes()


def _copy_tree(dest: Path) -> Path:
    """An installed-package layout: snapkit/ and vmtests/ side by side, no pyproject.toml."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(payload.TREE / "snapkit", dest / "snapkit", ignore=skip)
    shutil.copytree(payload.TREE / "vmtests", dest / "vmtests", ignore=skip)
    return dest


def test_another_tree_ships_its_own_files(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    (tree / "snapkit" / "marker.py").write_text("MARK = 1\n")
    archive = files(Payload(Mode.EXEC, ("true",), tree=tree))
    assert archive["src/snapkit/marker.py"] == b"MARK = 1\n"
    assert not payload.is_checkout(tree)
    assert "src/snapkit/marker.py" not in files(Payload(Mode.EXEC, ("true",)))  # the control


@pytest.mark.parametrize(
    "missing", ["snapkit/__init__.py", "vmtests/guest/stage2.sh", "vmtests/images/init.sh"]
)
def test_a_folder_that_is_not_a_tree_is_refused_naming_what_is_missing(
    tmp_path: Path, missing: str
) -> None:
    tree = _copy_tree(tmp_path)
    (tree / missing).unlink()
    with pytest.raises(ValueError, match=f"is not a snapkit tree: it has no {missing} "):
        payload.build(Payload(Mode.EXEC, ("true",), tree=tree))


def test_vmtest_tree_option_refuses_a_bad_folder_as_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmtests.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["exec", "--tree", str(tmp_path), "--", "true"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert "--tree: " in last and "is not a snapkit tree: it has no snapkit/__init__.py" in last
