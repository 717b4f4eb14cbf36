"""The ledger, the self-describing record format, and the ledger writer workload.

Why a ledger: a snapshot is judged against what the workload was *told* is durable. Each
operation is appended to the ledger the moment its fsync (or msync, or directory fsync)
returns, with its start and acknowledgement times on CLOCK_MONOTONIC, the clock every process
in the guest shares, so the snapshot's begin and end (taken by the runner on the same clock)
split the ledger into "acked before", "in the window" and "began after".

Every operation moves one *object* (a record slot in a file, a page, a churned name) to a new
*state*, a short string. The oracle (verify.py) reads each object's state on the snapshot and
finds where it sits in that object's history: that is all it needs, whatever the workload.

An operation the method documents as refused (refusal.py: EROFS under remount-ro) is not an
operation of the history: it is noted on a line of its own (``!obj``), which ``load`` skips. One
whose effect happened but whose acknowledgement was refused is ledgered with no ack time.

The ledger lives on tmpfs, outside the filesystem under test, so no snapshot check can touch it.
Standard library only: this runs on the guest's bare python3.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import struct
import threading
import zlib
from typing import Any, NamedTuple

from vmtests.guest.refusal import Rule

MAGIC = b"SNAPKREC"
RECORD = 8192  # two 4 KiB blocks, so a write torn between blocks shows up in the checksum
_HEAD = struct.Struct("<8sQIIQ")  # magic, seq, slot, path hash, seed
ABSENT = "absent"
ZERO = "zero"
UNREADABLE = "unreadable"
REFUSED = "!"  # prefix of a ledger line noting a refused operation (not an operation)
# Pause between operations of one workload thread. Under TCG the guest has one slow vCPU: thread
# loops with no pause starve everything else, the snapshot command included (measured: 27 s for
# an lvm create that takes ~2 s with paced writers). Paced, the load is still continuous.
PACE_S = 0.04


class Op(NamedTuple):
    obj: str
    step: int  # 1-based position in this object's history; state 0 is always ABSENT
    state: str
    t0: float
    t1: float  # acknowledged at; math.inf: it happened but was never acknowledged (refusal.py)

    @property
    def acked(self) -> bool:
        return self.t1 != math.inf


class Ledger:
    """Append-only, one JSON array per line, written with O_APPEND so threads never interleave."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._next: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, obj: str, state: str, t0: float, t1: float | None) -> None:
        """``obj`` moved to ``state``, acknowledged at ``t1`` (None: never, see refusal.py)."""
        with self._lock:
            index = self._next.get(obj, 0) + 1
            self._next[obj] = index
        acked = None if t1 is None else round(t1, 6)
        line = json.dumps([obj, index, state, round(t0, 6), acked]) + "\n"
        os.write(self.fd, line.encode())

    def refuse(self, obj: str, state: str, code: int, t0: float, t1: float) -> None:
        """A documented refusal (errno ``code``, refusal.py): a note for readers and
        :func:`refusals`, never an operation (``load`` skips it), so it takes no place in the
        object's history."""
        name = errno.errorcode.get(code, str(code))
        line = json.dumps([REFUSED + obj, 0, f"{state} {name}", round(t0, 6), round(t1, 6)])
        os.write(self.fd, (line + "\n").encode())

    def mark(self, name: str, t: float) -> None:
        """A named instant (snapshot begin/end) on the same clock, for readers of the file."""
        os.write(
            self.fd, (json.dumps(["#" + name, 0, "", round(t, 6), round(t, 6)]) + "\n").encode()
        )

    def close(self) -> None:
        os.close(self.fd)


