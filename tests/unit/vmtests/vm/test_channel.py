"""Deadlines and lost links, without a VM: the channel over a socketpair with a scripted agent,
and the Machine's timeout and diagnosis around a real (non-QEMU) process."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmtests.vm.channel import Channel, CommandFailed
from vmtests.vm.errors import ChannelError, LostVMError, PanicError, VmTimeout
from vmtests.vm.image import Image
from vmtests.vm.kernel.layer import Layer
from vmtests.vm.machine import Machine
from vmtests.vm.payload import Mode, Payload


class Agent:
    """The guest end of a socketpair: reads frames, and answers with what a test scripts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def recv(self) -> tuple[dict[str, Any], bytes]:
        header = json.loads(self.file.readline())
        return header, self.file.read(int(header.get("len", 0)))

    def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        self.sock.sendall(json.dumps({**header, "len": len(data)}).encode() + b"\n" + data)


Explained = list[str]


@pytest.fixture
def link() -> Iterator[tuple[Channel, Agent, Explained]]:
    host, guest = socket.socketpair()
    explained: Explained = []

    def explain(what: str) -> LostVMError:
        explained.append(what)
        return LostVMError(f"lost {what}")

    channel = Channel(host, explain)
    yield channel, Agent(guest), explained
    host.close()
    guest.close()


def in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_a_command_round_trip(link: tuple[Channel, Agent, Explained]) -> None:
    channel, agent, _ = link

    def serve() -> None:
        header, _ = agent.recv()
        assert header["op"] == "exec" and header["argv"] == ["cat"] and header["stdin"]
        stdin_header, data = agent.recv()
        assert (stdin_header["op"], data) == ("stdin", b"in")
        assert agent.recv()[1] == b""  # stdin closed
        agent.send({"id": header["id"], "stream": "stdout"}, b"out")
        agent.send({"id": header["id"], "stream": "stderr"}, b"err")
        agent.send({"id": header["id"], "exit": 7, "timed_out": False})

    in_thread(serve)
    result = channel.run(["cat"], input=b"in", timeout=5)
    assert (result.returncode, result.stdout, result.stderr) == (7, b"out", b"err")
    with pytest.raises(CommandFailed, match="exited 7: err"):
        result.check()


def test_ready_event_and_a_wrong_first_frame(link: tuple[Channel, Agent, Explained]) -> None:
    channel, agent, _ = link
    agent.send({"event": "ready"})
    channel.wait_ready(5)
    agent.send({"event": "something else"})
    with pytest.raises(ChannelError, match="ready"):
        channel.wait_ready(5)


