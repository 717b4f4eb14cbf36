"""vmtests.plugin, seen from a pytest run of its own (pytester), as pytest-xdist tests itself.

The plugin is loaded from its entry point in every inner run, exactly as in a project that
installs snapkit; no test here boots a VM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("pytester",)


def test_options_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*throwaway QEMU guests*",
            "*--vm-accel={auto,kvm,tcg}*",
            "*--vm-mem=MIB*",
            "*--vm-keep-artifacts*",
            "*--vm-artifacts=DIR*",
        ]
    )


def test_vm_host_is_a_fixture_and_host_is_left_to_testinfra(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["vm_factory -- *vmtests/plugin.py*"])
    result.stdout.fnmatch_lines(["vm_host -- *vmtests/plugin.py*", "*pytest-testinfra Host*"])
    result.stdout.no_fnmatch_line("host * -- */vmtests/plugin.py*")
    # with pytest-testinfra installed, its own ``host`` is the one a test gets
    pytester.makepyfile(
        """
        def test_host_is_testinfras(request):
            fixturedefs = request._fixturemanager.getfixturedefs("host", request.node)
            assert fixturedefs and all(
                "testinfra" in d.func.__module__ for d in fixturedefs
            ), [d.func.__module__ for d in fixturedefs]
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_vm_marker_is_declared_and_given_to_tests_that_boot(
    pytester: pytest.Pytester,
) -> None:
    pytester.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.vm: needs a QEMU guest*"])
    pytester.makepyfile(
        """
        def test_boots(vm): pass
        def test_boots_many(vm_factory): pass
        def test_testinfra(vm_host): pass
        def test_plain(): pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q", "-m", "vm", "--strict-markers")
    result.stdout.fnmatch_lines(["*::test_boots", "*::test_boots_many", "*::test_testinfra"])
    result.stdout.no_fnmatch_line("*test_plain*")


@pytest.mark.parametrize(("keep", "kept"), [((), {"test_fails"}), (("--vm-keep-artifacts",), None)])
def test_artifacts_of_a_pass_go_unless_kept(
    pytester: pytest.Pytester, keep: tuple[str, ...], kept: set[str] | None
) -> None:
    pytester.makepyfile(
        """
        def test_passes(vm_artifacts):
            (vm_artifacts / "console.log").write_text("ok")

        def test_fails(vm_artifacts):
            (vm_artifacts / "console.log").write_text("boom")
            assert False
        """
    )
    pytester.runpytest("--vm-artifacts", "arts", *keep).assert_outcomes(passed=1, failed=1)
    run = next(p for p in (pytester.path / "arts").iterdir() if p.name != "latest")
    assert (pytester.path / "arts" / "latest").resolve() == run.resolve()
    left = {p.name.split("-")[0].split(".py_")[-1] for p in run.iterdir()}
    assert left == (kept or {"test_passes", "test_fails"})
    assert all((p / "console.log").exists() for p in run.iterdir())


def test_a_run_that_keeps_nothing_leaves_no_run_folder(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_passes(vm_artifacts): pass")
    pytester.runpytest("--vm-artifacts", "arts").assert_outcomes(passed=1)
    assert list(Path(pytester.path / "arts").iterdir()) == []
