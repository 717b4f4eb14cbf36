"""``snapkit cow``: read, export, merge and prepare dm-snapshot COW stores offline.

The verbs only parse arguments and render results; the work is in ``snapkit.cow``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import Any

from snapkit.cli.output import print_fields, print_json
from snapkit.cow.export import export
from snapkit.cow.format import DEFAULT_CHUNK_SECTORS, check_chunk_sectors
from snapkit.cow.image import diff, format_cow, inspect
from snapkit.cow.merge import merge
from snapkit.errors import CowFormatError

_RAW = argparse.RawDescriptionHelpFormatter

COW_HELP = """\
Work with the COW device of a dm-snapshot (LVM snapshot) without the kernel.

A COW ("copy-on-write") store holds the origin chunks that changed after the snapshot
was taken, plus metadata saying which chunk went where. These verbs read and write that
format exactly as the kernel does, so an image pair can be checked, exported or merged
on a machine without device-mapper, and the kernel accepts the result.

examples:
  snapkit cow inspect vg-snap-cow.img
  snapkit cow export --origin vg-lv.img --cow vg-snap-cow.img --output snap.img
  snapkit cow merge --origin vg-lv.img --cow vg-snap-cow.img --progress
"""


def _chunk_sectors(text: str) -> int:
    """argparse type for a chunk size: a bad one is a usage error (exit 2), checked by the same
    rule the store applies to a header's chunk size."""
    try:
        return check_chunk_sectors(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid chunk size: {text!r}") from None
    except CowFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_chunk_hint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--table-chunk-sectors",
        type=_chunk_sectors,
        default=DEFAULT_CHUNK_SECTORS,
        metavar="N",
        help="chunk size the dm table would give; used only for a new (zeroed) COW, since "
        f"the header's chunk size wins otherwise (default {DEFAULT_CHUNK_SECTORS})",
    )