def test_no_answer_before_the_deadline_is_a_lost_vm(
    link: tuple[Channel, Agent, Explained],
) -> None:
    channel, _, explained = link
    t0 = time.monotonic()
    with pytest.raises(LostVMError):
        channel.get("/x", timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    assert explained == ["during get: no answer before the deadline"]


def test_booting_past_the_deadline_is_explained(link: tuple[Channel, Agent, Explained]) -> None:
    channel, _, explained = link
    with pytest.raises(LostVMError):
        channel.wait_ready(0.2)
    assert explained == ["while booting: no answer before the deadline"]


def test_process_wait_honours_its_own_timeout(link: tuple[Channel, Agent, Explained]) -> None:
    channel, _, explained = link
    proc = channel.spawn(["sleep", "100"], timeout=600)
    t0 = time.monotonic()
    with pytest.raises(LostVMError):
        proc.wait(timeout=0.2)
    assert time.monotonic() - t0 < 3
    assert explained == ["while running sleep: no answer before the deadline"]


def test_a_closed_link_wakes_every_waiter_at_once(
    link: tuple[Channel, Agent, Explained],
) -> None:
    channel, agent, explained = link
    procs = [channel.spawn(["sleep", str(i)], timeout=600) for i in range(3)]
    errors: list[BaseException] = []

    def waiter(p: Any) -> None:
        try:
            p.wait()
        except LostVMError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    agent.sock.shutdown(socket.SHUT_RDWR)  # the VM vanished
    for t in threads:
        t.join(5)
    assert time.monotonic() - t0 < 2
    assert len(errors) == 3
    assert explained == ["while running sleep"] * 3
    with pytest.raises(LostVMError):  # and later requests fail at once too
        channel.get("/x", timeout=30)


def test_a_guest_error_reply_is_a_channel_error(link: tuple[Channel, Agent, Explained]) -> None:
    channel, agent, _ = link

    def serve() -> None:
        header, _ = agent.recv()
        agent.send({"id": header["id"], "error": "FileNotFoundError: /nope"})

    in_thread(serve)
    with pytest.raises(ChannelError, match="get failed in the guest: FileNotFoundError"):
        channel.get("/nope", timeout=5)


def test_sending_on_a_dead_link_is_explained(link: tuple[Channel, Agent, Explained]) -> None:
    channel, agent, explained = link
    agent.file.close()
    agent.sock.close()  # the last reference: the host now sees the peer gone
    time.sleep(0.05)
    with pytest.raises(LostVMError):
        for _ in range(100):  # the first sends may still fit in the socket buffer
            channel.send({"op": "stdin", "id": 1}, b"x" * 65536)
    assert "while sending to the agent" in explained


# -- Machine: timeout and diagnosis, around a stand-in process ----------------------------------


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine(
        Image(tmp_path / "image", Layer(tmp_path / "layer")), Payload(Mode.AGENT), tmp_path / "work"
    )
    m.workdir.mkdir()
    yield m
    m.close()


def stand_in(machine: Machine, script: str) -> subprocess.Popen[bytes]:
    machine.proc = subprocess.Popen(["sh", "-c", script])
    return machine.proc


def test_wait_past_the_deadline_kills_and_raises_timeout(machine: Machine) -> None:
    machine.console_log.write_text("booting\nstill booting\n")
    proc = stand_in(machine, "sleep 60")
    t0 = time.monotonic()
    with pytest.raises(VmTimeout) as info:
        machine.wait(0.3)
    assert time.monotonic() - t0 < 5
    assert proc.poll() is not None, "QEMU must be killed, not left running"
    assert "still booting" in info.value.console_tail


def test_wait_returns_the_exit_status(machine: Machine) -> None:
    stand_in(machine, "exit 3")
    assert machine.wait(5) == 3


def test_failure_of_a_qemu_that_died_quotes_its_log(machine: Machine) -> None:
    machine.qemu_log.write_text("qemu-system-x86_64: KVM: entry failed, hardware error 0x7\n")
    machine.console_log.write_text("[    0.1] Linux version 6.1\n")
    stand_in(machine, "exit 1")
    err = machine.failure("while booting")
    assert isinstance(err, LostVMError) and not isinstance(err, PanicError)
    assert "exit status 1" in err.message
    assert "KVM: entry failed" in err.message
    assert "Linux version" in err.console_tail


def test_failure_names_the_signal_that_killed_qemu(machine: Machine) -> None:
    stand_in(machine, "kill -9 $$")
    assert "killed by SIGKILL" in machine.failure("during get").message


def test_failure_waits_briefly_for_a_dying_qemu(machine: Machine) -> None:
    stand_in(machine, "sleep 0.3; exit 2")
    assert "exit status 2" in machine.failure("during get").message


def test_failure_of_a_running_qemu_says_so(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vmtests.vm.machine._EXIT_GRACE_S", 0.1)
    stand_in(machine, "sleep 60")
    assert "still running" in machine.failure("during get").message


def test_a_panic_is_named_with_its_reason_even_under_a_long_trace(machine: Machine) -> None:
    trace = [f"[    5.5] frame {i}" for i in range(80)]
    machine.console_log.write_text(
        "\n".join(
            [
                "[    5.4] sysrq: Trigger a crash",
                "[    5.4] Kernel panic - not syncing: oops",
                *trace,
            ]
        )
    )
    stand_in(machine, "exit 0")
    err = machine.failure("while running sh")
    assert isinstance(err, PanicError)
    assert "Kernel panic - not syncing: oops" in err.console_tail
    assert "sysrq: Trigger a crash" in err.console_tail


def test_a_fatal_init_line_is_a_panic(machine: Machine) -> None:
    machine.console_log.write_text("vmtest-init: FATAL: mount the squashfs root\n")
    stand_in(machine, "exit 0")
    assert isinstance(machine.failure("while booting"), PanicError)
