"""``snapkit snapshot``: create, list, status, merge, discard, watch, mount, umount.

Thin: parse, call the Python API (:mod:`snapkit.api`), render; the command and a program get
the same verbs. Exit 0 ok, 1 refused/failed (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from snapkit import api
from snapkit.cli.output import print_fields, print_json
from snapkit.errors import UsageError
from snapkit.flow import Flow, real_host
from snapkit.methods import registry
from snapkit.methods.stack import STACK_KEY
from snapkit.model import GroupStatus, SnapshotRecord, SnapshotStatus
from snapkit.validate import parse_size

VERBS_HELP = """\
One meaning for every method:
  merge    roll the origin back to the snapshot's content and remove the snapshot
           (as lvconvert --merge); refused while the origin is mounted, for dm methods
  discard  remove the snapshot and keep the origin's current content

For --method dm-direct this inverts the raw recipe's own words: its "merge" (snapshot-merge of
the COW into the base device, which works while mounted) is snapkit's discard, and its
"discard" (drop the COW, back to linear on the base device) is snapkit's merge.
"""


def status_json(s: SnapshotStatus) -> dict[str, Any]:
    r = s.record
    return {
        "name": r.name,
        "method": r.method,
        "origin": r.origin,
        "device": r.device,
        "state": s.state.value,
        "usage_percent": s.usage_percent,
        "merge_progress": s.merge_progress,
        "used": s.used_bytes,
        "referenced": s.referenced_bytes,
        "message": s.message,
        "created_at": r.created_at,
        "cow_file": r.details.get("cow_file"),
        "details": dict(r.details),  # method-specific: btrfs subvol, lvm vg/lv, mount options
        **_layers(r),
    }


def group_json(g: GroupStatus) -> dict[str, Any]:
    """A group: its own state, and each member's status with its mount point."""
    return {
        "name": g.group.name,
        "group": True,
        "method": g.group.method,
        "state": g.state,
        "members": [
            {**status_json(m), "mountpoint": m.record.details.get("mountpoint", "")}
            for m in g.members
        ],
    }


def _print_group(g: GroupStatus, as_json: bool) -> None:
    if as_json:
        print_json(group_json(g))
        return
    print_fields([("name", g.group.name), ("group of", len(g.members)), ("method", g.group.method)])
    print_fields([("state", g.state)])
    for m in group_json(g)["members"]:
        print(f"member\t{m['name']}\t{m['state']}\t{m['origin']}\t{m['mountpoint']}\t{m['device']}")


def _layers(r: SnapshotRecord) -> dict[str, Any]:
    """A stacked snapshot's ``layers``, bottom first (the key shown as ``<key of NAME>``)."""
    if not r.details.get(STACK_KEY):
        return {}
    from snapkit.methods.stack.method import info_of

    return {"layers": info_of(r).layers()}


def local_time(epoch: float) -> str:
    """A record's epoch seconds as people read them: local time, to the second, with the zone.
    --json keeps the number, which programs compare and sort."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _print_status(s: SnapshotStatus, as_json: bool) -> None:
    if as_json:
        print_json(status_json(s))
        return
    fields = [(k, v) for k, v in status_json(s).items() if v not in (None, "") and k != "details"]
    fields = [(k, local_time(v) if k == "created_at" else v) for k, v in fields]
    mount = s.record.details.get("mount_options")
    fields += [("mount_options", mount)] if mount else []
    print_fields(fields)


class _Bar:
    """The API's progress callback, drawn as a bar on a terminal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.drawn = False

    def __call__(self, pct: float) -> None:
        filled = int(pct / 100 * 40)
        bar = f"[{'#' * filled}{'.' * (40 - filled)}]"
        sys.stdout.write(f"\rmerging {self.name} {bar} {pct:5.1f}%")
        sys.stdout.flush()
        self.drawn = True


@contextmanager
def _verbs() -> Iterator[Flow]:
    """The real host's verbs for one command, handed to the API as its ``flow``. Named here
    (``real_host``, ``Flow``) so that unit tests can put fakes under the command."""
    with real_host() as host:
        yield Flow(host)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


