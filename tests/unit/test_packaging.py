"""What an installed snapkit carries besides code: its licence and its version strings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import snapkit
from snapkit.cli import main as snapkit_main
from vmtests.cli import build_parser as vmtest_parser

ROOT = Path(__file__).resolve().parents[2]


def test_the_licence_pyproject_declares_is_the_one_shipped() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["version"] == snapkit.__version__
    assert project["license-files"] == ["LICENSE"]  # named, so setuptools puts it in the wheel
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the snapkit authors\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


@pytest.mark.parametrize("prog", ["snapkit", "vmtest"])
def test_both_commands_print_the_package_version(
    prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        if prog == "snapkit":
            snapkit_main(["--version"])
        else:
            vmtest_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"{prog} {snapkit.__version__}\n"


def test_vmtest_without_version_does_not_print_it(capsys: pytest.CaptureFixture[str]) -> None:
    """The control: --version is an option of its own, not printed by every parse."""
    vmtest_parser().parse_args(["image", "path"])
    assert snapkit.__version__ not in capsys.readouterr().out
