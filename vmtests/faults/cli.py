"""``vmtest run --matrix faults``: bases, chains of power cuts and the bad inputs on a pool of
VMs, one line per cut as it is judged, then the summary table and ``REPORT/results.json``.

Jobs go to the pool in this order: the base builds (one per filesystem), the bad-input boot,
then the chains. A chain waits for the bases before its first boot; as the builds were queued
first, they are already running by then, so the wait costs at most one build.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmtests.faults import matrix as faults
from vmtests.faults import report as faults_report
from vmtests.faults.run import Runner

FULL_RUN_CUTS = 78  # issue 6: >= 60 in create and merge, and the rest in discard and extend


@dataclass(frozen=True)
class Options:
    cuts: int | None = None  # None: every point of the matrix
    ids: tuple[str, ...] = ()  # exactly these points (a replay)
    seed: int = 6
    workers: int = 2
    report: Path = Path("report")
    accel: str = "auto"
    bad_inputs: int | None = None  # None: every case; 0: none; N: a seeded sample
    methods: tuple[str, ...] = faults.METHODS
    phases: tuple[str, ...] = faults.PHASES
    json: bool = False


def run_matrix(opts: Options) -> int:
    from vmtests.vm import accel as accel_mod
    from vmtests.vm import guest_image

    try:
        chosen = faults.choose(
            opts.cuts, opts.seed, ids=opts.ids, methods=opts.methods, phases=opts.phases
        )
    except ValueError as exc:
        print(f"vmtest run: {exc}", file=sys.stderr)
        return 2
    img = guest_image.prepare(None)  # $VMTEST_KERNEL, set from `vmtest run --kernel`
    # ZFS's module for this kernel, built on the first run that needs it: every boot then has
    # it (a chain mixes kinds in a boot, and the bad inputs include ZFS's)
    img = guest_image.with_zfs(img)
    out = sys.stderr if opts.json else sys.stdout  # --json: stdout holds the JSON alone

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    runner = Runner(img, accel_mod.choose(opts.accel, img), opts.report, opts.seed, say=say)
    opts.report.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def done(result: dict[str, Any]) -> None:
        if not result.get("ok") and "replay" not in result:
            result["replay"] = (
                f"vmtest run --matrix faults --seed {opts.seed} --scenario "
                f"{result['id']} -n 1 --report report-{result['id']}"
            )
        with lock:
            results.append(result)
            n = len(results)
        say(_line(n, len(chosen), result))

    controlled = {next(c for c in chosen if c.fs == fs) for fs in {c.fs for c in chosen}}
    with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
        builds = [
            pool.submit(runner.build, sorted({c.kid for c in chosen if c.fs == fs}), chosen)
            for fs in faults.ALL_FILESYSTEMS
            if any(c.fs == fs for c in chosen)
        ]
        bad: Future[dict[str, Any]] | None = None
        if opts.bad_inputs != 0:
            bad = pool.submit(runner.hostile, opts.bad_inputs)

        def chain(cuts: list[faults.Cut]) -> None:
            for b in builds:
                b.result()
            runner.chain([(c, c in controlled) for c in cuts], done)

        # two chains per worker balance the pool; each chain ends with a judge-only boot
        count = max(opts.workers, min(2 * opts.workers, len(chosen) // 8))
        ran = [pool.submit(chain, ch) for ch in faults.chains(chosen, count)]
        bases = [b.result() for b in builds]
        for r in ran:
            r.result()
        bad_doc = bad.result() if bad is not None else None
    results.sort(key=lambda r: str(r["id"]))
    figures = faults_report.summary(results, bad_doc, time.monotonic() - t0)
    doc = {
        "matrix": "faults",
        "seed": opts.seed,
        "summary": figures,
        "bases": bases,
        "bad_inputs": bad_doc,
        "cuts": results,
        "boots": runner.boots,
    }
    (opts.report / "results.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (opts.report / "summary.md").write_text(faults_report.markdown(figures, " ".join(sys.argv)))
    if opts.json:
        print(json.dumps(figures, indent=2, sort_keys=True))
    else:
        print("\n" + faults_report.table(figures))
    for line in figures["failures"]:
        print(f"FAILED {line}", file=sys.stderr)
    for line in figures["replay"]:
        print(f"replay: {line}", file=sys.stderr)
    print(f"results: {opts.report / 'results.json'}", file=sys.stderr)
    return 0 if faults_report.passed(figures) else 1


def cmd_run(args: argparse.Namespace) -> int:
    """``vmtest run --matrix faults``: the options of ``vmtest run`` as this runner takes them.
    ``--phases`` picks an opt-in phase (merge-sibling, issue 17): then every point of the
    phases runs unless ``--cuts`` says otherwise, and the methods default to the ones every
    named phase takes; without it, the run is issue 6's, exactly."""
    phases = _listed(args.phases) or faults.PHASES
    default_methods = faults.SIBLING_METHODS if faults.SIBLING_PHASE in phases else faults.METHODS
    cuts = args.cuts
    if cuts is None and not args.scenario and not args.phases:
        cuts = FULL_RUN_CUTS
    return run_matrix(
        Options(
            cuts=cuts,
            ids=tuple(args.scenario),
            seed=6 if args.seed is None else args.seed,
            workers=2 if args.workers == "auto" else int(args.workers),
            report=args.report,
            accel=args.accel,
            bad_inputs=args.bad_inputs,
            methods=_listed(args.methods) or default_methods,
            phases=phases,
            json=args.json,
        )
    )


def _listed(text: str | None) -> tuple[str, ...]:
    """A comma-separated option's values ("": none given)."""
    return tuple(v for v in (text or "").split(",") if v)


def _line(n: int, total: int, r: dict[str, Any]) -> str:
    mark = "ok  " if r.get("ok") else "FAIL"
    what = (
        f"snapshot {r.get('snapshot', '?')}, acked {r.get('acked_checked', 0)} checked "
        f"{r.get('acked_lost', 0)} lost"
    )
    if not r.get("ok"):
        what += " -- " + "; ".join(r.get("problems", []))[:300]
    return f"[{n:3}/{total}] {mark} {r['id']:<34} {r.get('seconds', 0):5.1f} s  {what}"


__all__ = ["FULL_RUN_CUTS", "Options", "cmd_run", "run_matrix"]
