"""``vmtest run``, ``vmtest report merge`` and ``vmtest bench campaign``.

``run`` is a pytest run of the campaign's parametrized tests (``-p vmtests.campaign.plugin``),
``-n`` spreads scenarios over VMs with pytest-xdist and every scenario is also an ordinary test
that can be run alone. The exit code comes from results.json, not from pytest: 0 only when every
real scenario that ran passed and every negative control was caught.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmtests.vm.kernel import spec

TREE = Path(__file__).resolve().parents[2]
TESTS = TREE / "tests" / "campaign" / "test_matrix.py"


def register(sub: Any, run_handler: Callable[[argparse.Namespace], int]) -> None:
    """Add run, report merge and bench campaign; ``run_handler`` runs ``vmtest run`` (vmtests.cli
    picks the campaign or the faults matrix, so neither package imports the other)."""
    run = sub.add_parser(
        "run",
        help="run the consistency campaign (scenarios in throwaway VMs)",
        description="Run campaign scenarios, each in its own VM, and write a report folder "
        "(results.json, junit.xml, report.html). Exit 0 only when every real scenario passes "
        "and every negative control is caught.",
    )
    _run_options(run)
    run.set_defaults(handler=run_handler)

    cl = sub.add_parser(
        "claims",
        help="measure the question's eleven claims and write CLAIMS.md",
        description="Run every campaign row that measures one of the claims the question's "
        "answers make (vmtests/campaign/claims.py) and write CLAIMS.md: per claim a verdict "
        "(holds, holds in part, does not hold, not measured) with the rows and figures behind "
        "it. Exit 0 when every claim was measured. With --from-report, judge an existing "
        "report folder without running anything.",
    )
    cl.add_argument(
        "--kernels",
        metavar="SPEC,...",
        help="the kernel(s) to measure on (e.g. debian:bookworm; default: the image's)",
    )
    cl.add_argument("-n", "--workers", default="2", metavar="N", help="parallel VMs (default 2)")
    cl.add_argument(
        "--report", type=Path, default=Path("report-claims"), help="(default: %(default)s)"
    )
    cl.add_argument("--out", type=Path, default=Path("CLAIMS.md"), help="(default: %(default)s)")
    cl.add_argument("--from-report", type=Path, metavar="DIR", help="judge DIR's results.json")
    cl.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    cl.set_defaults(handler=cmd_claims)

    rep = sub.add_parser("report", help="work with campaign reports")
    rsub = rep.add_subparsers(title="report commands", metavar="ACTION")
    merge = rsub.add_parser("merge", help="merge several report folders (e.g. CI shards)")
    merge.add_argument("folders", nargs="+", type=Path, metavar="DIR")
    merge.add_argument("--out", type=Path, default=Path("report"), help="(default: report)")
    merge.set_defaults(handler=cmd_report_merge)

    # `vmtest bench` belongs to vmtests/cli.py; its subcommand table gains "campaign" here.
    bench_parser = sub.choices.get("bench")
    if bench_parser is not None:
        bsub = next(a for a in bench_parser._actions if isinstance(a, argparse._SubParsersAction))
        bc = bsub.add_parser("campaign", help="per-scenario median and quick-matrix wall time")
        bc.add_argument("--matrix", default="quick", choices=("quick", "full"))
        bc.add_argument("-n", "--workers", default="2", help="parallel VMs (default 2)")
        bc.add_argument("--report", type=Path, default=Path("results/bench-campaign"))
        bc.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
        bc.add_argument("--json", action="store_true")
        bc.set_defaults(handler=cmd_bench_campaign)


CAMPAIGN = ("quick", "full")
FAULTS = ("faults",)
CRASH = ("crash-states",)

# The options that apply to some matrices only: dest -> (its flag, those matrices). Each runner
# reads only its own, so one given for the other matrix would be silently ignored: `vmtest
# run` refuses it instead (inapplicable). Their defaults are None or False, so "given" is a
# value; the faults runner fills in its own defaults.
ONLY: dict[str, tuple[str, tuple[str, ...]]] = {}


def _only(
    group: argparse._ActionsContainer, matrices: tuple[str, ...], *flags: str, **kw: Any
) -> None:
    action = group.add_argument(*flags, **kw)
    ONLY[action.dest] = (action.option_strings[-1], matrices)


def _run_options(p: argparse.ArgumentParser) -> None:
    """Four groups in --help: every matrix, the campaign's (quick, full), the faults', the
    crash states'."""
    common = p.add_argument_group("every matrix")
    campaign = p.add_argument_group("campaign matrices only (--matrix quick or full)")
    faults = p.add_argument_group("faults matrix only (--matrix faults)")
    crash = p.add_argument_group("crash states only (--matrix crash-states)")
    common.add_argument("--matrix", default="quick", choices=(*CAMPAIGN, *FAULTS, *CRASH))
    common.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="ID",
        help="run only this scenario id (repeatable; any id of the full matrix; for faults, "
        "a cut point id such as ext4-dm-create-p1s9)",
    )
    common.add_argument("--seed", type=int, help="replay with this seed (default: each id's own)")
    common.add_argument(
        "-n",
        "--workers",
        default="auto",
        metavar="N|auto",
        help="parallel VMs (default auto: one per CPU for the campaign, 2 for faults)",
    )
    common.add_argument("--report", type=Path, default=Path("report"), help="(default: report)")
    common.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    common.add_argument(
        "--cold-boot",
        action="store_true",
        help="boot every VM's kernel, never from a saved state (also $VMTEST_COLD_BOOT=1)",
    )
    spec.add_options(common, modules_to=campaign)
    ONLY["modules"] = ("--modules", CAMPAIGN)  # the faults runner boots $VMTEST_KERNEL alone
    _only(
        campaign, CAMPAIGN, "--shard", metavar="K/N", help="run the K-th of N deterministic slices"
    )
    _only(
        campaign,
        CAMPAIGN,
        "--kernels",
        metavar="SPEC,...",
        help="run the matrix once per kernel (e.g. debian:bookworm,debian:trixie); the ids "
        "then carry each kernel's release and the report compares the kernels",
    )
    _only(
        campaign,
        CAMPAIGN,
        "--no-live",
        action="store_true",
        help="plain lines instead of a live table",
    )
    _only(
        faults,
        FAULTS,
        "--cuts",
        type=int,
        metavar="N",
        help="run N seeded power-cut points (default 78, five sixths of them in create and "
        "merge; a number above the matrix's size runs every point)",
    )
    _only(
        faults,
        FAULTS,
        "--bad-inputs",
        type=int,
        metavar="N",
        help="run a seeded sample of N bad inputs (0: none; default: all of them)",
    )
    _only(
        faults,
        (*FAULTS, *CRASH),
        "--methods",
        metavar="M,...",
        help="cut points (or crash-state kinds) of these methods only (default "
        "dm,dm-direct,lvm; for faults the stacked dm+crypt and lvm+crypt -- a filesystem on "
        "dm-crypt over the base -- only when named; for crash states lvm-thin, a thin origin "
        "in a thin pool, and the snapshot-group kinds group-dm, group-dm-direct and group-lvm "
        "-- two filesystems under one group, ext4 and xfs only -- only when named)",
    )
    _only(
        faults,
        FAULTS,
        "--phases",
        metavar="P,...",
        help="cut points of these phases only (default create,merge,discard,extend; "
        "merge-sibling -- merge a snapshot while a sibling snapshot of the same origin exists, "
        "and judge that the sibling keeps exactly its own point in time -- only when named, "
        "for the methods dm and lvm: dm-direct's origin is itself a snapshot table, so it "
        "cannot have a sibling; with --phases and no --cuts, every point of the phases runs)",
    )
    _only(
        faults, (*FAULTS, *CRASH), "--json", action="store_true", help="print the summary as JSON"
    )
    _only(
        crash,
        CRASH,
        "--states",
        type=int,
        metavar="N",
        help="judge about N crash states, shared evenly over the kinds (default 1080)",
    )
    _only(crash, CRASH, "--fs", metavar="FS,...", help="these filesystems only (default all)")
    _only(
        crash,
        CRASH,
        "--replay",
        type=Path,
        metavar="DIR",
        help="judge again one state of a kept log (REPORT/logs/KID, from a replay line)",
    )
    _only(crash, CRASH, "--cut", type=int, metavar="N", help="with --replay: the state's entry")
    _only(
        crash,
        CRASH,
        "--operations",
        metavar="OP,...",
        help="also record these opt-in operations: extend (snapshot watch --once grows the "
        "second snapshot's COW before its discard; dm and lvm kinds)",
    )


