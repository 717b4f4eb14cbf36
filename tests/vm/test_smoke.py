"""The smallest proof that the harness boots a guest and talks to it."""

from vmtests.vm.session import Session


def test_guest_runs_a_command(vm: Session) -> None:
    result = vm.run(["sh", "-c", "echo hi; exit 3"])
    assert (result.returncode, result.stdout) == (3, b"hi\n")
