"""``snapkit device``: prepare a plain block device for the raw dm methods, and release it.

Thin: parse, call the Python API (:func:`snapkit.api.prepare_device`, ``release_device``),
render."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from snapkit import api
from snapkit.cli.output import print_json
from snapkit.errors import UsageError


def _prepare(args: argparse.Namespace) -> int:
    result = api.prepare_device(args.device, args.name, dry_run=bool(args.dry_run))
    if isinstance(result, str):
        sys.stdout.write(result)
        return 0
    if args.json:
        print_json(
            {
                "name": result.name,
                "device": str(result.device),
                "under": str(result.under),
                "size_sectors": result.size_sectors,
                "partition_start": result.partition_start,
                "mount_instead_of": args.device,
            }
        )
        return 0
    where = f" (a partition starting at sector {result.partition_start})"
    print(
        f"prepared {result.device}: linear over {result.under}"
        f"{where if result.partition_start else ''}, {result.size_sectors} sectors\n"
        f"from now on mount {result.device} instead of {args.device} "
        f"(umount and remount; never mount {args.device} itself while {args.name} exists)"
    )
    return 0


def _release(args: argparse.Namespace) -> int:
    result = api.release_device(args.name, dry_run=bool(args.dry_run))
    if args.dry_run:
        sys.stdout.write(result)
    elif args.json:
        print_json({"name": args.name, "released": True, "mount_instead": result or None})
    else:
        under = f"; mount {result} directly again" if result else ""
        print(f"released /dev/mapper/{args.name}{under}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "device",
        help="wrap a plain block device in dm linear for the dm methods, and undo it",
        description="The dm and dm-direct methods snapshot a device-mapper device. 'device "
        "prepare' wraps a plain disk, partition or loop device in one, once (an unmount and a "
        "remount); 'device release' unwraps it.",
    )
    sub = parser.add_subparsers(title="verbs", metavar="VERB", parser_class=type(parser))
    parser.set_defaults(handler=_usage)

    p = sub.add_parser(
        "prepare",
        help="wrap DEVICE in /dev/mapper/NAME (needs an unmount and a remount)",
        description="Wrap DEVICE in a dm linear device /dev/mapper/NAME, once, so the dm and\n"
        "dm-direct methods can snapshot it. DEVICE must not be mounted; afterwards, mount\n"
        "/dev/mapper/NAME instead (an unmount and a remount: the one interruption).",
        epilog="example:\n  umount /srv && snapkit device prepare /dev/sdb1 --name srv && "
        "mount /dev/mapper/srv /srv\n  snapkit snapshot create /srv --name s1 --method dm "
        "--cow-dir /var/cow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("device", metavar="DEVICE", help="a whole disk, a partition or a loop device")
    p.add_argument("--name", required=True, help="the dm name: letters, digits, + _ . -")
    p.add_argument("--dry-run", action="store_true", help="print the exact steps, change nothing")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_prepare)

    p = sub.add_parser("release", help="undo prepare (NAME must be unmounted, no snapshots)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--dry-run", action="store_true", help="print the exact steps, change nothing")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_release)


def _usage(_args: argparse.Namespace) -> int:
    raise UsageError("device needs a verb", hint="see 'snapkit device --help'")


__all__ = ["register"]