def inapplicable(args: argparse.Namespace) -> str | None:
    """Why an option given to ``vmtest run`` does not apply to its ``--matrix``, or None."""
    for dest, (flag, matrices) in ONLY.items():
        value = getattr(args, dest, None)
        if args.matrix not in matrices and value is not None and value is not False:
            return f"{flag} applies to --matrix {' or '.join(matrices)}, not {args.matrix}"
    return None


def pytest_args(args: argparse.Namespace) -> list[str]:
    argv = [
        "-p",
        "vmtests.campaign.plugin",
        str(TESTS),
        "--rootdir",
        str(TREE),
        "-c",
        str(TREE / "pyproject.toml"),
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:terminal",
        "--matrix",
        args.matrix,
        "--report",
        str(args.report.resolve()),
        "--vm-accel",
        args.accel,
    ]
    if getattr(args, "kernel", None):
        argv += ["--vm-kernel", args.kernel]
    if getattr(args, "modules", None):
        argv += ["--vm-modules", str(args.modules)]
    for sid in args.scenario:
        argv += ["--scenario", sid]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if getattr(args, "shard", None):
        argv += ["--shard", args.shard]
    if args.workers not in ("0", "1"):
        argv += ["-n", args.workers]
    if not getattr(args, "no_live", True):
        argv += ["--live"]
    return argv


