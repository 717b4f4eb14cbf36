"""``vmtest run --matrix crash-states``: record each kind's lifecycle under dm-log-writes and
judge its crash states, one guest per kind, ``-n`` at a time; then the summary,
``REPORT/results.json``, ``REPORT/summary.md`` and one replay line per failing state.

``--replay REPORT/logs/KID --cut N [--seed S]`` judges again the one state a replay line names,
from the log that run kept (no ``--seed``: a flush or FUA point).

Opt-in, so the default run stays as measured: ``--methods lvm-thin`` (a thin origin in a thin
pool) and ``--operations extend`` (``snapshot watch --once`` grows the second snapshot's COW,
dm and lvm kinds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmtests.crashstates import report as cs_report
from vmtests.crashstates.run import (
    FILESYSTEMS,
    METHODS,
    OPT_IN_METHODS,
    OPT_IN_OPERATIONS,
    Runner,
    kinds,
)

DEFAULT_STATES = 1080  # issue 17: at least 1,000 over ext4/xfs/btrfs x dm/dm-direct/lvm


@dataclass(frozen=True)
class Options:
    states: int = DEFAULT_STATES
    seed: int = 17
    workers: int = 1
    report: Path = Path("report")
    accel: str = "auto"
    filesystems: tuple[str, ...] = FILESYSTEMS
    methods: tuple[str, ...] = METHODS
    replay: Path | None = None
    cut: int = 0
    json: bool = False
    operations: tuple[str, ...] = ()


def run_matrix(opts: Options) -> int:
    from vmtests.vm import accel as accel_mod
    from vmtests.vm import guest_image

    out = sys.stderr if opts.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    bad = (
        [m for m in opts.methods if m not in METHODS + OPT_IN_METHODS]
        + [f for f in opts.filesystems if f not in FILESYSTEMS]
        + [o for o in opts.operations if o not in OPT_IN_OPERATIONS]
    )
    if bad:
        print(
            f"vmtest run: unknown {', '.join(bad)} (filesystems {','.join(FILESYSTEMS)}; "
            f"methods {','.join(METHODS + OPT_IN_METHODS)}; operations "
            f"{','.join(OPT_IN_OPERATIONS)})",
            file=sys.stderr,
        )
        return 2
    if opts.replay is not None and not (opts.replay / "log.raw").is_file():
        print(f"vmtest run: {opts.replay} holds no kept log (log.raw)", file=sys.stderr)
        return 2
    img = guest_image.prepare(None)
    runner = Runner(
        img, accel_mod.choose(opts.accel, img), opts.report, say=say, operations=opts.operations
    )
    opts.report.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    if opts.replay is not None:
        results = runner.replay(opts.replay, opts.cut, opts.seed)
    else:
        todo = kinds(opts.filesystems, opts.methods)
        if not todo:
            print("vmtest run: no kind (group kinds are ext4 and xfs only)", file=sys.stderr)
            return 2
        budget = math.ceil(opts.states / len(todo))

        def one(k: Any) -> None:
            got = runner.group([k], budget, opts.seed)
            with lock:
                results.extend(got)

        with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
            for f in [pool.submit(one, k) for k in todo]:
                f.result()
    results.sort(key=lambda r: str(r["kid"]))
    figures = cs_report.summary(results, time.monotonic() - t0, str(opts.report))
    real, ctl = cs_report.flatten(results)
    doc = {
        "matrix": "crash-states",
        "seed": opts.seed,
        "summary": figures,
        "states": real,
        "control_states": ctl,
        "kinds": [{k: v for k, v in r.items() if k != "states"} for r in results],
    }
    (opts.report / "results.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (opts.report / "summary.md").write_text(cs_report.markdown(figures, " ".join(sys.argv)))
    if opts.json:
        print(json.dumps(figures, indent=2, sort_keys=True))
    else:
        print("\n" + cs_report.table(figures))
    for line in figures["errors"] + figures["failures"]:
        print(f"FAILED {line}", file=sys.stderr)
    for line in figures["replay"]:
        print(f"replay: {line}", file=sys.stderr)
    print(f"results: {opts.report / 'results.json'}", file=sys.stderr)
    if opts.replay is not None:  # one state: its own verdict, controls are not in it
        return 0 if figures["states"] and figures["states_ok"] == figures["states"] else 1
    return 0 if cs_report.passed(figures) else 1


def cmd_run(args: argparse.Namespace) -> int:
    """``vmtest run --matrix crash-states``: the options of ``vmtest run`` as this runner
    takes them."""
    return run_matrix(
        Options(
            states=args.states if args.states is not None else DEFAULT_STATES,
            seed=(0 if args.replay else 17) if args.seed is None else args.seed,  # 0: a point
            workers=1 if args.workers == "auto" else int(args.workers),
            report=args.report,
            accel=args.accel,
            filesystems=tuple(x for x in (args.fs or "").split(",") if x) or FILESYSTEMS,
            methods=tuple(m for m in (args.methods or "").split(",") if m) or METHODS,
            replay=args.replay,
            cut=args.cut or 0,
            json=bool(args.json),
            operations=tuple(o for o in (getattr(args, "operations", None) or "").split(",") if o),
        )
    )


__all__ = ["DEFAULT_STATES", "Options", "cmd_run", "run_matrix"]
