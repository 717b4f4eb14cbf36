"""Metadata churn: create, truncate, hardlink, rename, unlink and mkdir, each made durable with
fsyncs of the file and its directory, each ledgered like a data write.

Each churned object walks a fixed lifecycle, so the state after every step is known in advance
and a snapshot can be placed in that history from the names it shows. Renames and links are the
interesting steps: a snapshot that shows both names of a rename (or neither) matches no state
at all, which the oracle reports as torn.

  file object k:  create a{k} -> truncate a{k} -> link a{k} c{k} -> rename a{k} b{k}
                  -> unlink c{k} -> unlink b{k}
  dir object k:   mkdir x{k} -> rename x{k} y{k}

A step the method documents as refused (refusal.py) did not happen: the object stays in the
state it had, the step is not counted, and the object is retried whenever it is picked next, so
its ledgered history is still exactly the lifecycle above, in order. A step whose directory
fsync alone was refused did happen: it is ledgered unacknowledged and the object moves on.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

from vmtests.guest.campaign.ledger import ABSENT, PACE_S, UNREADABLE, Ledger, fsync_dir
from vmtests.guest.refusal import Rule


def content(k: int, seed: int) -> bytes:
    return random.Random(seed * 31 + k).randbytes(3000 + (k * 37) % 5000)


def describe(root: str, k: int, seed: int) -> str:
    """The state of file object k as a snapshot shows it (see the module docstring)."""
    full = content(k, seed)
    parts, inodes = [], {}
    for name in ("a", "b", "c"):
        path = os.path.join(root, "churn", f"{name}{k}")
        try:
            st = os.lstat(path)
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{UNREADABLE}:{exc.errno}"
        ok = data == full[: len(data)]
        parts.append(f"{name}{st.st_size}/{st.st_nlink}{'' if ok else '!'}")
        inodes[name] = st.st_ino
    if len(set(inodes.values())) < len(inodes):
        parts.append("linked")
    return ",".join(parts) or ABSENT


def describe_dir(root: str, k: int) -> str:
    names = [n for n in (f"x{k}", f"y{k}") if os.path.isdir(os.path.join(root, "churn", n))]
    return ",".join(names) or ABSENT


def file_states(k: int, seed: int) -> list[str]:
    """The state after each lifecycle step of file object k, in order."""
    size = len(content(k, seed))
    half = size // 2
    return [
        f"a{size}/1~a0/1",  # open(O_CREAT) has run, write() not yet
        f"a{half}/1",
        f"a{half}/2,c{half}/2,linked",
        f"b{half}/2,c{half}/2,linked",
        f"b{half}/1",
        ABSENT,
    ]


class Churn(threading.Thread):
    def __init__(
        self,
        root: str,
        ledger: Ledger,
        seed: int,
        stop: threading.Event,
        *,
        rule: Rule,
        pace: float = PACE_S,
    ) -> None:
        super().__init__(name="churn", daemon=True)
        self.root, self.ledger, self.seed, self.stop = root, ledger, seed, stop
        self.rule, self.pace = rule, pace
        self.dir = os.path.join(root, "churn")
        self.rng = random.Random(seed * 104729)
        self.error: BaseException | None = None
        self.live: dict[int, int] = {}  # object -> lifecycle steps done
        self.next = 0  # the next new object's number

    def run(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            fsync_dir(self.root)
            while not self.stop.wait(self.pace):
                self.tick()
        except BaseException as exc:
            self.error = exc

    def tick(self) -> None:
        """Maybe start an object, then take one step of one live object."""
        if len(self.live) < 6 or self.rng.random() < 0.2:
            self.live[self.next] = 0
            self.next += 1
        obj = self.rng.choice(sorted(self.live))
        if obj % 5 == 4:  # every fifth object is a directory
            happened, done = self._dir_step(obj, self.live[obj]), 2
        else:
            happened, done = self._file_step(obj, self.live[obj]), 6
        if happened:
            self.live[obj] += 1
            if self.live[obj] == done:
                del self.live[obj]

    def _timed(self, obj: str, state: str, action: Callable[[], None]) -> bool:
        """One step: ``action`` is its effect, the directory's fsync its acknowledgement."""
        return self.rule.operate(self.ledger, obj, state, action, lambda _: fsync_dir(self.dir))

    def _dir_step(self, k: int, step: int) -> bool:
        x, y = os.path.join(self.dir, f"x{k}"), os.path.join(self.dir, f"y{k}")
        if step == 0:
            return self._timed(f"d:{k}", f"x{k}", lambda: os.mkdir(x))
        return self._timed(f"d:{k}", f"y{k}", lambda: os.rename(x, y))

    def _file_step(self, k: int, step: int) -> bool:
        p = {n: os.path.join(self.dir, f"{n}{k}") for n in "abc"}
        state = file_states(k, self.seed)[step]
        data = content(k, self.seed)

        def create() -> None:
            with open(p["a"], "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        def truncate() -> None:
            fd = os.open(p["a"], os.O_WRONLY)
            try:
                os.ftruncate(fd, len(data) // 2)
                os.fsync(fd)
            finally:
                os.close(fd)

        actions: list[Callable[[], None]] = [
            create,
            truncate,
            lambda: os.link(p["a"], p["c"]),
            lambda: os.rename(p["a"], p["b"]),
            lambda: os.unlink(p["c"]),
            lambda: os.unlink(p["b"]),
        ]
        return self._timed(f"c:{k}", state, actions[step])
