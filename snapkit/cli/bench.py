"""``snapkit bench``: measurements that are part of the contract, one subcommand each.

Each benchmark registers itself in ``_BENCHES`` with a function that adds its parser; adding
one is a new entry there and a module that does the work, so this file stays a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from snapkit.cli.output import print_json

_RAW = argparse.RawDescriptionHelpFormatter


def _register_cow(benches: Any) -> None:
    p = benches.add_parser(
        "cow",
        help="time the offline COW tools against a plain copy",
        description="Generate a 512 MiB origin and a COW with 100,000 exceptions (8-sector "
        "chunks) in a temporary folder, then time inspect, export --no-fsync against "
        "'cp --sparse=never' of the origin (both into the page cache, alternating for --rounds "
        "rounds, medians), and merge against an fsync'd copy, all in the same run. Also "
        "times inspect of a sparse COW with 1,000,000 exceptions. Goals: export <= 1.5x cp, "
        "merge <= 2x copy, inspect of 1M exceptions <= 0.5 s.",
        epilog="examples:\n  snapkit bench cow\n  snapkit bench cow --json --dir /var/tmp",
        formatter_class=_RAW,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dir", help="where to put the temporary files (default: $TMPDIR)")
    p.add_argument("--origin-mib", type=int, default=512, help="origin size (default 512)")
    p.add_argument("--exceptions", type=int, default=100_000, help="default 100000")
    p.add_argument("--inspect-exceptions", type=int, default=1_000_000, help="default 1000000")
    p.add_argument("--rounds", type=int, default=5, help="cp/export rounds (default 5)")
    p.set_defaults(handler=_bench_cow)


def _bench_cow(args: argparse.Namespace) -> int:
    from snapkit.bench import cow as bench

    config = bench.BenchConfig(
        origin_bytes=args.origin_mib * bench.MIB,
        exceptions=args.exceptions,
        inspect_exceptions=args.inspect_exceptions,
        folder=args.dir,
        rounds=args.rounds,
    )
    if config.exceptions * config.chunk_sectors * 512 > config.origin_bytes:
        from snapkit.errors import UsageError

        raise UsageError("more exceptions than the origin has chunks")
    result = bench.run(config, log=lambda msg: print(msg, file=sys.stderr))
    if args.json:
        print_json(bench.as_dict(result))
        return 0
    print(f"cp (baseline)  {result.cp_seconds:8.3f} s   1.00x  (cp --sparse=never, median)")
    print(f"copy+fsync     {result.copy_seconds:8.3f} s   1.00x  (baseline for merge)")
    for t in result.timings:
        verdict = "" if t.ok is None else ("  goal met" if t.ok else "  GOAL MISSED")
        goal = f"  ({t.goal})" if t.goal else ""
        ratio = result.ratio(t.seconds, t.baseline)
        print(f"{t.name:<14} {t.seconds:8.3f} s {ratio:6.2f}x{goal}{verdict}")
    export = next(t for t in result.timings if t.name == "export")
    inspect_1m = next(t for t in result.timings if t.name == "inspect-1M")
    print(
        f"export / cp: {result.ratio(export.seconds, 'cp'):.2f}x;  "
        f"inspect of {args.inspect_exceptions} exceptions: {inspect_1m.seconds:.3f} s;  "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    return 0


def _register_freeze_window(benches: Any) -> None:
    from snapkit.bench import freeze_window

    p = benches.add_parser(
        "freeze-window",
        help="how long snapshot create stalls a writer, per method",
        description=freeze_window.__doc__,
        formatter_class=_RAW,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rounds", type=int, default=3, help="rounds per method (default 3)")
    p.set_defaults(handler=_bench_freeze_window)


def _bench_freeze_window(args: argparse.Namespace) -> int:
    from snapkit.bench import freeze_window

    results = freeze_window.run(
        args.rounds, log=lambda msg: print(msg, file=sys.stderr, flush=True)
    )
    data = freeze_window.as_dict(results)
    if args.json:
        print_json(data)
        return 0
    print(f"{'method':<12} {'longest':>10} {'p99':>9} {'command':>9} {'vs lvcreate -s':>15}")
    for name, m in data["methods"].items():
        print(
            f"{name:<12} {m['longest_stall_ms']:>7.1f} ms {m['p99_ms']:>6.1f} ms "
            f"{m['command_s']:>7.2f} s {m['ratio_to_lvcreate']:>14.2f}x"
        )
    print(f"goal ({data['goal']}): {'met' if data['goal_met'] else 'MISSED'}")
    return 0


def _register_group_window(benches: Any) -> None:
    from snapkit.bench import group_window

    p = benches.add_parser(
        "group-window",
        help="how a snapshot group's stall grows with its members, against one snapshot",
        description=group_window.__doc__,
        formatter_class=_RAW,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    p.set_defaults(handler=_bench_group_window)


def _bench_group_window(args: argparse.Namespace) -> int:
    from snapkit.bench import group_window

    cases = group_window.run(args.rounds, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    data = group_window.as_dict(cases)
    if args.json:
        print_json(data)
        return 0
    print(f"{'method':<7} {'members':>7} {'longest':>10} {'command':>9} {'vs single':>10}")
    for c in data["cases"]:
        print(
            f"{c['method']:<7} {c['members']:>7} {c['longest_stall_ms']:>7.1f} ms "
            f"{c['command_s']:>7.2f} s {c['ratio_to_single']:>9.2f}x"
        )
    print(f"baseline: {data['baseline']}")
    return 0


_BENCHES: tuple[Callable[[Any], None], ...] = (
    _register_cow,
    _register_freeze_window,
    _register_group_window,
)


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark (see 'snapkit bench --help')",
        description="Measure snapkit on this machine.\n\nexample:\n  snapkit bench cow --json",
        formatter_class=_RAW,
    )
    bench.set_defaults(handler=lambda _args: _usage(bench))
    benches = bench.add_subparsers(title="benchmarks", metavar="BENCH")
    for add in _BENCHES:
        add(benches)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


__all__ = ["register"]
