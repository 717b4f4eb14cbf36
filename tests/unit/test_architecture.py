"""The architecture holds by construction: no import cycle in snapkit or vmtests, and the
import-linter contracts of `make lint` (.importlinter) fail when an import breaks them -- shown
here on a copy of the tree with one bad import planted, so a contract that checks nothing cannot
pass unseen."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth, lazy imports included)."""
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            graph[module] |= {t for n in names if (t := owner(n)) and t != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


@pytest.mark.parametrize("package", ["snapkit", "vmtests"])
def test_no_import_cycle(package: str) -> None:
    assert _cycle(_graph(ROOT / package)) is None


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "snapkit", tmp_path / "snapkit")
    with (tmp_path / "snapkit" / "errors.py").open("a") as f:
        f.write("\nfrom snapkit.flow import Flow  # planted\n")
    cycle = _cycle(_graph(tmp_path / "snapkit"))
    assert cycle is not None and "snapkit.errors" in cycle and "snapkit.flow" in cycle


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy shadows the installed snapkit
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / ".importlinter"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    for name in ("snapkit", "vmtests"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("snapkit/state.py", "from snapkit.flow import Flow", "snapkit layers"),
        (
            "snapkit/methods/lvm/thin.py",
            "from snapkit.methods.btrfs import merge",
            "each method family stands alone",
        ),
        ("snapkit/plan.py", "import vmtests.errors", "snapkit never imports vmtests"),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tree: Path, module: str, planted: str, contract: str
) -> None:
    assert _lint(tree).returncode == 0, "the unchanged copy must pass"
    with (tree / module).open("a") as f:
        f.write(f"\n{planted}  # planted\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert contract in result.stdout.split("Broken contracts", 1)[-1], result.stdout