def _lines(path: str) -> list[list[Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load(path: str) -> list[Op]:
    """The operations, in ledger order; marks (``#``) and refusals (``!``) are not operations."""
    ops = []
    for obj, index, state, t0, t1 in _lines(path):
        if isinstance(obj, str) and not obj.startswith(("#", REFUSED)):
            acked = math.inf if t1 is None else float(t1)
            ops.append(Op(obj, int(index), state, float(t0), acked))
    return ops


def refusals(path: str) -> int:
    """How many operations the method refused (refusal.py), for the scenario's result."""
    return sum(1 for line in _lines(path) if str(line[0]).startswith(REFUSED))


def path_hash(path: str) -> int:
    return zlib.crc32(path.encode())


def make_record(path: str, slot: int, seq: int, seed: int, size: int = RECORD) -> bytes:
    """A record that names its file, slot and sequence, and ends with a CRC over all of it."""
    head = _HEAD.pack(MAGIC, seq, slot, path_hash(path), seed)
    # A body that differs for every (seq, seed) and costs nothing to make: the slow vCPU is
    # shared with the snapshot command, and the CRC, not randomness, is what detects tearing.
    stamp = struct.pack("<QQ", seq, seed ^ (slot << 32))
    fill = size - len(head) - 12
    body = (stamp * (fill // len(stamp) + 1))[:fill]
    data = head + body + struct.pack("<Q", seq)
    return data + struct.pack("<I", zlib.crc32(data))


def parse_record(path: str, slot: int, data: bytes) -> str:
    """The state a record slot shows: its seq, ABSENT/ZERO, or a 'torn:...' description."""
    if not data:
        return ABSENT
    if data.count(0) == len(data):
        return ZERO
    size = len(data)
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        return "torn:crc"
    magic, seq, rslot, phash, _seed = _HEAD.unpack_from(data)
    tail = struct.unpack_from("<Q", data, size - 12)[0]
    if magic != MAGIC or rslot != slot or phash != path_hash(path) or tail != seq:
        return "torn:header"
    return str(seq)


class Writer(threading.Thread):
    """Creates, overwrites and appends record files; fsyncs each; ledgers each acknowledgement.

    A *lazy* writer (``sync=False``) never fsyncs: its acknowledgement is write() returning.
    Every snapkit method freezes the filesystem (or syncs it, for btrfs and remount-ro) before
    the point in time, and a freeze writes back all dirty data, so a consistent snapshot holds
    these writes too. A crash-consistent copy (no freeze) loses those still in the page cache:
    this is what tells a frozen snapshot from a merely crash-consistent one, whatever the fs.

    A write the method documents as refused (``rule``, see refusal.py) did not happen: the
    file keeps its slots, and a later step writes there again with a new sequence number.
    """

    def __init__(
        self,
        root: str,
        ledger: Ledger,
        tid: int,
        seed: int,
        stop: threading.Event,
        *,
        rule: Rule,
        sync: bool = True,
        pace: float = PACE_S,
    ) -> None:
        super().__init__(name=f"writer{tid}" if sync else f"lazy{tid}", daemon=True)
        self.sync, self.pace, self.rule = sync, pace, rule
        self.root, self.ledger, self.tid, self.stop = root, ledger, tid, stop
        self.rng = random.Random(seed * 7919 + tid)
        self.seed = seed
        self.files: dict[str, int] = {}  # path -> slots
        self.seq = tid << 40
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            os.makedirs(os.path.join(self.root, f"w{self.tid}"), exist_ok=True)
            while not self.stop.wait(self.pace):
                self.step()
        except BaseException as exc:  # reported by the runner, never swallowed
            self.error = exc

    def step(self) -> None:
        self.seq += 1
        roll = self.rng.random()
        if not self.files or (roll < 0.15 and len(self.files) < 40):
            rel = f"w{self.tid}/f{len(self.files):03d}"
            if self._write(rel, 0, create=True):
                self.files[rel] = 1
        elif roll < 0.55:
            rel = self.rng.choice(sorted(self.files))
            slot = self.files[rel]
            if slot < 16:
                if self._write(rel, slot):
                    self.files[rel] = slot + 1
            else:
                self._write(rel, self.rng.randrange(slot))
        else:
            rel = self.rng.choice(sorted(self.files))
            self._write(rel, self.rng.randrange(self.files[rel]))

    def _write(self, rel: str, slot: int, create: bool = False) -> bool:
        """One record: open and pwrite are the effect; fsync, close and (for a new file) the
        directory's fsync the acknowledgement. Whether the record was written (refusal.py)."""
        data = make_record(rel, slot, self.seq, self.seed)
        path = os.path.join(self.root, rel)

        def effect() -> int:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.pwrite(fd, data, slot * RECORD)
            except BaseException:
                os.close(fd)
                raise
            return fd

        def ack(fd: int) -> None:
            try:
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if create and self.sync:
                fsync_dir(os.path.dirname(path))

        return self.rule.operate(self.ledger, f"w:{rel}#{slot}", str(self.seq), effect, ack)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def observe_writer(root: str, obj: str) -> str:
    """Read one writer object ('w:REL#SLOT') from a mounted snapshot."""
    rel, slot_text = obj[2:].rsplit("#", 1)
    slot = int(slot_text)
    try:
        with open(os.path.join(root, rel), "rb") as f:
            f.seek(slot * RECORD)
            data = f.read(RECORD)
    except FileNotFoundError:
        return ABSENT
    except OSError as exc:
        return f"{UNREADABLE}:{exc.errno}"
    if data and len(data) < RECORD:
        return "torn:short"
    return parse_record(rel, slot, data)
