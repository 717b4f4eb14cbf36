"""The database workload: SQLite in WAL mode, ``synchronous=FULL``, one ledger op per commit.

Why a database: the question's last answer says a freeze is enough "outside databases", but that
for a database "you still won't have a transaction-complete backup". SQLite in WAL mode is the
database a desktop runs (browsers, mail clients, package managers): a commit appends its pages
to ``NAME-wal`` and, with ``synchronous=FULL``, fsyncs the WAL before ``COMMIT`` returns, so the
return of ``COMMIT`` is the acknowledgement, ledgered like any fsync'd write. Pages reach the
database file itself only at a checkpoint (every 1000 WAL pages by default), so a copy without
the ``-wal`` file misses every commit since the last one: the ``drop-wal`` control.

Each transaction ``n`` inserts ``parts(n)`` rows ``(n, part, payload)`` and adds as many to one
running total, in one ``BEGIN IMMEDIATE .. COMMIT``. On the snapshot a transaction is one ledger
object ``q:n`` with one operation (absent -> ``done``), so the campaign's verification
(verify.py) asks exactly the oracle's questions: every commit acknowledged before the snapshot
began is there, none begun after it ended is, and a transaction is all there or not at all
(some of its rows but not all, or a row with the wrong payload, is ``torn``). The total must
equal the number of rows: commits are atomic with respect to each other too.

The snapshot is read as a restore would: the database and its WAL are copied off the read-only
mount to tmpfs, without the ``-shm`` index (shared memory, rebuilt from the WAL on open), and
opened there, so SQLite applies the WAL, then ``PRAGMA integrity_check`` must say ``ok``.

Two variants (claim 11): ``synchronous=OFF`` (``SqliteWriter(synchronous="OFF")``), where
``COMMIT`` returns once its pages are written to the WAL, before any fsync, so only a crash of
the machine can lose it: a snapshot's freeze or suspend flushes the page cache first, and the
oracle is the same. And the FULL database snapshotted by ``snapkit snapshot create --pre HOOK``
(``checkpoint_hook``), which moves the WAL into the database file before the freeze or suspend
(the oracle is the same; the snapshot's WAL should then hold only the commits since the hook).

Standard library only (``sqlite3``): this runs on the guest's bare python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field

from vmtests.guest.campaign.ledger import ABSENT, PACE_S, Ledger
from vmtests.guest.proc import run

DIR = "db"
NAME = "app.sqlite"
WAL = NAME + "-wal"
KIND = "q:"  # ledger objects: q:N, transaction N
DONE = "done"
PAYLOAD = 600  # bytes a row carries: a few rows fill a page, so commits span pages
# Commits acknowledged before the workload counts as started (``SqliteWriter.warm``): under TCG
# creating the database takes seconds, and a snapshot taken before the first commit returned
# would check no acknowledged commit at all (measured: 0 of 166 on ext4-lvm-sqlite).
WARM_COMMITS = 10
SYNC_MODES = ("FULL", "OFF")
HOOK_OUT = "/tmp/pre-checkpoint.json"  # what the --pre hook's checkpoint returned


def parts(n: int) -> int:
    """How many rows transaction ``n`` inserts: 1 to 4, known without the ledger."""
    return 1 + n % 4


def payload(n: int, part: int, seed: int) -> bytes:
    """A row's bytes, derived from (n, part, seed): a wrong or torn row cannot match."""
    head = hashlib.sha256(f"{seed}:{n}:{part}".encode()).digest()
    return (head * (PAYLOAD // len(head) + 1))[:PAYLOAD]


def connect(path: str) -> sqlite3.Connection:
    """A connection that commits only when told (isolation_level None: explicit BEGIN)."""
    return sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)


def create(root: str) -> str:
    """The database, in WAL mode, with its schema checkpointed into the main file: the
    ``drop-wal`` control then loses commits, not the tables (which would be a different fault)."""
    folder = os.path.join(root, DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, NAME)
    db = connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE tx (n INTEGER, part INTEGER, payload BLOB, PRIMARY KEY (n, part))")
        db.execute("CREATE TABLE total (id INTEGER PRIMARY KEY, rows INTEGER)")
        db.execute("INSERT INTO total VALUES (1, 0)")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


class SqliteWriter(threading.Thread):
    """Commits transactions one after another and ledgers each ``COMMIT`` that returned."""

    def __init__(
        self,
        root: str,
        ledger: Ledger,
        seed: int,
        stop: threading.Event,
        *,
        pace: float = PACE_S,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous not in SYNC_MODES:
            raise ValueError(f"synchronous must be one of {SYNC_MODES}, not {synchronous!r}")
        super().__init__(name="sqlite", daemon=True)
        self.root, self.ledger, self.seed, self.stop, self.pace = root, ledger, seed, stop, pace
        self.synchronous = synchronous
        self.rng = random.Random(seed * 104729)
        self.error: BaseException | None = None
        self.commits = 0
        self.warm = threading.Event()  # set after WARM_COMMITS commits (or on an error)

    def run(self) -> None:
        try:
            db = connect(create(self.root))
            try:
                # per connection, not stored in the file
                db.execute(f"PRAGMA synchronous={self.synchronous}")
                n = 0
                while not self.stop.wait(self.pace * self.rng.uniform(0.5, 1.5)):
                    n += 1
                    self.commit(db, n)
            finally:
                db.close()
        except BaseException as exc:  # reported by the runner, never swallowed
            self.error = exc
        finally:
            self.warm.set()

    def commit(self, db: sqlite3.Connection, n: int) -> None:
        k = parts(n)
        rows = [(n, p, payload(n, p, self.seed)) for p in range(k)]
        t0 = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO tx VALUES (?, ?, ?)", rows)
            db.execute("UPDATE total SET rows = rows + ? WHERE id = 1", (k,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.ledger.record(f"{KIND}{n}", DONE, t0, time.monotonic())
        self.commits += 1
        if self.commits >= WARM_COMMITS:
            self.warm.set()


@dataclass
class Reading:
    """What the snapshot's database shows: per transaction, its state; and the checks."""

    opened: bool = False
    integrity: str = ""  # PRAGMA integrity_check's first line: "ok" when sound
    wal_bytes: int = -1  # the -wal file's size on the snapshot (-1: there is none)
    total_ok: bool = False  # the running total equals the number of rows
    states: dict[str, str] = field(default_factory=dict)  # "q:N" -> DONE | torn description
    error: str = ""

    @property
    def ok(self) -> bool:
        """The database opens and is sound; whether it holds the right commits is the ledger's
        question (verify.classify over the ``q:`` objects)."""
        return self.opened and self.integrity == "ok" and self.total_ok

    def summary(self) -> dict[str, object]:
        return {
            "opened": self.opened,
            "integrity": self.integrity,
            "wal_bytes": self.wal_bytes,
            "total_ok": self.total_ok,
            "transactions": sum(1 for s in self.states.values() if s == DONE),
            "partial": sum(1 for s in self.states.values() if s != DONE),
            "error": self.error,
        }


def read(root: str, seed: int) -> Reading:
    """Open the snapshot's database as a restore would (see the module docstring)."""
    out = Reading()
    folder = os.path.join(root, DIR)
    if not os.path.exists(os.path.join(folder, NAME)):
        out.error = f"no {DIR}/{NAME} on the snapshot"
        return out
    with tempfile.TemporaryDirectory(prefix="sqlite-restore-", dir="/tmp") as tmp:
        for name in (NAME, WAL):
            src = os.path.join(folder, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(tmp, name))
                if name == WAL:
                    out.wal_bytes = os.path.getsize(src)
        try:
            db = connect(os.path.join(tmp, NAME))
            try:
                out.integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
                out.opened = True
                rows = db.execute("SELECT n, part, payload FROM tx").fetchall()
                (total,) = db.execute("SELECT rows FROM total WHERE id = 1").fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            return out
    out.total_ok = total == len(rows)
    out.states = states(rows, seed)
    return out


def states(rows: list[tuple[int, int, bytes]], seed: int) -> dict[str, str]:
    """Each transaction's state from its rows: DONE when every row is there and intact, else a
    ``torn:`` description (a transaction with no row is absent, so it is not listed)."""
    by_n: dict[int, dict[int, bytes]] = {}
    for n, part, data in rows:
        by_n.setdefault(int(n), {})[int(part)] = bytes(data)
    out = {}
    for n, got in by_n.items():
        want = {p: payload(n, p, seed) for p in range(parts(n))}
        if got == want:
            out[f"{KIND}{n}"] = DONE
        elif any(want.get(p) != data for p, data in got.items()):
            out[f"{KIND}{n}"] = "torn:rows"  # a row it never wrote, or wrong bytes
        else:
            out[f"{KIND}{n}"] = f"torn:partial {len(got)}/{len(want)} rows"
    return out


def observe(reading: Reading, obj: str) -> str:
    """One ``q:N`` object as the snapshot shows it."""
    return reading.states.get(obj, ABSENT)


def checkpoint_hook(root: str) -> str:
    """The ``--pre`` command that checkpoints the database's WAL into its file (``TRUNCATE``:
    wait for the writer between two commits, copy every WAL page back, empty the WAL), as a
    user's pre-snapshot hook would. It writes the WAL's size before and after, and whether the
    checkpoint was blocked (``busy``), to HOOK_OUT: a TRUNCATE that succeeded reports 0 pages
    for both of its counts (the WAL is reset), so the sizes are what show its work. One
    ``python3 -c`` line, paths quoted by ``repr``."""
    path = os.path.join(root, DIR, NAME)
    wal = path + "-wal"
    code = (
        "import json, os, sqlite3; "
        f"size = lambda: os.path.getsize({wal!r}) if os.path.exists({wal!r}) else -1; "
        "before = size(); "
        f"db = sqlite3.connect({path!r}, timeout=60, isolation_level=None); "
        "row = db.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone(); "
        "out = dict(busy=row[0], wal_before=before, wal_after=size()); "
        f"json.dump(out, open({HOOK_OUT!r}, 'w'))"
    )
    return f'python3 -c "{code}"'


def hook_result() -> dict[str, object]:
    """What the hook's checkpoint returned, or {"error": ...} when it never ran."""
    try:
        with open(HOOK_OUT) as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return value if isinstance(value, dict) else {"error": f"not an object: {value!r}"}


def drop_wal(device: str, fs: str, mountpoint: str) -> str:
    """The ``drop-wal`` control's fault: delete the -wal (and -shm) file from a copy of the
    filesystem, as a backup that copies only the database file makes it."""
    os.makedirs(mountpoint, exist_ok=True)
    run(["mount", "-t", fs, device, mountpoint])
    try:
        wal = os.path.join(mountpoint, DIR, WAL)
        size = os.path.getsize(wal) if os.path.exists(wal) else -1
        for name in (WAL, NAME + "-shm"):
            path = os.path.join(mountpoint, DIR, name)
            if os.path.exists(path):
                os.unlink(path)
    finally:
        run(["umount", mountpoint])
    return f"dropped {DIR}/{WAL} ({size} bytes)" if size >= 0 else f"no {DIR}/{WAL} to drop"