def _pytest(args: argparse.Namespace) -> int:
    import pytest

    from vmtests.campaign import report, scenarios

    try:
        scenarios.select(args.matrix, ids=args.scenario, seed=args.seed, shard_spec=args.shard)
    except ValueError as exc:
        print(f"vmtest run: {exc}", file=sys.stderr)
        return 2
    results_file = args.report / "results.json"
    results_file.unlink(missing_ok=True)
    code = int(pytest.main(pytest_args(args)))
    if not results_file.exists():
        print(
            f"vmtest run: pytest ended ({code}) without results; rerun with "
            f"'pytest {' '.join(pytest_args(args)[:3])}' to see why",
            file=sys.stderr,
        )
        return code or 1
    return report.exit_code(report.load(args.report))


def cmd_run(args: argparse.Namespace) -> int:
    """``vmtest run`` of a campaign matrix (quick or full), once per kernel with --kernels."""
    if not getattr(args, "kernels", None):
        return _pytest(args)
    return _run_kernels(args)


def _run_kernels(args: argparse.Namespace) -> int:
    """One run per kernel into REPORT/kernels/<slug>, then one merged report in REPORT.

    Every layer is prepared up front, so a refused kernel stops the run before any scenario."""
    from vmtests.campaign import campaign_kernels, report
    from vmtests.vm import guest_image
    from vmtests.vm.errors import ImageError

    try:
        specs = spec.split_list(args.kernels)
        images = [guest_image.prepare(s) for s in specs]
    except ImageError as exc:
        print(f"vmtest run: {exc}", file=sys.stderr)
        return 1
    merged = []
    for text, img in zip(specs, images, strict=True):
        sub = args.report / "kernels" / campaign_kernels.slug(img.layer.spec)
        print(f"== kernel {img.layer.spec}: {img.release} -> {sub}", flush=True)
        one = argparse.Namespace(**{**vars(args), "kernel": text, "modules": None, "report": sub})
        _pytest(one)
        if (sub / "results.json").exists():
            kernel = {"spec": img.layer.spec, "release": img.release}
            merged += campaign_kernels.tagged(report.load(sub), kernel, several=len(specs) > 1)
    report.write_all(args.report, merged)
    return report.exit_code(merged)


