"""`vmtest`: build the guest image, run commands in throwaway VMs, benchmark, run campaigns.

This module only parses, calls into the harness and renders; heavy imports happen inside the
handlers so that ``vmtest --help`` and ``vmtest image build`` (cached) stay instant.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from snapkit import __version__
from vmtests.vm.errors import ImageError, VmError
from vmtests.vm.kernel.spec import add_options as spec_options

if TYPE_CHECKING:
    from vmtests.vm.image import Image
    from vmtests.vm.qemu import Accel, Disk

EPILOG = """\
examples:
  vmtest image build                          build (or find cached) the guest image
  vmtest exec -- sh -c 'dmsetup targets'      run one command in a fresh VM
  vmtest exec --disk 1G -- lsblk              ... with an extra 1 GiB sparse disk
  echo hi | vmtest exec -- cat                stdin is passed through
  vmtest shell                                an interactive shell in a throwaway VM
  vmtest bench boot --runs 5 --json           boot-to-command time

Inside the guest /src holds the snapkit this vmtest runs ('snapkit' is on PATH): the working
tree when vmtest runs from a checkout (pip install -e), the installed package otherwise; --tree
DIR ships another working tree. Extra disks appear as /dev/vmtest/disk0, disk1, ... (by serial,
whatever their vdX name).
"""


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M or 2G") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return value


def _mem_mib(text: str) -> int:
    return max(1, parse_size(text if text[-1:].isalpha() else text + "M") >> 20)


def _add_vm_options(p: argparse.ArgumentParser, timeout: float | None = 600.0) -> None:
    spec_options(p)
    p.add_argument(
        "--mem",
        type=_mem_mib,
        default=1024,
        metavar="SIZE",
        help="guest memory, e.g. 512M or 2G (default 1G)",
    )
    p.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    p.add_argument(
        "--accel",
        default="auto",
        choices=("auto", "kvm", "tcg"),
        help="auto uses KVM only if a probe boot proves it works (default auto)",
    )
    p.add_argument(
        "--disk",
        type=parse_size,
        action="append",
        default=[],
        metavar="SIZE",
        help="add a sparse raw disk of SIZE, seen as /dev/vmtest/diskN (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="SEC",
        help=f"hard limit in seconds (default {'none' if timeout is None else f'{timeout:g}'})",
    )
    p.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep console log, QEMU argv and disks in DIR"
    )
    _cold_boot_option(p)
    p.add_argument(
        "--tree",
        type=_tree,
        default=None,
        metavar="DIR",
        help="ship DIR's snapkit/ and vmtests/ to the guest (a checkout); default: the ones "
        "this vmtest runs",
    )


def _cold_boot_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cold-boot",
        action="store_true",
        help="boot the kernel every time, never from a saved state (also $VMTEST_COLD_BOOT=1)",
    )


def _apply_cold_boot(args: argparse.Namespace) -> None:
    """--cold-boot as the environment, so every boot of this run and its workers sees it."""
    from vmtests.vm.resume import COLD_ENV

    if getattr(args, "cold_boot", False):
        os.environ[COLD_ENV] = "1"


def _tree(text: str) -> Path:
    from vmtests.vm.payload import check_tree

    try:
        return check_tree(Path(text).resolve())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtest",
        description="Throwaway QEMU guests with device-mapper, LVM and real filesystems, "
        "for testing snapkit against a real kernel.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The harness ships in the snapkit package, so its version is snapkit's.
    parser.add_argument("--version", action="version", version=f"vmtest {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    image = sub.add_parser("image", help="build or locate the guest image")
    isub = image.add_subparsers(title="image commands", metavar="ACTION")
    ib = isub.add_parser("build", help="build the guest image from Debian packages (cached)")
    ib.add_argument("--force", action="store_true", help="rebuild even if cached")
    ib.add_argument("--json", action="store_true", help="print the image paths as JSON")
    ib.add_argument(
        "--zfs",
        action="store_true",
        help="also build ZFS's module for the kernel (otherwise built by the first ZFS run)",
    )
    spec_options(ib)
    ib.set_defaults(handler=cmd_image_build)
    ip = isub.add_parser("path", help="print where the cached image is")
    spec_options(ip)
    ip.set_defaults(handler=cmd_image_path)

    ex = sub.add_parser(
        "exec",
        help="run one command in a fresh VM, relaying its streams",
        description="Boot a throwaway VM, run CMD in it with stdin, stdout and "
        "stderr relayed live, and exit with CMD's exit code. Each argument "
        "reaches the guest byte for byte: nothing is re-split or re-quoted.",
    )
    _add_vm_options(ex)
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(handler=cmd_exec)

    sh = sub.add_parser(
        "shell",
        help="an interactive shell in a throwaway VM",
        description="Boot a throwaway VM and run an interactive shell in it, for as long as "
        "you like (no time limit unless --timeout); everything is gone when you exit.",
    )
    _add_vm_options(sh, timeout=None)  # a person at a shell is not a hung command
    sh.set_defaults(handler=cmd_shell)

    bench = sub.add_parser("bench", help="measure the harness")
    bsub = bench.add_subparsers(title="benchmarks", metavar="WHAT")
    bb = bsub.add_parser("boot", help="time from QEMU start until the guest has run a command")
    bb.add_argument("--runs", type=int, default=5)
    bb.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    bb.add_argument("--json", action="store_true")
    bb.add_argument(
        "--cold-boot",
        action="store_true",
        help="time cold boots only (default: restored boots, and cold ones in the same run)",
    )
    spec_options(bb)
    bb.set_defaults(handler=cmd_bench_boot)
    from vmtests.difftest import cli as cli_difftest  # difftest: model against kernel

    cli_difftest.register(sub)
    from vmtests.campaign import cli as cli_campaign  # run, report merge, bench campaign

    cli_campaign.register(sub, cmd_run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """``vmtest run``: the faults matrix and the crash states have runners of their own; any
    other matrix is the campaign.
    An option of the other runner would be ignored without a word: it is refused instead."""
    from vmtests.campaign.cli import inapplicable

    _apply_cold_boot(args)
    refused = inapplicable(args)
    if refused:
        print(f"vmtest run: error: {refused} (see 'vmtest run --help')", file=sys.stderr)
        return 2
    if args.matrix in ("faults", "crash-states"):
        if args.matrix == "faults":
            from vmtests.faults.cli import cmd_run as run
        else:
            from vmtests.crashstates.cli import cmd_run as run
        if args.kernel:
            os.environ["VMTEST_KERNEL"] = args.kernel  # these runners boot $VMTEST_KERNEL
    else:
        from vmtests.campaign.cli import cmd_run as run
    return run(args)


def _image(args: argparse.Namespace) -> Image:
    """The image for the command's --kernel (built on a miss; refusals in one line)."""
    from vmtests.vm import guest_image

    try:
        return guest_image.prepare(args.kernel, modules=args.modules)
    except ImageError as exc:
        raise SystemExit(f"vmtest: {exc}") from None


