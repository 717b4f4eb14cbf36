"""snapkit as a user installs it: the wheel the standard ``build`` frontend makes, installed with
its ``harness`` extra into a fresh venv outside the checkout, runs both commands, and its
``vmtest`` boots a guest that runs the *installed* snapkit (not this checkout's).

The wheel is built from a copy of exactly what a source distribution holds, so the build
leaves no ``build/`` or ``*.egg-info`` in the checkout; pip fetches the build backend and the
extra's packages from whatever index pip is configured with. Every command runs with its cwd
outside the checkout and without PYTHONPATH, so nothing can be imported from here by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import snapkit

CHECKOUT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "snapkit", "vmtests")
MARKER = "_installed_from_the_wheel.py"  # planted in the venv only, looked for in the guest


@dataclass(frozen=True)
class Installed:
    venv: Path
    cwd: Path  # outside the checkout

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{proc.args}: {proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    top = tmp_path_factory.mktemp("wheel")
    assert not top.resolve().is_relative_to(CHECKOUT)
    src = top / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        here = CHECKOUT / name
        if here.is_dir():
            shutil.copytree(here, src / name, ignore=skip)
        else:
            shutil.copy2(here, src / name)
    run = Installed(Path(sys.executable).parent.parent, top).run  # this venv, cwd outside
    _check(run("python", "-m", "build", "--wheel", "--outdir", str(top / "dist"), str(src)))
    (wheel,) = (top / "dist").glob("snapkit-*.whl")
    venv = top / "venv"
    _check(subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False))
    installed = Installed(venv, top)
    _check(installed.run("pip", "install", "-q", f"{wheel}[harness]", timeout=600))
    return installed


def test_both_commands_print_the_version_from_the_venv(installed: Installed) -> None:
    for prog in ("vmtest", "snapkit"):
        proc = installed.run(prog, "--version")
        _check(proc)
        assert proc.stdout == f"{prog} {snapkit.__version__}\n"


def test_the_venv_imports_the_installed_package_with_its_recipe(installed: Installed) -> None:
    proc = installed.run(
        "python",
        "-c",
        "import snapkit, vmtests.vm.image as i, vmtests.vm.payload as p; "
        "print(snapkit.__file__); print(i.RECIPE_DIR); print(p.is_checkout(p.TREE))",
    )
    _check(proc)
    module, recipe, checkout = proc.stdout.splitlines()
    assert Path(module).is_relative_to(installed.venv)
    assert (Path(recipe) / "packages.txt").is_file() and Path(recipe).is_relative_to(installed.venv)
    assert checkout == "False"


def test_the_installed_snapkit_has_its_units_and_names_itself_in_them(
    installed: Installed,
) -> None:
    """The unit files are package data: install-units works from the wheel, and its
    ExecStart is the venv's own snapkit."""
    proc = installed.run(
        "snapkit", "install-units", "--dry-run", "--json", "--dir", str(installed.cwd / "units")
    )
    _check(proc)
    doc = json.loads(proc.stdout)
    exe = installed.venv / "bin" / "snapkit"
    assert doc["snapkit"] == str(exe)
    assert [u["name"] for u in doc["units"]] == [
        "snapkit-recover.service",
        "snapkit-watch@.service",
    ]
    assert f"ExecStart={exe} recover\n" in doc["units"][0]["text"]


@pytest.mark.vm
@pytest.mark.usefixtures("vm_image")  # skips with a hint when the image is not built
def test_the_installed_vmtest_boots_a_guest_that_runs_the_installed_snapkit(
    installed: Installed,
) -> None:
    (site,) = installed.venv.glob("lib/python*/site-packages")
    (site / "snapkit" / MARKER).write_text("WHERE = 'venv'\n")
    assert not (CHECKOUT / "snapkit" / MARKER).exists()  # so finding it proves where /src is from
    proc = installed.run(
        "vmtest",
        "exec",
        "--accel",
        "tcg",
        "--mem",
        "512M",
        "--",
        "sh",
        "-c",
        f"snapkit --version && cat /src/snapkit/{MARKER}",
        timeout=300,
    )
    _check(proc)
    assert proc.stdout == f"snapkit {snapkit.__version__}\nWHERE = 'venv'\n"