CREATE_HELP = """\
Take a point-in-time snapshot of TARGET, a mounted filesystem or a block device, and record
it under NAME for status, mount, merge and discard. --method chooses how; auto takes the first
that suits TARGET: zfs (a ZFS dataset), lvm-thin, lvm, btrfs, dm (a device from 'snapkit
device prepare'), then freeze around a snapshot command. Every step has an undo, so a failure
leaves nothing frozen, suspended or half made.

Several mount points (TARGET TARGET...) make a snapshot group NAME: one snapshot per member
(NAME-SUFFIX, SUFFIX the mount point's last part), all at one point in time, all or nothing;
--method dm (prepared devices: every origin suspended together) or freeze (every member
frozen, the command run once). status, merge, discard, mount and umount of NAME act on every
member.
"""

COW_SIZE_HELP = (
    "how much change the snapshot can hold, e.g. 256M. dm, dm-direct: the size of the sparse "
    "COW file (default a quarter of the origin; rounded up to whole chunks, at least three); "
    "lvm: the snapshot LV's size, lvcreate -L (default a fifth of the origin, at least 16M); "
    "lvm-thin refuses it (the thin pool holds the changes); btrfs, zfs, freeze and remount-ro "
    "do not use it"
)

CREATE_EPILOG = """\
The snapshot command (for --method freeze, remount-ro, and auto when it falls back to freeze):
  snapkit snapshot create /mnt --name n --method freeze -- CMD [ARG...]
  snapkit snapshot create /mnt --name n --method freeze --command 'CMD ARGS'   (run by sh -c)
CMD runs while the filesystem is frozen (or read-only), with SNAPKIT_DEVICE and
SNAPKIT_MOUNTPOINT in its environment; it takes the copy (e.g. a SAN or cloud snapshot, or
dd if=$SNAPKIT_DEVICE ...). --pre runs before the freeze, --post after the thaw, even on failure.
"""


