"""No QEMU outlives the harness: not on Ctrl-C of `vmtest exec` or of a pytest run, and not when
the harness is SIGKILLed (QEMU then dies through its parent-death signal)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

VMTEST = Path(sys.executable).with_name("vmtest")

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_image")]


# Generous on purpose: in `make test` these run beside the heaviest VM tests on 2 cores, where
# a boot (or the first save of a new machine shape) and an interrupted process's clean-up have
# taken over 60 and 30 s (two failures of session 5, both boot modes, never alone). What the
# tests prove is that QEMU ends, not how fast a loaded machine gets there.
BOOT_S = 180
EXIT_S = 90


def qemu_pids(marker: str) -> list[int]:
    """Live (non-zombie) QEMU processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"qemu-system" in argv[0] and any(marker.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def gone_within(marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while qemu_pids(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the guest did not start the command in time"
    return proc.stdout.readline()


def start_exec(workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            str(VMTEST),
            "exec",
            "--accel",
            "tcg",
            "--mem",
            "512M",
            "--keep",
            str(workdir),
            "--",
            "sh",
            "-c",
            "echo up; exec sleep 60",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert read_line(proc, BOOT_S) == b"up\n"
    assert qemu_pids(str(workdir)), "QEMU should be running while the command runs"
    return proc


def test_ctrl_c_of_vmtest_exec_ends_qemu(tmp_path: Path) -> None:
    proc = start_exec(tmp_path / "work")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(EXIT_S) == 130
    assert gone_within(str(tmp_path / "work"), 5)


def test_sigkill_of_vmtest_exec_ends_qemu_through_pdeathsig(tmp_path: Path) -> None:
    proc = start_exec(tmp_path / "work")
    proc.kill()
    proc.wait(10)
    assert gone_within(str(tmp_path / "work"), 5)


INNER_TEST = """
    import os
    from pathlib import Path

    def test_sleeps(vm):
        Path(os.environ["VM_UP"]).write_text(str(vm.machine.pid()))
        vm.run(["sleep", "60"])
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupting_a_pytest_run_ends_its_vm(tmp_path: Path, signum: int) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    up = tmp_path / "vm-up"
    artifacts = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--vm-accel",
            "tcg",
            "--vm-mem",
            "512",
            f"--vm-artifacts={artifacts}",
            str(tmp_path / "test_inner.py"),
        ],
        cwd=tmp_path,
        env={**os.environ, "VM_UP": str(up)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + BOOT_S
        while not up.exists():
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the inner test never got a VM"
            time.sleep(0.05)
        time.sleep(0.2)  # the command is under way
        assert qemu_pids(str(artifacts)), "QEMU should be running during the inner test"
        proc.send_signal(signum)
        out = proc.communicate(timeout=EXIT_S)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert gone_within(str(artifacts), 5)
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in out
