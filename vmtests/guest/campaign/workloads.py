"""The workloads a campaign scenario runs on a filesystem, and the oracle's reading of one
snapshot against their ledger: shared by the single snapshot's runner (scenario.py) and the
snapshot group's (group.py), which runs one per member. Standard library only.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from vmtests.guest import check
from vmtests.guest.campaign import churn, fiojobs, ledger, mmapwriter, sqlitedb, verify
from vmtests.guest.refusal import Rule

SETTLE_S = 120.0  # how long a workload may take to reach its steady state before the snapshot


# Every workload has a lazy writer (write() without fsync: see ledger.Writer) next to its own.
COMPONENTS = {
    "writer": ("writer", "writer", "lazy"),
    "churn": ("writer", "churn", "lazy"),
    "mmap": ("writer", "mmap", "lazy"),
    "fio": ("writer", "fio", "lazy"),
    "mixed": ("writer", "churn", "mmap", "fio", "sqlite", "lazy"),
    "sqlite": ("sqlite", "lazy"),
    "sqlite-off": ("sqlite-off", "lazy"),  # synchronous=OFF
    "sqlite-pre": ("sqlite", "lazy"),  # the snapshot's --pre hook checkpoints it (targets.py)
    # claim 6's probe: a database held open and committing, as a desktop's browser or mail
    # client holds one, beside the writers (only under remount-ro: scenarios.PROBES)
    "desktop": ("writer", "sqlite", "lazy"),
}
DATABASES = {"sqlite": "FULL", "sqlite-off": "OFF"}  # component -> its synchronous mode


class Workload:
    """The threads and fio processes of one workload, started and stopped together. Each
    obeys the one rule for writes the method refuses (refusal.py)."""

    def __init__(
        self,
        names: tuple[str, ...],
        root: str,
        led: ledger.Ledger,
        seed: int,
        pace: float,
        rule: Rule,
    ) -> None:
        self.stop = threading.Event()
        self.threads: list[Any] = []
        self.root, self.ledger, self.seed, self.rule = root, led, seed, rule
        for i, name in enumerate(names):
            if name in ("writer", "lazy"):
                sync = name == "writer"
                self.threads.append(
                    ledger.Writer(root, led, i, seed, self.stop, rule=rule, sync=sync, pace=pace)
                )
            elif name == "churn":
                self.threads.append(churn.Churn(root, led, seed, self.stop, rule=rule, pace=pace))
            elif name == "mmap":
                self.threads.append(mmapwriter.MmapWriter(root, led, seed, self.stop, rule=rule))
            elif name in DATABASES:  # never under remount-ro (scenarios.HELD_OPEN): no rule
                self.threads.append(
                    sqlitedb.SqliteWriter(
                        root, led, seed, self.stop, pace=pace, synchronous=DATABASES[name]
                    )
                )
        self.fio = "fio" in names
        self.fio_pre: Any = None
        self.fio_load: Any = None

    def start(self) -> None:
        self.t_fio = time.monotonic()
        if self.fio:
            self.fio_pre = fiojobs.start_pre(self.root, self.seed)
            self.fio_load = fiojobs.start_load(self.root, self.rule)
        for t in self.threads:
            t.start()

    def settle(self) -> str:
        """Before the snapshot: the fio pre-jobs must be written and acknowledged, and the
        database must have acknowledged its first commits (sqlitedb.WARM_COMMITS)."""
        errors = []
        for t in self.threads:
            if isinstance(t, sqlitedb.SqliteWriter) and not t.warm.wait(SETTLE_S):
                errors.append(f"sqlite: no {sqlitedb.WARM_COMMITS} commits in {SETTLE_S:g} s")
        if self.fio:
            errors.append(fiojobs.finish_pre(self.fio_pre, self.ledger, self.t_fio, self.rule))
        return "; ".join(e for e in errors if e)

    def finish(self) -> str:
        self.stop.set()
        errors = []
        if self.fio_load is not None:
            errors.append(fiojobs.finish_load(self.fio_load, self.rule))
        for t in self.threads:
            t.join(60)
            if t.error is not None:
                errors.append(f"{t.name}: {type(t.error).__name__}: {t.error}")
        return "; ".join(e for e in errors if e)


def observe(  # type: ignore[no-untyped-def]
    root: str, fio_states: dict[str, str], seed: int, db: sqlitedb.Reading | None = None
):
    def look(obj: str) -> str:
        kind = obj[:2]
        if kind == "w:":
            return ledger.observe_writer(root, obj)
        if kind == "m:":
            return mmapwriter.observe(root, obj)
        if kind == "c:":
            return churn.describe(root, int(obj[2:]), seed)
        if kind == "d:":
            return churn.describe_dir(root, int(obj[2:]))
        if kind == "f:":
            return fio_states.get(obj[2:], ledger.ABSENT)
        if kind == sqlitedb.KIND:
            return sqlitedb.observe(db, obj) if db is not None else "unknown"
        return "unknown"

    return look


def longest_stall(ops: list[ledger.Op], begin: float, end: float) -> float:
    """The longest time no operation was acknowledged, among gaps touching the window (ms)."""
    acks = sorted(op.t1 for op in ops if op.acked)
    gaps = [b - a for a, b in itertools.pairwise(acks) if b >= begin and a <= end]
    return round(max(gaps, default=0.0) * 1000, 1)


def verify_snapshot(
    spec: dict[str, Any],
    root: str,
    ops: list[ledger.Op],
    begin: float,
    end: float,
    seed: int,
    res: dict[str, Any],
) -> None:
    fio_states: dict[str, str] = {}
    parts = COMPONENTS[spec["workload"]]
    if "fio" in parts:
        fio_states, res["fio_output"] = fiojobs.verify(root, seed)
    db = sqlitedb.read(root, seed) if set(parts) & set(DATABASES) else None
    look = observe(root, fio_states, seed, db)
    hists = verify.histories(ops)
    counts = verify.classify(hists, look, begin, end)
    res["counts"] = counts.__dict__
    res["checks"]["ledger"] = verify.ledger_ok(counts, spec["method"])
    if db is not None:
        # The database's own verdict: it opens, is sound, and its transactions alone pass the
        # ledger's questions (all acknowledged commits, none from the future, none partial).
        mine = {obj: h for obj, h in hists.items() if obj.startswith(sqlitedb.KIND)}
        txns = verify.classify(mine, look, begin, end)
        res["sqlite"] = {**db.summary(), "counts": txns.__dict__}
        if spec["workload"] == "sqlite-pre":
            res["sqlite"]["pre_hook"] = sqlitedb.hook_result()
        sound = db.ok and txns.acked_checked > 0
        res["checks"]["sqlite"] = sound and verify.ledger_ok(txns, spec["method"])
    res["tree_snapshot"] = check.tree_hash(root)


__all__ = ["COMPONENTS", "SETTLE_S", "Workload", "longest_stall", "observe", "verify_snapshot"]
