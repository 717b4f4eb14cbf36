"""snapkit's command line: parse, call the library, render, and map errors to exit codes.

Each command group lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``handler`` (a callable taking the parsed namespace and returning an exit
code). This module only wires them together, so it stays thin.

Exit codes: 0 success, 1 a refused or failed operation (one line on stderr), 2 usage errors.
SNAPKIT_DEBUG=1 adds the library's log (every step, every undo) on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from snapkit import __version__
from snapkit.errors import SnapkitError
from snapkit.settings import Settings

# Command groups, in the order their help is shown: name -> (module, one-line summary). Each
# module exposes register(subparsers). Only the chosen group's module is imported: under TCG
# in a guest, importing every group (all methods, dm, cow) costs seconds of start-up.
COMMANDS: dict[str, tuple[str, str]] = {
    "snapshot": (
        "snapkit.cli.snapshot",
        "create, list, mount, umount, merge, discard and watch snapshots",
    ),
    "device": ("snapkit.cli.device", "wrap a plain block device for the dm method, or unwrap it"),
    "freeze": ("snapkit.cli.freeze", "freeze a filesystem around a command; a watchdog thaws"),
    "recover": ("snapkit.cli.recover", "after a crash or reboot: re-assemble, clean up, resume"),
    "install-units": ("snapkit.cli.units", "install the systemd units: recover at boot, watch"),
    "cow": ("snapkit.cli.cow", "dm-snapshot COW files offline: inspect, export, merge, diff"),
    "bench": ("snapkit.cli.bench", "measure snapkit: the COW model, the freeze window"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit 2 with one line, as the contract says."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _chosen(argv: Sequence[str]) -> str | None:
    """The command group named on the command line, if any (the first non-option word)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` given, only the group it names is imported and built in full."""
    parser = _Parser(
        prog="snapkit",
        description=(
            "Take consistent snapshots of live Linux filesystems, and work with the kernel's "
            "dm-snapshot COW format offline."
        ),
        epilog="Run 'snapkit COMMAND --help' for each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snapkit {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    chosen = _chosen(argv) if argv is not None else None
    for name, (module_name, summary) in COMMANDS.items():
        if argv is not None and name != chosen:
            sub.add_parser(name, help=summary)  # listed in --help, not imported
            continue
        importlib.import_module(module_name).register(sub)
    return parser


def dispatch(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...] = (SnapkitError,),
) -> int:
    """Parse, run the chosen handler, and turn errors into one stderr line and an exit code.

    Shared with the ``vmtest`` command, so both CLIs treat usage, refusals, Ctrl-C and closed
    pipes the same way. An error's ``exit_code`` attribute, when it has one, wins over 1.
    """
    if Settings.from_env().debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = handler(args)
    except errors as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return dispatch(build_parser(words), words)


__all__ = ["build_parser", "dispatch", "main"]
