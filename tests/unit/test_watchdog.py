"""The watchdog thaws exactly when it must: at the deadline, or when snapkit dies while armed.

Negative controls: "done" and a death before "arm" must *not* thaw.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from snapkit.host import watchdog
from snapkit.host.watchdog import Watchdog, _Watch


@pytest.fixture
def thaws(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def thaw_fd(fd: int) -> bool:
        calls.append(fd)
        return True

    monkeypatch.setattr(watchdog, "thaw_fd", thaw_fd)
    monkeypatch.setattr(watchdog, "_say", lambda text: None)
    return calls


def serve(lines: list[bytes], *, close: bool = True, delay: float = 0.0) -> str:
    read, write = os.pipe()

    def feed() -> None:
        for line in lines:
            os.write(write, line)
        time.sleep(delay)
        if close:
            os.close(write)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        return _Watch(99).serve(read)
    finally:
        thread.join()
        os.close(read)
        if not close:
            os.close(write)


def far() -> bytes:
    return f"arm {time.monotonic() + 60:.6f}\n".encode()


def test_done_does_not_thaw(thaws: list[int]) -> None:
    assert serve([far(), b"done\n"]) == "done"
    assert thaws == []


def test_death_before_arming_does_not_thaw(thaws: list[int]) -> None:
    assert serve([]) == "idle eof"
    assert thaws == []


def test_death_while_armed_thaws_at_once(thaws: list[int]) -> None:
    start = time.monotonic()
    assert serve([far()]) == "thawed eof"
    assert thaws == [99] and time.monotonic() - start < 5


def test_deadline_thaws_then_waits_for_done(thaws: list[int]) -> None:
    soon = f"arm {time.monotonic() + 0.1:.6f}\n".encode()
    start = time.monotonic()
    assert serve([soon], close=True, delay=0.5) == "thawed deadline"
    assert thaws == [99]  # once, not again at EOF
    assert time.monotonic() - start >= 0.1


def test_lines_split_across_reads(thaws: list[int]) -> None:
    line = far()
    assert serve([line[:4], line[4:], b"do", b"ne\n"]) == "done"
    assert thaws == []


def test_the_process_round_trip(tmp_path: Path) -> None:
    """The real process: starts, says ready, disarms on "done" without touching anything."""
    dog = Watchdog(tmp_path)
    dog.start()
    assert dog.proc is not None and dog.proc.pid != os.getpid()
    assert os.getsid(dog.proc.pid) != os.getsid(0)  # its own session: our Ctrl-C misses it
    dog.arm(time.monotonic() + 60)
    assert dog.stop() is False


def test_the_process_thaws_at_the_deadline(tmp_path: Path) -> None:
    dog = Watchdog(tmp_path)
    dog.start()
    dog.arm(time.monotonic() + 0.1)
    time.sleep(0.6)
    assert dog.stop() is True  # it tried (tmp_path is not frozen: EINVAL or EPERM, reported)


def test_the_helpers_pythonpath_holds_the_snapkit_package() -> None:
    """The watchdog runs as ``python -m snapkit.host.watchdog`` with PYTHONPATH set to the
    folder holding snapkit/ (a guest has no installed snapkit): moving the module deeper
    must move that folder too, or the watchdog dies before saying "ready"."""
    from snapkit.bench import freeze_window

    assert (watchdog._PACKAGE_ROOT / "snapkit" / "host" / "watchdog.py").is_file()
    assert (Path(freeze_window.ENV["PYTHONPATH"]) / "snapkit" / "bench").is_dir()


def test_devices_named_are_resumed_before_the_thaw(
    thaws: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's lvm member holds its origin suspended: thawing first would wait for ever on
    the superblock write, so the resume comes first (and only when armed)."""
    order: list[str] = []
    monkeypatch.setattr(watchdog, "_resume", lambda name: order.append(f"resume {name}"))
    monkeypatch.setattr(watchdog, "thaw_fd", lambda fd: order.append("thaw") or True)
    watch = _Watch(99, ("vg-a",))
    watch.fire("eof")
    assert order == ["resume vg-a", "thaw"]


class _Dm:
    def __init__(self, suspended: bool, inactive: bool) -> None:
        self.suspended, self.inactive, self.resumed = suspended, inactive, False

    def __enter__(self) -> _Dm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def info(self, name: str) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(suspended=self.suspended, inactive_table=self.inactive)

    def resume(self, name: str, *, lockfs: bool = True) -> None:
        self.resumed = True


@pytest.mark.parametrize(
    ("suspended", "inactive", "resumed"),
    [(True, False, True), (False, False, False), (True, True, False)],
)
def test_only_a_plain_suspend_is_resumed(
    monkeypatch: pytest.MonkeyPatch, suspended: bool, inactive: bool, resumed: bool
) -> None:
    """Suspended with an inactive table is lvcreate's reload in flight: a resume would swap in
    a table whose devices are not ready, so it is left to lvcreate (negative control)."""
    dm = _Dm(suspended, inactive)
    monkeypatch.setattr("snapkit.dm.control.IoctlDm", lambda: dm)
    monkeypatch.setattr(watchdog, "_say", lambda text: None)
    watchdog._resume("vg-a")
    assert dm.resumed is resumed
