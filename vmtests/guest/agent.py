"""The guest agent: runs commands and moves files for the host, over one virtio-serial port.

Standard library only: it runs on the guest's bare python3, started with -I -S so start-up is
as short as TCG allows.

Wire format, both directions: a JSON header on one line, then exactly ``len`` raw bytes (0 when
absent). Requests carry an ``id``; every reply and stream chunk names the request's ``id``.

  host -> guest  {"op": "exec", "id", "argv", "env"?, "cwd"?, "stdin": bool, "timeout"?}
                 {"op": "stdin", "id", "len"} + bytes    (len 0 closes the command's stdin)
                 {"op": "signal", "id", "signum"}
                 {"op": "put", "id", "path", "mode", "len"} + bytes
                 {"op": "get", "id", "path"}
                 {"op": "shutdown", "id"}
  guest -> host  {"event": "ready"}
                 {"id", "stream": "stdout"|"stderr", "len"} + bytes
                 {"id", "exit": code, "timed_out": bool}   (code < 0: killed by signal -code)
                 {"id", "ok": true, "len"?} + bytes         (put, get, shutdown, signal)
                 {"id", "error": message}
Commands run concurrently, each in its own session so a timeout kills the whole group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

CHUNK = 1 << 16


class Port:
    """One bidirectional port; frames are written whole under a lock so threads interleave."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.lock = threading.Lock()
        self.buf = b""

    def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        if data:
            header = {**header, "len": len(data)}
        frame = json.dumps(header, separators=(",", ":")).encode() + b"\n" + data
        with self.lock:
            view = memoryview(frame)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def _fill(self) -> bool:
        data = os.read(self.fd, CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def recv(self) -> tuple[dict[str, Any], bytes] | None:
        while b"\n" not in self.buf:
            if not self._fill():
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        header = json.loads(line)
        need = int(header.get("len", 0))
        while len(self.buf) < need:
            if not self._fill():
                return None
        data, self.buf = self.buf[:need], self.buf[need:]
        return header, data


class Agent:
    def __init__(self, port: Port) -> None:
        self.port = port
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def serve(self) -> None:
        self.port.send({"event": "ready"})
        while (msg := self.port.recv()) is not None:
            header, data = msg
            op = header.get("op")
            try:
                if op == "shutdown":
                    self.port.send({"id": header["id"], "ok": True})
                    return
                getattr(self, f"op_{op}")(header, data)
            except Exception as exc:
                self.port.send({"id": header.get("id"), "error": f"{type(exc).__name__}: {exc}"})

    def op_exec(self, h: dict[str, Any], _: bytes) -> None:
        env = {**os.environ, **h.get("env", {})}
        proc = subprocess.Popen(
            h["argv"],
            stdin=subprocess.PIPE if h.get("stdin") else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=h.get("cwd"),
            env=env,
            start_new_session=True,
        )
        self.procs[h["id"]] = proc
        threading.Thread(
            target=self._watch, args=(h["id"], proc, h.get("timeout")), daemon=True
        ).start()

    def _pump(self, rid: int, name: str, stream: Any) -> None:
        while data := os.read(stream.fileno(), CHUNK):
            self.port.send({"id": rid, "stream": name}, data)

    def _watch(self, rid: int, proc: subprocess.Popen[bytes], timeout: float | None) -> None:
        pumps = [
            threading.Thread(target=self._pump, args=(rid, "stdout", proc.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(rid, "stderr", proc.stderr), daemon=True),
        ]
        for t in pumps:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for t in pumps:
            t.join(None if not timed_out else 5)
        self.procs.pop(rid, None)
        self.port.send({"id": rid, "exit": proc.returncode, "timed_out": timed_out})

    def op_stdin(self, h: dict[str, Any], data: bytes) -> None:
        proc = self.procs.get(h["id"])
        if proc is None or proc.stdin is None:
            return
        try:
            if data:
                proc.stdin.write(data)
                proc.stdin.flush()
            else:
                proc.stdin.close()
        except BrokenPipeError:
            pass

    def op_signal(self, h: dict[str, Any], _: bytes) -> None:
        proc = self.procs.get(h["target"])
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, int(h["signum"]))
        self.port.send({"id": h["id"], "ok": True})

    def op_put(self, h: dict[str, Any], data: bytes) -> None:
        path = h["path"]
        mode = int(h.get("mode", 0o644))
        existed = os.path.exists(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if not existed:  # only our own new files: /proc and /sys files refuse chmod
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        self.port.send({"id": h["id"], "ok": True})

    def op_get(self, h: dict[str, Any], _: bytes) -> None:
        with open(h["path"], "rb") as f:
            data = f.read()
        self.port.send({"id": h["id"], "ok": True}, data)


def main() -> None:
    Agent(Port(sys.argv[1])).serve()


if __name__ == "__main__":
    main()
