"""The host side of the guest agent's protocol (see vmtests/guest/agent.py for the wire format).

One reader thread demultiplexes frames into per-request queues, so many commands can run in the
guest at once (a workload in the background while a snapshot is taken). When the socket closes
or a deadline passes, every waiter is woken and the Machine explains why: a panic or a lost VM.
"""

from __future__ import annotations

import itertools
import json
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmtests.vm.errors import ChannelError, VmError

Frame = tuple[dict[str, Any], bytes]
_CLOSED: Frame = ({"closed": True}, b"")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def check(self) -> CommandResult:
        if self.returncode != 0:
            raise CommandFailed(self)
        return self


class CommandFailed(Exception):
    """A guest command exited non-zero where success was required."""

    def __init__(self, result: CommandResult) -> None:
        err = result.stderr.decode(errors="replace").strip()
        super().__init__(f"{' '.join(result.argv)!r} exited {result.returncode}: {err[-2000:]}")
        self.result = result


class Process:
    """A command still running in the guest; collect it with ``wait``."""

    def __init__(self, channel: Channel, rid: int, argv: tuple[str, ...], deadline: float) -> None:
        self.channel, self.rid, self.argv, self.deadline = channel, rid, argv, deadline
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.result: CommandResult | None = None

    def write(self, data: bytes) -> None:
        for i in range(0, len(data), 1 << 16):
            self.channel.send({"op": "stdin", "id": self.rid}, data[i : i + (1 << 16)])

    def close_stdin(self) -> None:
        self.channel.send({"op": "stdin", "id": self.rid})

    def signal(self, signum: int) -> None:
        self.channel.request({"op": "signal", "target": self.rid, "signum": signum}, timeout=30)

    def wait(self, timeout: float | None = None) -> CommandResult:
        if self.result is not None:
            return self.result
        limit = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        while True:
            header, data = self.channel.next_frame(self.rid, limit, f"while running {self.argv[0]}")
            if "stream" in header:
                (self.stdout if header["stream"] == "stdout" else self.stderr).extend(data)
            elif "exit" in header:
                self.channel.forget(self.rid)
                self.result = CommandResult(
                    self.argv,
                    int(header["exit"]),
                    bytes(self.stdout),
                    bytes(self.stderr),
                    bool(header.get("timed_out")),
                )
                return self.result
            elif "error" in header:
                self.channel.forget(self.rid)
                raise ChannelError(f"the guest could not run {self.argv[0]}: {header['error']}")


class Channel:
    """Talks to the agent over a connected socket. ``explain`` turns a dead link into an error."""

    def __init__(self, sock: socket.socket, explain: Callable[[str], VmError]) -> None:
        self.sock = sock
        self.explain = explain
        self._ids = itertools.count(1)
        self._queues: dict[int | None, queue.Queue[Frame]] = {None: queue.Queue()}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._read_loop, daemon=True).start()

    # -- framing -------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                while b"\n" not in buf:
                    chunk = self.sock.recv(1 << 16)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                header = json.loads(line)
                need = int(header.get("len", 0))
                while len(buf) < need:
                    chunk = self.sock.recv(max(need - len(buf), 1 << 16))
                    if not chunk:
                        return
                    buf += chunk
                data, buf = buf[:need], buf[need:]
                self._queue(header.get("id")).put((header, data))
        except (OSError, ValueError):
            return
        finally:
            self.closed = True
            with self._lock:
                for q in self._queues.values():
                    q.put(_CLOSED)

    def _queue(self, rid: int | None) -> queue.Queue[Frame]:
        with self._lock:
            q = self._queues.get(rid)
            if q is None:
                q = self._queues[rid] = queue.Queue()
                if self.closed:
                    q.put(_CLOSED)
            return q

    def forget(self, rid: int) -> None:
        with self._lock:
            self._queues.pop(rid, None)

    def send(self, header: dict[str, Any], data: bytes = b"", *, timeout: float = 60.0) -> None:
        """Send one frame, giving up after ``timeout``: a guest that stops reading (hung or
        panicked) must not block the host forever, so writes never wait without a deadline."""
        frame = memoryview(json.dumps({**header, "len": len(data)}).encode() + b"\n" + data)
        deadline = time.monotonic() + timeout
        with self._send_lock:
            while frame:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.explain("while sending to the agent: it stopped reading")
                try:
                    _, writable, _ = select.select([], [self.sock], [], min(remaining, 1.0))
                    if writable:
                        frame = frame[self.sock.send(frame, socket.MSG_DONTWAIT) :]
                except BlockingIOError:
                    continue
                except OSError:
                    raise self.explain("while sending to the agent") from None

    def next_frame(self, rid: int | None, deadline: float, what: str) -> Frame:
        try:
            frame = self._queue(rid).get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise self.explain(f"{what}: no answer before the deadline") from None
        if frame is _CLOSED:
            raise self.explain(what)
        return frame

    # -- requests ------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> None:
        header, _ = self.next_frame(None, time.monotonic() + timeout, "while booting")
        if header.get("event") != "ready":
            raise ChannelError(f"expected the agent's ready event, got {header}")

    def request(self, header: dict[str, Any], data: bytes = b"", *, timeout: float) -> bytes:
        rid = next(self._ids)
        self._queue(rid)
        self.send({**header, "id": rid}, data)
        reply, payload = self.next_frame(rid, time.monotonic() + timeout, f"during {header['op']}")
        self.forget(rid)
        if "error" in reply:
            raise ChannelError(f"{header['op']} failed in the guest: {reply['error']}")
        return payload

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        timeout: float = 600.0,
    ) -> Process:
        rid = next(self._ids)
        self._queue(rid)
        header: dict[str, Any] = {"op": "exec", "id": rid, "argv": list(argv), "stdin": stdin}
        header["timeout"] = timeout
        if env:
            header["env"] = dict(env)
        if cwd:
            header["cwd"] = cwd
        self.send(header)
        # The guest enforces ``timeout``; the host allows a margin before calling the VM lost.
        return Process(self, rid, tuple(argv), time.monotonic() + timeout + 30)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 600.0,
        check: bool = False,
    ) -> CommandResult:
        proc = self.spawn(argv, env=env, cwd=cwd, stdin=input is not None, timeout=timeout)
        if input is not None:
            proc.write(input)
            proc.close_stdin()
        result = proc.wait()
        return result.check() if check else result

    def put(self, path: str, data: bytes, mode: int = 0o644, timeout: float = 120) -> None:
        self.request({"op": "put", "path": path, "mode": mode}, data, timeout=timeout)

    def get(self, path: str, timeout: float = 120) -> bytes:
        return self.request({"op": "get", "path": path}, timeout=timeout)

    def shutdown(self, timeout: float = 30) -> None:
        self.request({"op": "shutdown"}, timeout=timeout)


__all__ = ["Channel", "CommandFailed", "CommandResult", "Process"]
