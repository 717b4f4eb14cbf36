"""`vmtest exec` end to end: exit codes, stdin and arguments reach the caller and the guest
unchanged. Each test boots one throwaway VM through the real command-line entry point."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

VMTEST = Path(sys.executable).with_name("vmtest")

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_image")]  # vm_image skips if unbuilt


def vmtest_exec(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(VMTEST), "exec", "--accel", "tcg", "--mem", "512M", "--", *argv],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_exit_code_passes_through() -> None:
    r = vmtest_exec("sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"to-out\n", b"to-err\n")


def test_stdin_passes_through() -> None:
    data = b"".join(b"line %d \x00\xff\n" % i for i in range(5000))  # ~70 KiB, binary
    r = vmtest_exec("sha256sum", stdin=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_a_long_script_argument_arrives_byte_exact() -> None:
    script = "".join(
        f'echo "line {i}: \'single\' \\"double\\" $HOME `date` \\\\ \t tab" # ünï ✓\n'
        for i in range(120)
    )
    script += "\n\n"  # trailing newlines are the classic casualty of $(...)
    assert len(script.encode()) > 8000
    r = vmtest_exec("sh", "-c", 'printf %s "$1" | sha256sum', "sh", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(script.encode()).hexdigest()
