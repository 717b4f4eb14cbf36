"""``vmtest difftest``: parse, call ``vmtests.difftest``, render. Exit 0 when the model and the
kernel agreed, 1 on a mismatch (the shrunk reproducer is printed and saved), 2 on bad usage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmtests.vm.kernel import spec

EPILOG = """\
examples:
  vmtest difftest --examples 200 --seed 1 --json
  vmtest difftest --replay results/difftest/difftest-0123abcd.json
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "difftest",
        help="random dm-snapshot histories, model against kernel",
        description="Run hypothesis-drawn histories of dm-snapshot operations on snapkit's "
        "offline model and on the real kernel in one guest, compare every read, status line, "
        "device and COW image, and shrink a mismatch to a minimal reproducer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--examples", type=int, default=100, help="histories to run (default 100)")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    p.add_argument("--replay", type=Path, metavar="FILE", help="run one saved history")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/difftest"),
        metavar="DIR",
        help="where reproducers are written (default results/difftest)",
    )
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    spec.add_options(p)
    p.set_defaults(handler=cmd_difftest)


def cmd_difftest(args: argparse.Namespace) -> int:
    from vmtests.difftest import run as difftest
    from vmtests.difftest.ops import History, well_formed

    if args.examples < 1:
        print("vmtest difftest: --examples must be at least 1", file=sys.stderr)
        return 2
    if args.replay is not None:
        try:
            history = History.from_json(json.loads(args.replay.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"vmtest difftest: cannot read {args.replay}: {exc}", file=sys.stderr)
            return 2
        if not well_formed(history):
            print(
                f"vmtest difftest: {args.replay} names a device that does not exist at that "
                "step, or an extent past the origin's end",
                file=sys.stderr,
            )
            return 2
        with difftest.booted(args.accel, kernel=args.kernel, modules=args.modules) as executor:
            outcome = difftest.run_history(executor, history)
        return _render_replay(outcome, args.json)
    with difftest.booted(args.accel, kernel=args.kernel, modules=args.modules) as executor:
        report = difftest.search(executor, args.examples, args.seed)
    if report.found is not None:
        report.reproducer = difftest.write_reproducer(report.found, args.out)
    if args.json:
        print(json.dumps({**report.to_json(), "kernel": executor.kernel}))
    else:
        print(render(report))
    return 1 if report.found is not None else 0


def render(report: object) -> str:
    from vmtests.difftest.run import Report

    assert isinstance(report, Report)
    data = report.to_json()
    lines = [
        f"difftest seed {report.seed}: {report.examples} histories in {data['seconds']} s "
        f"({data['examples_per_minute']}/min), "
        + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in data["comparisons"].items())
        + " compared"
    ]
    found = report.found
    if found is None:
        lines.append("model and kernel agree")
        return "\n".join(lines)
    lines.append(
        f"MISMATCH, shrunk in {report.shrink_runs} runs to {len(found.history.ops)} operations"
        + ("" if report.confirmed else " (did NOT fail again when run alone: timing-dependent)")
    )
    for m in found.mismatches:
        lines.append(f"  step {m.step}, {m.what}: model {m.model}  kernel {m.kernel}")
    lines.append("reproducer:")
    lines.append(found.history.dumps().rstrip())
    if report.reproducer is not None:
        lines.append(f"replay on both sides: vmtest difftest --replay {report.reproducer}")
    return "\n".join(lines)


def _render_replay(outcome: object, as_json: bool) -> int:
    from dataclasses import asdict

    from vmtests.difftest.run import Outcome

    assert isinstance(outcome, Outcome)
    if as_json:
        print(
            json.dumps(
                {
                    "mismatches": len(outcome.mismatches),
                    "differences": [asdict(m) for m in outcome.mismatches],
                    "comparisons": asdict(outcome.counts),
                }
            )
        )
    elif outcome.failed:
        for m in outcome.mismatches:
            print(f"step {m.step}, {m.what}: model {m.model}  kernel {m.kernel}")
    else:
        print(f"model and kernel agree on all {len(outcome.history.ops)} operations")
    return 1 if outcome.failed else 0


__all__ = ["register"]
