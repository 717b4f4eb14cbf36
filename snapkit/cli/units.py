"""``snapkit install-units``: put the shipped systemd units in place (snapkit/units/), so that
prepared devices and snapshots are re-assembled at boot before the mounts that need them, and
``snapshot watch`` can run as a service that outlives the user's session."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from snapkit import units
from snapkit.cli.output import print_json

_DONE = {"create": "wrote", "replace": "replaced", "keep": "unchanged"}
_WOULD = {
    "create": "would write",
    "replace": "would replace",
    "keep": "unchanged",
    "differs": "differs (a run without --force refuses it; --force replaces it):",
}


def _install(args: argparse.Namespace) -> int:
    snapkit = (
        units.check_snapkit(Path(os.path.abspath(args.snapkit)))
        if args.snapkit
        else units.find_snapkit(sys.argv[0])
    )
    planned = units.plan(Path(args.dir), snapkit, force=args.force)
    if not args.dry_run:
        units.install(planned, euid=os.geteuid())
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "snapkit": str(snapkit),
                "units": [
                    {"name": u.name, "path": str(u.path), "action": u.action, "text": u.text}
                    for u in planned
                ],
                "next": units.NEXT_STEP,
            }
        )
        return 0
    words = _WOULD if args.dry_run else _DONE
    for unit in planned:
        print(f"{words[unit.action]} {unit.path}")
        if args.dry_run and unit.action != "keep":
            print("".join(f"    {line}\n" for line in unit.text.splitlines()), end="")
    print(f"their ExecStart runs {snapkit}")
    print(f"next: {units.NEXT_STEP}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "install-units",
        help="install the systemd units: recover at boot, watch as a service",
        description="Write snapkit-recover.service (runs 'snapkit recover' at boot, before "
        "local-fs-pre.target, so fstab lines for /dev/mapper/NAME find their devices) and the "
        "template snapkit-watch@.service ('snapshot watch NAME' as a service). Their "
        "ExecStart names this snapkit's own path. A file that exists and differs is refused "
        "unless --force. Needs root, except with --dry-run.",
        epilog=f"then: {units.NEXT_STEP}\n"
        "and, per snapshot to keep from overflowing: "
        "systemctl enable --now snapkit-watch@NAME.service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dir",
        default=str(units.DEFAULT_DIR),
        metavar="DIR",
        help=f"where to write them (default {units.DEFAULT_DIR})",
    )
    p.add_argument(
        "--snapkit", metavar="PATH", help="the snapkit command ExecStart runs (default: this one)"
    )
    p.add_argument("--force", action="store_true", help="replace unit files that differ")
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be written, write nothing"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_install)


__all__ = ["register"]
