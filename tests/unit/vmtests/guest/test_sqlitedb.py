"""The SQLite workload and its oracle, on the host: commits ledgered, read back with the WAL
applied, and the drop-wal fault (a copy without the -wal file) caught by the ledger questions."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmtests.guest.campaign import ledger, sqlitedb, verify


@contextlib.contextmanager
def _written(
    root: Path, led_path: Path, commits: int, seed: int = 7, synchronous: str = "FULL"
) -> Iterator[list[ledger.Op]]:
    """Let the writer commit at least ``commits`` transactions and stop; inside the block the
    files are as a snapshot with nothing in flight sees them. Another connection stays open
    meanwhile, as the campaign's writer is open while the snapshot is taken: the last
    connection to close checkpoints the WAL into the database and deletes it."""
    led = ledger.Ledger(str(led_path))
    stop = threading.Event()
    writer = sqlitedb.SqliteWriter(str(root), led, seed, stop, pace=0.001, synchronous=synchronous)
    writer.start()
    deadline = time.monotonic() + 30
    while writer.commits < 1 and writer.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    holder = sqlitedb.connect(str(root / sqlitedb.DIR / sqlitedb.NAME))
    holder.execute("SELECT rows FROM total").fetchall()  # opens the files for real
    try:
        while writer.commits < commits and writer.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        writer.join(30)
        led.close()
        assert writer.error is None
        yield ledger.load(str(led_path))
    finally:
        holder.close()


def _snapshot(root: Path, dest: Path, *, wal: bool = True) -> Path:
    """What a snapshot of the tree holds: the database file and, unless dropped, its WAL."""
    (dest / sqlitedb.DIR).mkdir(parents=True)
    for name in (sqlitedb.NAME, sqlitedb.WAL):
        src = root / sqlitedb.DIR / name
        if src.exists() and (wal or name != sqlitedb.WAL):
            shutil.copyfile(src, dest / sqlitedb.DIR / name)
    return dest


def _judge(
    snap: Path, ops: list[ledger.Op], seed: int = 7
) -> tuple[sqlitedb.Reading, verify.Counts]:
    reading = sqlitedb.read(str(snap), seed)
    after = max(op.t1 for op in ops) + 1
    counts = verify.classify(
        verify.histories(ops), lambda obj: sqlitedb.observe(reading, obj), after, after + 1
    )
    return reading, counts


def test_every_acknowledged_commit_is_read_back_with_the_wal_applied(tmp_path: Path) -> None:
    with _written(tmp_path / "fs", tmp_path / "ledger.jsonl", commits=20) as ops:
        snap = _snapshot(tmp_path / "fs", tmp_path / "snap")
    assert ops and all(op.obj.startswith(sqlitedb.KIND) for op in ops)
    assert (snap / sqlitedb.DIR / sqlitedb.WAL).stat().st_size > 0  # commits live in the WAL
    reading, counts = _judge(snap, ops)
    assert reading.ok, reading.summary()
    assert counts.acked_checked == len(ops) and verify.ledger_ok(counts, "lvm")


def test_a_copy_without_the_wal_loses_acknowledged_commits(tmp_path: Path) -> None:
    with _written(tmp_path / "fs", tmp_path / "ledger.jsonl", commits=20) as ops:
        snap = _snapshot(tmp_path / "fs", tmp_path / "snap", wal=False)
    reading, counts = _judge(snap, ops)
    assert reading.opened and reading.integrity == "ok"  # the file alone is a sound database
    assert counts.acked_lost > 0 and not verify.ledger_ok(counts, "lvm")


def test_a_partial_or_foreign_transaction_is_torn() -> None:
    seed = 3
    whole = [(5, p, sqlitedb.payload(5, p, seed)) for p in range(sqlitedb.parts(5))]
    assert sqlitedb.states(whole, seed) == {"q:5": sqlitedb.DONE}
    assert sqlitedb.parts(5) > 1
    assert sqlitedb.states(whole[:1], seed)["q:5"].startswith("torn:partial")
    wrong = [(5, 0, b"x" * sqlitedb.PAYLOAD), *whole[1:]]
    assert sqlitedb.states(wrong, seed)["q:5"] == "torn:rows"
    assert sqlitedb.states([], seed) == {}  # no row: absent, which the ledger reads as ABSENT


def test_a_missing_or_unreadable_database_fails_the_reading(tmp_path: Path) -> None:
    assert not sqlitedb.read(str(tmp_path), 1).ok
    (tmp_path / sqlitedb.DIR).mkdir()
    (tmp_path / sqlitedb.DIR / sqlitedb.NAME).write_bytes(b"not a database" * 100)
    reading = sqlitedb.read(str(tmp_path), 1)
    assert not reading.ok and reading.error


def test_the_running_total_catches_rows_without_their_transaction(tmp_path: Path) -> None:
    with _written(tmp_path / "fs", tmp_path / "ledger.jsonl", commits=5) as ops:
        snap = _snapshot(tmp_path / "fs", tmp_path / "snap")
    db = sqlite3.connect(os.fspath(snap / sqlitedb.DIR / sqlitedb.NAME))
    db.execute("UPDATE total SET rows = rows + 1")
    db.commit()
    db.close()
    reading, _ = _judge(snap, ops)
    assert reading.opened and not reading.total_ok and not reading.ok


def test_synchronous_off_commits_are_read_back_when_the_files_are(tmp_path: Path) -> None:
    """The OFF variant's writer: the same ledger and oracle, only no fsync behind COMMIT (what
    that costs is a machine crash's question, which a snapshot's flush does not ask)."""
    with _written(tmp_path / "fs", tmp_path / "ledger.jsonl", commits=20, synchronous="OFF") as ops:
        snap = _snapshot(tmp_path / "fs", tmp_path / "snap")
    reading, counts = _judge(snap, ops)
    assert reading.ok and counts.acked_checked == len(ops) and verify.ledger_ok(counts, "lvm")
    with pytest.raises(ValueError, match="synchronous"):
        sqlitedb.SqliteWriter(
            str(tmp_path),
            ledger.Ledger(str(tmp_path / "l2")),
            1,
            threading.Event(),
            synchronous="NORMAL; DROP TABLE tx",
        )


@pytest.mark.parametrize("hook", [True, False])
def test_the_pre_hook_moves_the_wal_into_the_database_file(
    hook: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What --pre buys: after the checkpoint hook, the database file alone holds every commit
    acknowledged before it, so even a copy without the -wal file loses none; without the hook
    (the control) the same copy loses them, as the drop-wal control shows."""
    out = tmp_path / "hook.json"
    monkeypatch.setattr(sqlitedb, "HOOK_OUT", str(out))
    root = tmp_path / "fs"
    with _written(root, tmp_path / "ledger.jsonl", commits=20) as ops:
        if hook:
            subprocess.run(["sh", "-c", sqlitedb.checkpoint_hook(str(root))], check=True)
            result = sqlitedb.hook_result()
            assert result["busy"] == 0 and result["wal_before"] > 0 == result["wal_after"], result
            assert (root / sqlitedb.DIR / sqlitedb.WAL).stat().st_size == 0  # TRUNCATE
        snap = _snapshot(root, tmp_path / "snap", wal=False)
    reading, counts = _judge(snap, ops)
    assert reading.ok
    assert verify.ledger_ok(counts, "lvm") is hook
    if not hook:
        assert counts.acked_lost > 0 and "error" in sqlitedb.hook_result()
