"""``snapkit freeze MOUNTPOINT [--max-freeze SEC] -- CMD...``: freeze, run CMD, thaw.

Exits with CMD's exit code. The filesystem is thawed whatever happens: by snapkit after CMD, by
the plan's rollback on a signal, or by the watchdog process if snapkit itself is killed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from snapkit.errors import UsageError

_EPILOG = """\
examples:
  snapkit freeze /srv/db -- gcloud compute disks snapshot db-disk --zone europe-west1-b
  snapkit freeze /data --max-freeze 5 -- virsh domfsfreeze-like-snapshot-tool
  snapkit freeze /data --dry-run -- true

CMD gets SNAPKIT_MOUNTPOINT and SNAPKIT_DEVICE in its environment, and must not write to the
frozen filesystem (it would hang until the watchdog thaws). Its output is printed after the thaw.
"""


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-freeze",
        type=float,
        default=10.0,
        metavar="SEC",
        help="thaw after SEC seconds whatever happens, and kill CMD (default 10)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "freeze",
        help="freeze a filesystem, run a snapshot command, thaw",
        description="Freeze the filesystem mounted at MOUNTPOINT (FIFREEZE), run CMD (a SAN, "
        "hypervisor or cloud snapshot), thaw it (FITHAW), and exit with CMD's exit code. A "
        "watchdog process thaws after --max-freeze seconds, even if snapkit is killed.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(handler=_freeze)


def split_command(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """argparse's REMAINDER also swallows options written after MOUNTPOINT; re-read those."""
    words = list(args.command)
    if "--" not in words:
        if words and words[0].startswith("-"):
            raise UsageError(f"unknown option {words[0]}", hint="put CMD after '--'")
        return args, words
    cut = words.index("--")
    head, command = words[:cut], words[cut + 1 :]
    if head:
        options = argparse.ArgumentParser(
            prog="snapkit freeze", add_help=False, exit_on_error=False
        )
        _add_options(options)
        try:
            options.parse_args(head, namespace=args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise UsageError(f"cannot read {' '.join(head)}: {exc}") from None
    return args, command


def _freeze(args: argparse.Namespace) -> int:
    from snapkit.api import freeze

    args, command = split_command(args)
    if not command:
        raise UsageError("no command to run while frozen", hint="give it after '--'")
    frozen = freeze(
        args.mountpoint, command, max_freeze=args.max_freeze, dry_run=bool(args.dry_run)
    )
    if isinstance(frozen, str):
        print(frozen, end="")
        return 0
    sys.stdout.write(frozen.result.stdout)
    sys.stderr.write(frozen.result.stderr)
    if frozen.window is not None:
        print(f"snapkit: {frozen.mountpoint} was frozen for {frozen.window:.3f} s", file=sys.stderr)
    return frozen.result.returncode


__all__ = ["register", "split_command"]