def _run_args(
    args: argparse.Namespace, matrix: str, ids: list[str], *, kernels: str | None = None
) -> argparse.Namespace:
    """What ``vmtest run`` would have parsed, for a command that runs the campaign itself
    (``claims``, ``bench campaign``): its workers, report folder and accel, plain lines."""
    return argparse.Namespace(
        matrix=matrix,
        scenario=ids,
        seed=None,
        shard=None,
        workers=args.workers,
        report=args.report,
        accel=args.accel,
        no_live=True,
        kernel=None,
        modules=None,
        kernels=kernels,
    )


def cmd_claims(args: argparse.Namespace) -> int:
    """``vmtest claims``: the claims' rows through the campaign runner, then CLAIMS.md."""
    from vmtests.campaign import claims, report, scenarios

    known = {s.id for s in scenarios.full()}
    wanted = [i for i in claims.scenario_ids() if i in known]
    started = time.monotonic()
    folder, seconds = args.from_report, None
    if folder is None:
        run_args = _run_args(args, "full", wanted, kernels=args.kernels)
        print(f"vmtest claims: {len(wanted)} rows -> {args.report}", flush=True)
        cmd_run(run_args)
        folder, seconds = args.report, time.monotonic() - started
    if not (folder / "results.json").exists():
        print(f"vmtest claims: no results.json in {folder}", file=sys.stderr)
        return 1
    results = report.load(folder)
    command = "vmtest claims" + (f" --kernels {args.kernels}" if args.kernels else "")
    kernels = sorted({r.kernel.get("release", "") for r in results} - {""})
    text = claims.render(
        results, command=command, kernel=", ".join(kernels) or "the image's", seconds=seconds
    )
    args.out.write_text(text)
    report.write_all(folder, results, claims.render_html(results))  # report.html's section
    found = claims.judge(results)
    for claim, finding in found:
        print(f"claim {claim.number:2}: {finding.verdict}")
    print(f"wrote {args.out}" + (f" in {seconds / 60:.1f} min" if seconds else ""))
    return 0 if all(f.verdict != claims.UNMEASURED for _, f in found) else 1


def cmd_report_merge(args: argparse.Namespace) -> int:
    from vmtests.campaign import report

    missing = [str(f) for f in args.folders if not (f / "results.json").exists()]
    if missing:
        print(f"vmtest report merge: no results.json in {', '.join(missing)}", file=sys.stderr)
        return 1
    results = report.merge(args.folders, args.out)
    print(f"merged {len(results)} scenarios from {len(args.folders)} reports into {args.out}")
    return report.exit_code(results)


def cmd_bench_campaign(args: argparse.Namespace) -> int:
    from vmtests.campaign import report

    run_args = _run_args(args, args.matrix, [])
    t0 = time.monotonic()
    code = _pytest(run_args)
    wall = time.monotonic() - t0
    results = report.load(args.report) if (args.report / "results.json").exists() else []
    ran = [r.duration_s for r in results if r.verdict.ran]
    summary = {
        "matrix": args.matrix,
        "workers": args.workers,
        "scenarios_run": len(ran),
        "scenarios_skipped": len(results) - len(ran),
        "median_scenario_s": round(statistics.median(ran), 2) if ran else None,
        "max_scenario_s": round(max(ran), 2) if ran else None,
        "wall_s": round(wall, 1),
        "exit": code,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"campaign bench ({args.matrix}, {args.workers} workers): median scenario "
            f"{summary['median_scenario_s']} s (goal <= 12 s), wall {summary['wall_s']} s "
            f"(goal <= 180 s), {len(ran)} run, {summary['scenarios_skipped']} skipped"
        )
    return code
