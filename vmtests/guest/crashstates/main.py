"""Crash states, guest side (issue 17): record each kind, then judge its states, in one boot.

    guest.command("crashstates.main", '{"kinds": [...], "states": N, "seed": S}')
    guest.command("crashstates.main", '{"kinds": [one], "replay": {"cut": C, "seed": S,
                                         "method": M, "control": ""}, "facts": {...}}')

The first records each kind's lifecycle (``record.py``) on its two disks (``<kid>-d`` data,
``<kid>-l`` log, both zeroed; the replay disk is a file on tmpfs, ``judge.Replay``), plans
``N`` states of its log (``plan.py``) and the controls' states, and judges them one after the
other (``judge.py``). The second judges one state of a log recorded before (the replay line of
a failing state): the log disk is attached again, nothing is recorded. Prints one JSON object;
progress goes to stderr.
Standard library and snapkit only.
"""

from __future__ import annotations

import sys

sys.path.insert(0, "/src")

import functools
import json
import os
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

from vmtests.guest.crashstates import logwrites, plan
from vmtests.guest.crashstates.judge import CTL_TRIES, Check, Replay, judge_state
from vmtests.guest.crashstates.layout import Kind
from vmtests.guest.crashstates.record import record
from vmtests.guest.proc import log

FUA_DROP_STATES = 2
Parts = tuple[
    Kind,
    Callable[[Kind], dict[str, Any]],
    Callable[[tuple[logwrites.Entry, ...], dict[str, Any]], list[plan.CrashState]],
    Check | None,
]


def kind_seed(seed: int, kid: str) -> int:
    return seed * 1_000_003 + zlib.crc32(kid.encode())


def control_states(
    entries: tuple[logwrites.Entry, ...], facts: dict[str, Any]
) -> list[plan.CrashState]:
    """The FUA-drop control: flush points after the create returned and before the merge
    began (the snapshot must be whole there), replayed without the COW's metadata writes."""
    if not facts.get("cow_meta"):
        return []
    lo, hi = plan.window(entries, "create.done", "merge-start.start")
    points = plan.durable_points(entries, lo, hi)
    if not points:
        return []
    pick = [points[-1], points[len(points) // 2]][:FUA_DROP_STATES]
    return [plan.CrashState(p.cut, p.upto, p.method, control="cow-fua-drop") for p in pick]


def judge_kind(
    k: Kind,
    facts: dict[str, Any],
    states: list[plan.CrashState],
    entries_log: logwrites.Log,
    check: Check | None = None,
) -> list[dict[str, Any]]:
    marks = plan.marks_of(entries_log.entries)
    create_at = next(i for i, m in marks if m == "create.start")

    def key(st: plan.CrashState) -> tuple[int, int]:
        return (create_at if st.control == "cow-fua-drop" else st.upto, st.cut)

    replay = Replay(k, entries_log)
    budget = [CTL_TRIES]
    results = []
    try:
        for n, st in enumerate(sorted(states, key=key), 1):
            r = judge_state(k, replay, st, facts, marks, budget, check)
            r.update(kid=k.kid, fs=k.fs, method=k.method)
            results.append(r)
            mark = "ok  " if r["ok"] else ("CTRL" if st.control else "FAIL")
            print(
                f"state {k.kid} {n}/{len(states)} {mark} {st.method} cut {st.cut} "
                f"{r['operation']} {r['seconds']} s {'; '.join(r['problems'])[:200]}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        replay.close()
    return results


def parts(spec: dict[str, Any], operations: tuple[str, ...] = ()) -> Parts:
    """The kind, its recorder, its controls' states and its oracle (None: ``judge._check``):
    a group kind's (``group-dm``, ...) are :mod:`vmtests.guest.crashstates.group`'s; the
    opt-in ``operations`` (extend) are the single-origin recorder's only."""
    if spec["method"].startswith("group-"):
        from vmtests.guest.crashstates import group  # it builds on this module

        return group.GroupKind.of(spec), group.record, group.control_states, group.check
    return Kind.of(spec), functools.partial(record, operations=operations), control_states, None


def one_kind(
    spec: dict[str, Any], budget: int, seed: int, operations: tuple[str, ...] = ()
) -> dict[str, Any]:
    k, record_kind, controls, check = parts(spec, operations)
    t0 = time.monotonic()
    facts = record_kind(k)
    with open(k.log_disk, "rb") as f:
        lg = logwrites.read(f.fileno())
    states = plan.choose(lg.entries, budget, kind_seed(seed, k.kid))
    states += controls(lg.entries, facts)
    t1 = time.monotonic()
    results = judge_kind(k, facts, states, lg, check)
    return {
        "kid": k.kid,
        "fs": k.fs,
        "method": k.method,
        "facts": facts,
        "entries": len(lg.entries),
        "durable_points": len(
            plan.durable_points(lg.entries, *plan.window(lg.entries, "base", "end"))
        ),
        "epochs": len(plan.epochs(lg.entries, *plan.window(lg.entries, "base", "end"))),
        "states": results,
        "record_s": round(t1 - t0, 1),
        "judge_s": round(time.monotonic() - t1, 1),
    }


def replay_one(spec: dict[str, Any], want: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """Judge the one state a replay line names, on the log disk recorded before."""
    k, _, _, check = parts(spec)
    for d in (k.keep, k.mnt, k.snap_mnt):
        os.makedirs(d, exist_ok=True)
    with open(k.log_disk, "rb") as f:
        lg = logwrites.read(f.fileno())
    cut, seed = int(want["cut"]), int(want.get("seed") or 0)
    if seed:
        opened, writes = next(
            (o, w)
            for o, w in plan.epochs(lg.entries, 0, lg.entries[-1].index)
            if o < cut <= w[-1].index
        )
        st = plan.reordered(opened, writes, seed)
        if st.cut != cut:
            raise ValueError(f"seed {seed} draws cut {st.cut} in that epoch, not {cut}")
    else:
        method = "flush" if lg.entries[cut - 1].flags & logwrites.FLUSH else "fua"
        st = plan.CrashState(cut, cut, method)
    results = judge_kind(k, facts, [st], lg, check)
    return {"kid": k.kid, "fs": k.fs, "method": k.method, "facts": facts, "states": results}


def main(argv: list[str]) -> int:
    # mkfs.xfs refuses filesystems under 300 MiB unless it is told it runs under a test suite
    os.environ.update(TEST_DIR="/tmp", TEST_DEV="/dev/null", QA_CHECK_FS="1")
    spec = json.loads(argv[0])
    kinds: list[dict[str, Any]] = []
    for ks in spec["kinds"]:
        try:
            if "replay" in spec:
                kinds.append(replay_one(ks, spec["replay"], spec["facts"]))
            else:
                ops = tuple(spec.get("operations", ()))  # opt-in ones: extend
                kinds.append(one_kind(ks, int(spec["states"]), int(spec["seed"]), ops))
        except BaseException as exc:  # reported to the host: one kind never ends the boot
            log(traceback.format_exc())
            kinds.append({**ks, "error": f"{type(exc).__name__}: {exc}"[-1500:], "states": []})
    print(json.dumps({"kinds": kinds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