def cmd_image_build(args: argparse.Namespace) -> int:
    import time

    from vmtests.vm import guest_image, image

    t0 = time.monotonic()
    try:
        _root, built = image.build(force=args.force)
        img = guest_image.prepare(args.kernel, modules=args.modules)
        if args.zfs:
            img = guest_image.with_zfs(img)
    except ImageError as exc:
        print(f"vmtest: image build failed: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - t0
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(img.root),
                    "recipe": img.recipe_hash,
                    "kernel_layer": str(img.layer.root),
                    "kernel": img.release,
                    "zfs_modules": str(img.modules) if img.modules else None,
                    "built": built,
                    "seconds": round(took, 3),
                }
            )
        )
    else:
        what = "built" if built else "up to date:"
        print(f"guest image {img.key} {what} ({took:.0f} s), kernel {img.release}: {img.root}")
    return 0


def cmd_image_path(args: argparse.Namespace) -> int:
    print(_image(args).root)
    return 0


def _disks(sizes: Sequence[int], folder: Path) -> list[Disk]:
    from vmtests.vm.machine import make_disk
    from vmtests.vm.qemu import Disk

    return [
        Disk(make_disk(folder / f"disk{i}.raw", size), f"disk{i}") for i, size in enumerate(sizes)
    ]


def _run_in_vm(args: argparse.Namespace, argv: list[str]) -> int:
    from vmtests.vm import accel, execute, payload

    _apply_cold_boot(args)
    img = _image(args)
    chosen = accel.choose(args.accel, img)
    with tempfile.TemporaryDirectory(prefix="vmtest-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        disks = _disks(args.disk, work)
        try:
            result = execute.run(
                img,
                argv,
                work,
                stdout=_writer(1),
                stderr=_writer(2),
                stdin_fd=sys.stdin.fileno(),
                accel=chosen,
                memory_mib=args.mem,
                cpus=args.cpus,
                disks=disks,
                timeout=args.timeout,
                tree=args.tree or payload.TREE,
            )
        except VmError as exc:
            print(f"vmtest: {exc}", file=sys.stderr)
            return 125
    return result.returncode


def _writer(fd: int) -> Callable[[bytes], None]:
    """Relay guest output unbuffered, so it interleaves as the guest wrote it."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(
            "vmtest exec: no command given (usage: vmtest exec [OPTIONS] -- CMD...)",
            file=sys.stderr,
        )
        return 2
    return _run_in_vm(args, command)


def cmd_shell(args: argparse.Namespace) -> int:
    """A shell in a throwaway VM. On a terminal the guest gets a real pty (``script``) and the
    host terminal goes raw, so job control, Ctrl-C and line editing behave as on a console."""
    if not sys.stdin.isatty():
        return _run_in_vm(args, ["bash", "--norc", "-i"])
    import termios
    import tty

    size = os.get_terminal_size()
    inner = f"stty rows {size.lines} cols {size.columns}; cd /root; exec bash -i"
    print("vmtest: a throwaway VM; everything is gone when you 'exit'\r", file=sys.stderr)
    saved = termios.tcgetattr(sys.stdin.fileno())
    try:
        tty.setraw(sys.stdin.fileno())
        return _run_in_vm(args, ["script", "-qefc", inner, "/dev/null"])
    finally:
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def _boot_sample(img: Image, chosen: Accel, cold: bool) -> tuple[float, float]:
    """One boot: seconds from QEMU's start to the command's exit status, and the CPU seconds
    QEMU used in all (to its exit; its children, such as the state's reader, included). Under
    TCG a boot is CPU-bound, so the second is what another load does not stretch."""
    from vmtests.vm import execute

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="vmtest-bench-") as tmp:
        r = execute.run_quietly(img, ["true"], Path(tmp), accel=chosen, timeout=60, cold_boot=cold)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r.seconds, cpu


def _summary(samples: list[tuple[float, float]]) -> dict[str, object]:
    wall = [s for s, _ in samples]
    return {
        "runs": len(samples),
        "median_s": round(statistics.median(wall), 3),
        "min_s": round(min(wall), 3),
        "max_s": round(max(wall), 3),
        "samples_s": [round(s, 3) for s in wall],
        "qemu_cpu_median_s": round(statistics.median(c for _, c in samples), 3),
    }


def cmd_bench_boot(args: argparse.Namespace) -> int:
    """Restored boots, with cold ones interleaved in the same run (so both see the same load);
    ``--cold-boot`` times cold boots only. A saved state is made before the first sample."""
    from vmtests.vm import accel, execute

    img = _image(args)
    chosen = accel.choose(args.accel, img)
    kinds = ["cold"] if args.cold_boot else ["restored", "cold"]
    if not args.cold_boot:  # save the state first: its one cold boot is not a sample
        with tempfile.TemporaryDirectory(prefix="vmtest-bench-") as tmp:
            execute.run_quietly(img, ["true"], Path(tmp), accel=chosen, timeout=180)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for i in range(args.runs):
        for kind in kinds:
            samples[kind].append(_boot_sample(img, chosen, kind == "cold"))
            if not args.json:
                wall, cpu = samples[kind][-1]
                print(
                    f"run {i + 1}/{args.runs} {kind}: {wall:.3f} s (QEMU CPU {cpu:.3f} s)",
                    file=sys.stderr,
                )
    summary: dict[str, object] = {
        "kernel": {"spec": str(img.layer.spec), "release": img.release},
        "accel": str(chosen),
        "boot": kinds[0],
        **_summary(samples[kinds[0]]),
    }
    if not args.cold_boot:
        cold = _summary(samples["cold"])
        summary["cold"] = cold
        summary["ratio"] = round(float(str(summary["median_s"])) / float(str(cold["median_s"])), 3)
        summary["cpu_ratio"] = round(
            float(str(summary["qemu_cpu_median_s"])) / float(str(cold["qemu_cpu_median_s"])), 3
        )
    summary["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(summary))
    else:
        line = (
            f"boot to command ({summary['accel']}, {img.release}, {kinds[0]}): median "
            f"{summary['median_s']} s, min {summary['min_s']} s, max {summary['max_s']} s "
            f"over {summary['runs']} runs"
        )
        if "cold" in summary:
            line += f"; cold boots median {cold['median_s']} s (ratio {summary['ratio']})"
            line += (
                f"; QEMU CPU per boot {summary['qemu_cpu_median_s']} s vs "
                f"{cold['qemu_cpu_median_s']} s (ratio {summary['cpu_ratio']})"
            )
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from snapkit.cli import dispatch

    return dispatch(build_parser(), argv, (VmError,))