def register(subparsers: Any) -> None:
    cow = subparsers.add_parser(
        "cow",
        help="inspect, export, merge or prepare a dm-snapshot COW store offline",
        description=COW_HELP,
        formatter_class=_RAW,
    )
    cow.set_defaults(handler=lambda _args: _usage(cow))
    verbs = cow.add_subparsers(title="verbs", metavar="VERB")

    p = verbs.add_parser(
        "inspect",
        help="summarise a COW store and the status dmsetup would show",
        description="Read the header and every metadata area, check them as the kernel would, "
        "and report the exceptions and the 'dmsetup status' text (X/Y Z or Invalid).",
        epilog="example:\n  snapkit cow inspect snap-cow.img --json",
        formatter_class=_RAW,
    )
    p.add_argument("cow", metavar="COW", help="COW image or device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_chunk_hint(p)
    p.set_defaults(handler=_inspect)

    p = verbs.add_parser(
        "export",
        help="write the point-in-time image the snapshot device shows",
        description="Write the bytes a read of the whole snapshot device returns: the origin "
        "with every exception chunk taken from the COW, each byte copied once; keeps holes "
        "in a regular-file output. A file is written beside OUT, fsync'd, and renamed into place "
        "only when complete, so a failed export leaves an existing OUT as it was. Refuses an "
        "invalid snapshot, an output that is one of the inputs, and an existing OUT without "
        "--force.",
        epilog="examples:\n  snapkit cow export --origin lv.img --cow cow.img --output snap.img\n"
        "  snapkit cow export --origin lv.img --cow cow.img --output - | sha256sum",
        formatter_class=_RAW,
    )
    p.add_argument("--origin", required=True, help="origin image or device")
    p.add_argument("--cow", required=True, help="COW image or device")
    p.add_argument("--output", required=True, metavar="OUT", help="output file, or - for stdout")
    p.add_argument(
        "--force", action="store_true", help="replace OUT if it exists (a device is written over)"
    )
    p.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="leave the image in the page cache, as cp does, instead of on stable storage "
        "before the rename (faster; a crash soon after may lose it)",
    )
    _add_chunk_hint(p)
    p.set_defaults(handler=_export)

    p = verbs.add_parser(
        "merge",
        help="merge the snapshot back into the origin, in place, as snapshot-merge does",
        description="Copy every exception back into the origin, newest first, in the kernel's "
        "batches, clearing metadata after the data is flushed. Afterwards the origin equals "
        "the snapshot and the COW equals what the kernel leaves. Safe to kill and run again; "
        "a merge the kernel stopped half way is finished too.",
        epilog="example:\n  snapkit cow merge --origin lv.img --cow cow.img --progress",
        formatter_class=_RAW,
    )
    p.add_argument("--origin", required=True, help="origin image or device (written)")
    p.add_argument("--cow", required=True, help="COW image or device (metadata written)")
    p.add_argument("--progress", action="store_true", help="report progress on stderr")
    _add_chunk_hint(p)
    p.set_defaults(handler=_merge)

    p = verbs.add_parser(
        "diff",
        help="list the origin sectors where the snapshot differs",
        description="List the origin chunks that have an exception (the snapshot's content "
        "there is in the COW), coalesced into runs of sectors. With --origin, the last run is "
        "cut at the origin's end.",
        epilog="example:\n  snapkit cow diff --cow cow.img --json",
        formatter_class=_RAW,
    )
    p.add_argument("--cow", required=True, help="COW image or device")
    p.add_argument("--origin", help="origin image, to check it and clip the last run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_chunk_hint(p)
    p.set_defaults(handler=_diff)

    p = verbs.add_parser(
        "format",
        help="prepare an empty COW the way LVM does",
        description="Zero the first chunk so the kernel sees magic 0 and initialises a new "
        "store on first activation (as lvcreate -s does). Checks the chunk size and that the "
        "COW holds at least three chunks.",
        epilog="example:\n"
        "  truncate -s 64M cow.img\n"
        "  snapkit cow format cow.img --chunk-sectors 8",
        formatter_class=_RAW,
    )
    p.add_argument("cow", metavar="COW", help="COW image or device (first chunk zeroed)")
    p.add_argument(
        "--chunk-sectors",
        type=_chunk_sectors,
        required=True,
        metavar="N",
        help="power of two, e.g. 8",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing snapshot store")
    p.set_defaults(handler=_format)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _inspect(args: argparse.Namespace) -> int:
    result = inspect(args.cow, args.table_chunk_sectors)
    if args.json:
        print_json(asdict(result))
        return 0
    state = (
        "new (kernel will initialise it)"
        if result.new
        else ("valid" if result.valid else "INVALID")
    )
    print_fields(
        [
            ("store", f"{state}, version {result.version}"),
            ("chunk", f"{result.chunk_sectors} sectors"),
            ("exceptions", f"{result.exceptions} in {result.metadata_areas} metadata area(s)"),
            ("status", result.status),
        ]
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    result = export(
        args.origin,
        args.cow,
        args.output,
        args.table_chunk_sectors,
        force=args.force,
        fsync=args.fsync,
    )
    if args.output != "-":
        print(f"exported {result.size} bytes to {args.output}", file=sys.stderr)
    return 0


def _merge(args: argparse.Namespace) -> int:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        pct = 100.0 * done / total if total else 100.0
        print(f"merge: {done}/{total} exceptions ({pct:.0f}%)", file=sys.stderr)

    result = merge(
        args.origin, args.cow, report if args.progress else None, args.table_chunk_sectors
    )
    print(
        f"merged {result.merged} exception(s); status {result.status}",
        file=sys.stderr,
    )
    return 0


def _diff(args: argparse.Namespace) -> int:
    chunk_sectors, runs = diff(args.cow, args.origin, args.table_chunk_sectors)
    if args.json:
        print_json(
            {
                "chunk_sectors": chunk_sectors,
                "runs": [{"start": r.start_sector, "sectors": r.sectors} for r in runs],
                "sectors": sum(r.sectors for r in runs),
            }
        )
        return 0
    for run in runs:
        print(f"{run.start_sector}+{run.sectors}")
    return 0


def _format(args: argparse.Namespace) -> int:
    format_cow(args.cow, args.chunk_sectors, force=args.force)
    print(f"{args.cow}: ready for a new snapshot store", file=sys.stderr)
    return 0


__all__ = ["register"]
