"""Issue 17: dm's suspend window has a watchdog. snapkit SIGKILLed at every point inside the
window of a dm and a dm-direct create (the origin suspended, the writer of its filesystem
hung): the writer resumes within ``--max-freeze``, no acknowledged write is lost, nothing is
left suspended, and ``recover`` settles what the watchdog finished -- a whole snapshot, taken
at the suspend, that fscks clean.

The negative control is the same kill with the watchdog killed too: the origin then stays
suspended (so the watchdog, not luck, is what resumed it) until ``recover``, which makes the
snapshot it never resumed cleanly absent.

The pause is the flow's test hook ``SNAPKIT_TEST_PAUSE_AT=N`` (stop before plan step N).
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from workload import (
    COW_DIR,
    check_files,
    fsck,
    ledger,
    paused_at,
    setup_origin,
    snapkit,
    start_writer,
    stop_writer,
)

from vmtests.vm.session import Session

MAX_FREEZE = 6.0
SLACK = 4.0  # the host's polling and round trips to a TCG guest


def _window(vm: Session, args: list[str]) -> list[int]:
    """Plan steps after the origin's suspend, up to the watchdog's stop: each pause there is
    inside the window (the origin suspended)."""
    text = snapkit(vm, *args, "--dry-run").stdout.decode().split("then, once")[0]
    numbered = re.findall(r"^\s+(\d+)\. (.*)$", text, re.M)
    start = next(int(n) for n, what in numbered if what.startswith("dmsetup suspend"))
    stop = next(int(n) for n, what in numbered if what.startswith("stop the watchdog"))
    return list(range(start + 1, stop))


def _suspended(vm: Session) -> str:
    """The names of suspended dm devices, as the kernel shows them in sysfs."""
    return vm.sh(
        'for d in /sys/block/dm-*/dm; do [ "$(cat $d/suspended)" = 1 ] && cat $d/name; done; true'
    ).stdout.decode()


def _kill_inside(vm: Session, args: list[str], step: int, *, watchdog_too: bool) -> float:
    """Pause snapkit before ``step``, SIGKILL it there (and its watchdog, if asked); returns
    how long the writer stayed hung after the pause was seen."""
    proc = paused_at(vm, args, str(step))
    paused = time.monotonic()
    assert _suspended(vm), "the pause is not inside the window"
    if watchdog_too:
        vm.sh("pkill -KILL -f 'snapkit[.]host[.]watchdog'")  # [.]: not this shell
    proc.signal(signal.SIGKILL)
    assert proc.wait(30).returncode == -signal.SIGKILL
    before = ledger(vm)
    while ledger(vm) <= before:
        if time.monotonic() - paused > MAX_FREEZE + SLACK + 10:
            break
        time.sleep(0.2)
    return time.monotonic() - paused


@pytest.mark.parametrize("method", ["dm", "dm-direct"])
def test_sigkill_inside_the_window_the_watchdog_resumes(vm: Session, method: str) -> None:
    setup_origin(vm, "ext4", size="128M")
    base = ["snapshot", "create", "/mnt/o", "--cow-dir", COW_DIR, "--cow-size", "48M"]
    base += ["--method", method, "--max-freeze", str(MAX_FREEZE)]
    points = _window(vm, [*base, "--name", "probe"])
    assert points, "no step inside the window"
    for index, step in enumerate(points):
        name = f"k{index}"
        writer = start_writer(vm, f"/mnt/o/w{index}")
        hung = _kill_inside(vm, [*base, "--name", name], step, watchdog_too=False)
        assert hung <= MAX_FREEZE + SLACK, f"step {step}: the writer hung {hung:.1f} s"
        assert not _suspended(vm), f"step {step}: {_suspended(vm)}"
        acked = stop_writer(vm, writer)
        snapkit(vm, "recover")
        assert not _suspended(vm)
        status = snapkit(vm, "snapshot", "status", name).stdout.decode()
        assert "active" in status, (step, status)  # whole: the watchdog finished the window
        check_files(vm, f"/mnt/o/w{index}", acked)  # no acknowledged write lost
        if method == "dm":
            fsck(vm, "ext4", f"/dev/mapper/{name}")  # taken at the lockfs suspend: clean
        snapkit(vm, "snapshot", "discard", name)


def test_without_the_watchdog_the_origin_stays_suspended_until_recover(vm: Session) -> None:
    """The negative control: the same kill with the watchdog killed first."""
    setup_origin(vm, "ext4", size="128M")
    args = ["snapshot", "create", "/mnt/o", "--cow-dir", COW_DIR, "--cow-size", "48M"]
    args += ["--method", "dm", "--max-freeze", str(MAX_FREEZE), "--name", "c1"]
    step = _window(vm, args)[0]
    writer = start_writer(vm, "/mnt/o/wc")
    hung = _kill_inside(vm, args, step, watchdog_too=True)
    assert hung > MAX_FREEZE + SLACK, "the writer resumed without the watchdog"
    assert _suspended(vm), "nothing was left suspended without the watchdog"
    snapkit(vm, "recover")  # the snapshot was never resumed: recover makes it cleanly absent
    assert not _suspended(vm)
    acked = stop_writer(vm, writer)
    check_files(vm, "/mnt/o/wc", acked)
    assert b"c1" not in snapkit(vm, "snapshot", "list").stdout
    assert vm.sh("dmsetup ls").stdout.decode().split()[0::2] == ["data"]