def _with_command(cls: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """``cls``, reading what follows the first ``--`` as the snapshot command. argparse's own
    REMAINDER would also swallow every option written after TARGET."""

    class CommandParser(cls):  # type: ignore[valid-type,misc]
        def parse_known_args(
            self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
        ) -> tuple[argparse.Namespace, list[str]]:
            words = list(sys.argv[1:] if args is None else args)
            command: list[str] = []
            if "--" in words:
                cut = words.index("--")
                words, command = words[:cut], words[cut + 1 :]
            parsed, extras = super().parse_known_args(words, namespace)
            parsed.argv = command
            return parsed, extras

    return CommandParser


def _command(args: argparse.Namespace) -> tuple[str, ...]:
    if args.argv and args.command is not None:
        raise UsageError("give the snapshot command after '--' or with --command, not both")
    if args.command is not None:
        if not args.command.strip():
            raise UsageError("--command is empty")
        return ("sh", "-c", args.command)
    return tuple(args.argv)


def _create(args: argparse.Namespace) -> int:
    """One TARGET: a snapshot; several: a snapshot group (the API takes the list as one)."""
    command = _command(args)
    targets = list(args.target)
    with _verbs() as flow:
        result = api.create(
            targets if len(targets) > 1 else targets[0],
            name=args.name,
            method=args.method,
            cow_size=args.cow_size,
            cow_dir=args.cow_dir or None,
            chunk_size=args.chunk_size,
            pre=args.pre,
            post=args.post,
            max_freeze=args.max_freeze,
            dry_run=bool(args.dry_run),
            command=command,
            key_file=args.key_file or None,
            force=args.force,
            flow=flow,
        )
    if isinstance(result, str):
        sys.stdout.write(result)
    elif isinstance(result, api.SnapshotGroup):
        if result.last_status is not None:
            _print_group(result.last_status, args.json)
    elif result.last_status is not None:
        _print_status(result.last_status, args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _verbs() as flow:
        rows = api.list_snapshots(flow=flow)
    if args.json:
        print_json([status_json(s) for s in rows])
        return 0
    for s in rows:
        usage = "-" if s.usage_percent is None else f"{s.usage_percent:.2f}%"
        print(f"{s.record.name}\t{s.record.method}\t{s.state.value}\t{usage}\t{s.record.origin}")
    return 0


def _status(args: argparse.Namespace) -> int:
    with _verbs() as flow:
        group = api.group(args.name, flow=flow)
        if group is not None and group.last_status is not None:
            _print_group(group.last_status, args.json)
            return 0
        _print_status(api.Snapshot(args.name, flow=flow).status(), args.json)
    return 0


def _merge(args: argparse.Namespace) -> int:
    bar = _Bar(args.name) if sys.stdout.isatty() and not args.json else None
    with _verbs() as flow:
        group = api.group(args.name, flow=flow)
        if group is not None:
            done = group.merge(wait=args.wait, dry_run=bool(args.dry_run))
            _print_group_result(done, args.json)
            return 0
        snap = api.Snapshot(args.name, flow=flow)
        try:
            result = snap.merge(
                wait=args.wait, progress=bar, dry_run=bool(args.dry_run), force=args.force
            )
        finally:
            if bar is not None and bar.drawn:
                sys.stdout.write("\n")  # end the bar's line, also when the merge failed
    if isinstance(result, str):
        sys.stdout.write(result)
    else:
        _print_status(result, args.json)
    return 0


def _print_group_result(result: GroupStatus | str, as_json: bool) -> None:
    if isinstance(result, str):
        sys.stdout.write(result)
    else:
        _print_group(result, as_json)


def _discard(args: argparse.Namespace) -> int:
    with _verbs() as flow:
        group = api.group(args.name, flow=flow)
        if group is not None:
            done = group.discard(force=args.force, dry_run=bool(args.dry_run))
            if isinstance(done, str) or args.json:
                _print_group_result(done, args.json)
            else:
                print(f"discarded {args.name} ({', '.join(m.record.name for m in done.members)})")
            return 0
        result = api.Snapshot(args.name, flow=flow).discard(
            force=args.force, dry_run=bool(args.dry_run)
        )
    if isinstance(result, str):
        sys.stdout.write(result)
    elif args.json:
        print_json(status_json(result))
    else:
        print(f"discarded {args.name}")
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage in (0, 100)")
    return value


def _watch(args: argparse.Namespace) -> int:
    by = parse_size(args.extend_by)  # refused before the host is opened, as always
    with _verbs() as flow:
        status = api.Snapshot(args.name, flow=flow).watch(
            extend_at=args.extend_at,
            extend_by=by,
            interval=args.interval,
            once=args.once,
            report=lambda line: print(line, flush=True),
        )
    _print_status(status, args.json)
    return 0


def _mount(args: argparse.Namespace) -> int:
    with _verbs() as flow:
        group = api.group(args.name, flow=flow)
        if group is not None:
            group.mount(args.dir, rw=args.rw)
            return 0
        api.Snapshot(args.name, flow=flow).mount(args.dir, rw=args.rw)
    return 0


def _umount(args: argparse.Namespace) -> int:
    with _verbs() as flow:
        group = api.group(args.name, flow=flow)
        if group is not None and args.dir is None:
            gone = group.umount()
            if args.json:
                print_json(
                    [{"name": d.name, "unmounted": [str(m) for m in d.mountpoints]} for d in gone]
                )
            else:
                for d in gone:
                    print(f"unmounted {d.name} from {', '.join(map(str, d.mountpoints))}")
            return 0
        done = api.Snapshot(args.name, flow=flow).umount(args.dir)
    if args.json:
        print_json(
            {
                "name": done.name,
                "unmounted": [str(m) for m in done.mountpoints],
                "layer_removed": done.layer,
            }
        )
        return 0
    layer = f"; removed its throwaway layer {done.layer}" if done.layer else ""
    print(f"unmounted {done.name} from {', '.join(map(str, done.mountpoints))}{layer}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "snapshot",
        help="create and manage snapshots of live filesystems",
        description="Create and manage snapshots of live filesystems.\n\n" + VERBS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="verbs", metavar="VERB", parser_class=type(parser))
    parser.set_defaults(handler=lambda _a: _usage(parser))

    p = sub.add_parser(
        "create",
        help="take a snapshot",
        description=CREATE_HELP,
        epilog=CREATE_EPILOG,
        usage="%(prog)s TARGET --name NAME [options] [-- CMD...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.__class__ = _with_command(type(p))
    p.add_argument(
        "target",
        metavar="TARGET",
        nargs="+",
        help="a mount point or a block device; several mount points make a snapshot group: "
        "one snapshot each, all at one point in time (--method dm, or freeze with a command)",
    )
    p.add_argument(
        "--name",
        required=True,
        help="what to call the snapshot in later commands: letters, digits, + _ . -",
    )
    p.add_argument(
        "--method",
        default=registry.DEFAULT_METHOD,
        choices=registry.names(),
        help="how to take it (default: %(default)s)",
    )
    p.add_argument("--cow-size", metavar="SIZE", help=COW_SIZE_HELP)
    p.add_argument("--cow-dir", metavar="DIR", help="where the COW file goes (not on TARGET)")
    p.add_argument("--chunk-size", metavar="SIZE", default="4K", help="4K..512K (default 4K)")
    p.add_argument("--pre", metavar="CMD", help="run before the freeze (sh -c)")
    p.add_argument("--post", metavar="CMD", help="run after the thaw, even on failure (sh -c)")
    p.add_argument("--command", metavar="CMD", help="the snapshot command, one string for sh -c")
    p.add_argument(
        "--max-freeze",
        metavar="SEC",
        type=_seconds,
        default=10.0,
        help="longest the filesystem may stay frozen (default 10)",
    )
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="a filesystem on LUKS: unlock the snapshot's header with this file (cryptsetup "
        "open --key-file), e.g. for LUKS2's kernel-keyring keys; by default the key is "
        "copied from the crypt mapping's table, kernel to kernel, and shown nowhere",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="accept a COW (dm, dm-direct) larger than the free space under --cow-dir (the "
        "kernel drops the snapshot if that filesystem fills), and freeze a filesystem whose "
        "frozen image is known to be inconsistent (jfs); both are refused by default",
    )
    p.add_argument("--dry-run", action="store_true", help="print the exact steps, change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_create)

    p = sub.add_parser(
        "list",
        help="list snapkit's snapshots",
        description="List every snapshot snapkit recorded, one per line: name, method, state, "
        "COW usage and origin (tab-separated; --json for every field).",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = sub.add_parser(
        "status",
        help="state, COW usage and merge progress of one snapshot",
        description="Show snapshot NAME as the kernel sees it now: its state, how full its COW "
        "is, merge progress, its device and origin, and when it was created (local time; "
        "--json gives the epoch seconds).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_status)

    p = sub.add_parser(
        "merge",
        help="roll the origin back to the snapshot",
        description=VERBS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--wait", action="store_true", help="wait for the kernel and finish the merge")
    p.add_argument(
        "--force",
        action="store_true",
        help="zfs: roll back even across later snapshots, which ZFS destroys",
    )
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_merge)

    p = sub.add_parser(
        "discard",
        help="remove the snapshot, keep the origin",
        description=VERBS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="even if the snapshot is in use")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(handler=_discard)

    p = sub.add_parser(
        "watch",
        help="grow the snapshot's COW before it overflows (dm, lvm)",
        description="Poll the COW usage of snapshot NAME and grow its COW by --extend-by each "
        "time it reaches --extend-at percent, as dmeventd's autoextend does (dm: the sparse "
        "COW file, 'losetup -c', a reload of the snapshot device only; lvm: lvextend). A COW "
        "that fills invalidates the snapshot for good: watch then says so and exits 1. It "
        "returns when the snapshot is merged or discarded, or after one look with --once.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--extend-at",
        metavar="PCT",
        type=_percent,
        required=True,
        help="grow when the COW is this full, in percent (e.g. 70)",
    )
    p.add_argument("--extend-by", metavar="SIZE", required=True, help="grow by this, e.g. 64M")
    p.add_argument(
        "--interval",
        metavar="SEC",
        type=_seconds,
        default=1.0,
        help="seconds between looks (default 1)",
    )
    p.add_argument("--once", action="store_true", help="look (and grow) once, then exit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_watch)

    p = sub.add_parser(
        "mount",
        help="mount the snapshot (read-only unless --rw)",
        description="Mount snapshot NAME's point-in-time view on DIR, read-only unless --rw. "
        "A dm-direct copy of an xfs or btrfs origin is mounted through a throwaway writable "
        "layer, so the log replay a mount needs never writes the copy itself.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--rw", action="store_true")
    p.set_defaults(handler=_mount)

    p = sub.add_parser(
        "umount",
        help="unmount what 'snapshot mount' mounted",
        description="Unmount snapshot NAME: every mount of it, or only the one on DIR. A "
        "dm-direct copy mounted through a throwaway layer loses the layer with its last mount, "
        "so merge and discard have nothing to pull away.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("dir", metavar="DIR", nargs="?", help="only this mount (default: all)")
    p.add_argument("--json", action="store_true", help="print what was unmounted as JSON")
    p.set_defaults(handler=_umount)


def _usage(parser: argparse.ArgumentParser) -> int:
    raise UsageError("snapshot needs a verb", hint="see 'snapkit snapshot --help'")


__all__ = ["register", "status_json"]
