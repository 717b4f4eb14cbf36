"""run(): argv only, pinned env, errors carry what was said, the child never outlives us."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from snapkit.errors import CommandError
from snapkit.run import PINNED_PATH, CommandTimeout, Executor, SubprocessExecutor, run

PY = sys.executable


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_dead(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        time.sleep(0.01)
    return False


def test_result_is_typed_and_decoded() -> None:
    result = run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert result.ok and result.returncode == 0
    assert result.stdout == "out\n" and result.stderr == "err\n"
    assert result.argv[0] == PY and result.seconds >= 0


def test_environment_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("SNAPKIT_LEAK", "1")
    monkeypatch.setenv("PATH", "/evil")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    env = __import__("json").loads(run([PY, "-c", code]).stdout)
    assert env["LC_ALL"] == "C" and env["DM_DISABLE_UDEV"] == "1"
    assert env["PATH"] == PINNED_PATH
    assert "SNAPKIT_LEAK" not in env


def test_extra_env_is_added() -> None:
    out = run([PY, "-c", "import os; print(os.environ['X'])"], env={"X": "y"}).stdout
    assert out == "y\n"


def test_a_string_is_refused() -> None:
    with pytest.raises(TypeError, match="argv list"):
        run("echo hi")
    with pytest.raises(ValueError):
        run([])


def test_non_zero_raises_with_the_last_stderr_line() -> None:
    with pytest.raises(CommandError) as info:
        run([PY, "-c", "import sys; print('a\\nno such LV', file=sys.stderr); sys.exit(5)"])
    assert info.value.returncode == 5
    assert "no such LV" in str(info.value)
    assert info.value.argv[0] == PY


def test_check_false_returns_the_failure() -> None:
    result = run([PY, "-c", "raise SystemExit(3)"], check=False)
    assert result.returncode == 3 and not result.ok


def test_input_is_fed_to_stdin() -> None:
    result = run([PY, "-c", "import sys; print(sys.stdin.read().upper())"], input="abc")
    assert result.stdout == "ABC\n"


def test_stdin_is_closed_by_default() -> None:
    assert run([PY, "-c", "import sys; print(repr(sys.stdin.read()))"]).stdout == "''\n"


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; wait"
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        run(["sh", "-c", script], timeout=0.3)
    assert time.monotonic() - start < 5
    assert "did not finish within 0.3 s" in str(info.value)
    assert _wait_dead(int(pids.read_text()))


def test_keyboard_interrupt_kills_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=20)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _wait_dead(int(pidfile.read_text()))


def test_subprocess_executor_satisfies_the_protocol() -> None:
    executor: Executor = SubprocessExecutor()
    assert executor.run(["true"]).ok
    assert os.environ.get("PATH")  # the parent's environment is untouched
