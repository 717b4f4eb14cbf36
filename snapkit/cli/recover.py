"""``snapkit recover``: after a crash or a reboot, re-assemble snapkit's devices from the state
file, drop what a crash cut short, and finish merges that were under way
(snapkit/recover.py and each family's snapkit/methods/*/recover.py say why each is safe).
Thin: parse, call :func:`snapkit.api.recover_all`, render."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from snapkit import api
from snapkit.cli.output import print_json


def _recover(args: argparse.Namespace) -> int:
    result = api.recover_all(dry_run=bool(args.dry_run), finish=not args.no_finish)
    if isinstance(result, str):
        sys.stdout.write(result)
        return 0
    if args.json:
        print_json({"actions": result.actions, "dropped": result.dropped, "merged": result.merging})
        return 0
    for action in result.actions:
        print(action)
    for name in result.dropped:
        print(
            f"forgot {name}: it is cleanly absent (a create cut short, or a merge or discard "
            "the crash interrupted past its point of no return, now finished)"
        )
    for name in result.merging:
        print(f"resumed and finished the merge of {name}")
    if not (result.actions or result.dropped):
        print("nothing to recover")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recover",
        help="after a crash or reboot: re-assemble snapshots, drop half-made ones, finish merges",
        description="Re-assemble every snapshot the state file records (device-mapper tables "
        "do not survive a reboot; the COW files do), remove what a create cut short, and "
        "resume and finish merges that were under way. Safe to run at every boot.",
    )
    p.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    p.add_argument("--no-finish", action="store_true", help="resume merges, do not wait for them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_recover)


__all__ = ["register"]
