"""The campaign's outputs: results.json, junit.xml, report.html, the terminal summary, merging.

Everything here is a pure function of a list of ``Result`` rows, so a merged report (CI shards)
is produced by exactly the code that produced each shard's, and the unit tests need no VM.
"""

from __future__ import annotations

import html
import json
import shutil
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmtests.campaign.campaign_kernels import base_id, releases
from vmtests.campaign.oracle import Result, Verdict
from vmtests.campaign.scenarios import FILESYSTEMS, METHODS

COLOURS = {
    "pass": "#2e9e44",
    "caught": "#2b6cb0",
    "fail": "#c53030",
    "skipped": "#a0a0a0",
    "refused": "#718096",
    "error": "#b7791f",
    "lost": "#805ad5",
}
TERMINAL = {
    "pass": "green",
    "caught": "blue",
    "fail": "red",
    "skipped": "dim",
    "refused": "dim",
    "error": "magenta",
    "lost": "yellow",
}
LOGS = (
    "runner.log",
    "guest.log",
    "console.log",
    "fsck.txt",
    "fio.txt",
    "ledger.jsonl",
    "result.json",
    "harness.log",
    "unpack.log",
    "snapshot.img.gz",
)


def exit_code(results: Sequence[Result]) -> int:
    """0 only when every real scenario that ran passed and every control was caught."""
    ran = [r for r in results if r.verdict.ran]
    return 0 if ran and all(r.verdict.ok for r in results) else 1


def load(folder: Path) -> list[Result]:
    data = json.loads((folder / "results.json").read_text())
    return [Result.from_json(row) for row in data]


def write_all(folder: Path, results: Sequence[Result], extra_html: str = "") -> None:
    """``extra_html``: a section put before the matrix (``vmtest claims``' verdicts)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = sorted(results, key=lambda r: r.id)
    (folder / "results.json").write_text(json.dumps([r.to_json() for r in rows], indent=1) + "\n")
    (folder / "junit.xml").write_bytes(junit(rows))
    (folder / "report.html").write_text(html_report(rows, folder, extra_html))


def merge(folders: Iterable[Path], out: Path) -> list[Result]:
    """One report from several (e.g. CI shards); a scenario seen twice keeps its last result."""
    by_id: dict[str, Result] = {}
    out.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for r in load(folder):
            by_id[r.id] = r
        src = folder / "scenarios"
        if src.is_dir() and src.resolve() != (out / "scenarios").resolve():
            shutil.copytree(src, out / "scenarios", dirs_exist_ok=True)
    results = [_relocated(r, out) for r in by_id.values()]
    write_all(out, results)
    return results


def _relocated(r: Result, out: Path) -> Result:
    folder = out / "scenarios" / r.id
    return Result(**{**r.__dict__, "artifacts": str(folder) if folder.is_dir() else ""})


def junit(results: Sequence[Result]) -> bytes:
    suite = ET.Element(
        "testsuite",
        name="snapkit-campaign",
        tests=str(len(results)),
        failures=str(sum(r.verdict is Verdict.FAIL for r in results)),
        errors=str(sum(r.verdict in (Verdict.ERROR, Verdict.LOST) for r in results)),
        skipped=str(sum(not r.verdict.ran for r in results)),
        time=f"{sum(r.duration_s for r in results):.2f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=f"campaign.{r.fs}", name=r.id, time=f"{r.duration_s:.2f}"
        )
        props = ET.SubElement(case, "properties")
        if r.kernel:
            ET.SubElement(props, "property", name="kernel", value=r.kernel.get("spec", ""))
            ET.SubElement(props, "property", name="uname_r", value=r.kernel.get("release", ""))
        for key in (
            "verdict",
            "seed",
            "repro",
            "acked_writes_checked",
            "acked_writes_lost",
            "torn",
            "holes",
            "freeze_window_ms",
        ):
            ET.SubElement(props, "property", name=key, value=str(getattr(r, key)))
        if r.verdict is Verdict.FAIL:
            ET.SubElement(case, "failure", message=r.reason[:500]).text = r.repro
        elif r.verdict in (Verdict.ERROR, Verdict.LOST):  # JUnit's word: "could not run"
            ET.SubElement(case, "error", message=r.reason[:500]).text = r.repro
        elif not r.verdict.ran:
            ET.SubElement(case, "skipped", message=r.reason)
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data


# -- HTML ----------------------------------------------------------------------------------
def _badge(r: Result, href: str) -> str:
    tip = html.escape(f"{r.id}: {r.verdict} {r.reason}")
    return (
        f'<a class="b" href="{href}" title="{tip}" style="background:{COLOURS[r.verdict]}">'
        f"{html.escape(r.workload)}</a>"
    )


def grid(results: Sequence[Result]) -> str:
    rows_keys = [m for m in METHODS if any(r.method == m for r in results)]
    rows_keys += sorted({f"control: {r.control_kind}" for r in results if r.control})
    head = "".join(f"<th>{fs}</th>" for fs in FILESYSTEMS)
    body = []
    for key in rows_keys:
        cells = []
        for fs in FILESYSTEMS:
            here = [
                r
                for r in results
                if r.fs == fs
                and (r.method == key if not r.control else f"control: {r.control_kind}" == key)
            ]
            cells.append("<td>" + " ".join(_badge(r, f"#{r.id}") for r in here) + "</td>")
        body.append(f"<tr><th>{html.escape(key)}</th>{''.join(cells)}</tr>")
    return f"<table class='grid'><tr><th></th>{head}</tr>{''.join(body)}</table>"


def kernel_table(results: Sequence[Result]) -> str:
    """One row per scenario, one column per kernel: a verdict that differs between kernels
    shows at a glance (the row is marked). Empty with fewer than two kernels."""
    kernels = releases(results)
    if len(kernels) < 2:
        return ""
    cells: dict[str, dict[str, Result]] = {}
    for r in results:
        cells.setdefault(base_id(r.id), {})[r.kernel.get("release", "")] = r
    head = "".join(f"<th>{html.escape(k)}</th>" for k in kernels)
    body = []
    for sid in sorted(cells):
        row = cells[sid]
        verdicts = {str(row[k].verdict) for k in kernels if k in row}
        mark = " style='outline:3px solid #c53030'" if len(verdicts) > 1 else ""
        tds = "".join(
            f"<td>{_badge(row[k], '#' + html.escape(row[k].id))}</td>" if k in row else "<td></td>"
            for k in kernels
        )
        body.append(f"<tr{mark}><th>{html.escape(sid)}</th>{tds}</tr>")
    return (
        "<h2>Kernels</h2><p>A row outlined in red has different verdicts on different "
        f"kernels.</p><table class='grid'><tr><th></th>{head}</tr>{''.join(body)}</table>"
    )


def freeze_plot(results: Sequence[Result], width: int = 640) -> str:
    """Inline SVG: one row per method, a dot per scenario's freeze window, a bar at the median."""
    points: dict[str, list[float]] = {}
    for r in results:
        if not r.control and r.freeze_window_ms is not None and r.verdict.ran:
            points.setdefault(r.method, []).append(float(r.freeze_window_ms))
    if not points:
        return "<p>No freeze windows measured.</p>"
    top = max(max(v) for v in points.values()) or 1.0
    left, row_h = 110, 28
    height = row_h * len(points) + 40
    scale = (width - left - 20) / top
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">'
    ]
    for i, (method, values) in enumerate(sorted(points.items())):
        y = 20 + i * row_h
        parts.append(f'<text x="4" y="{y + 4}">{html.escape(method)}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#ddd"/>')
        med = statistics.median(values)
        mx = left + med * scale
        parts.append(
            f'<line x1="{mx:.1f}" y1="{y - 9}" x2="{mx:.1f}" y2="{y + 9}" '
            f'stroke="#333" stroke-width="2"><title>median {med:.1f} ms</title></line>'
        )
        for v in values:
            parts.append(
                f'<circle cx="{left + v * scale:.1f}" cy="{y}" r="4" fill="#2b6cb0" '
                f'fill-opacity="0.6"><title>{v:.1f} ms</title></circle>'
            )
    axis_y = height - 12
    for k in range(5):
        v = top * k / 4
        x = left + v * scale
        parts.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="middle">{v:.0f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def _details(r: Result, folder: Path) -> str:
    fields = [
        "verdict",
        "reason",
        "fsck_ok",
        "acked_writes_checked",
        "acked_writes_lost",
        "torn",
        "holes",
        "refused",
        "future_writes",
        "window_new",
        "window_old",
        "freeze_window_ms",
        "snapshot_window_ms",
        "duration_s",
        "seed",
        "attempts",
        "catch_rate",
        "caught_by",
        "checks",
        "errors",
        "repro",
    ]
    rows = "".join(
        f"<tr><th>{k}</th><td>{html.escape(str(getattr(r, k)))}</td></tr>" for k in fields
    )
    logs = []
    base = folder / "scenarios" / r.id
    for name in LOGS:
        if (base / name).exists():
            logs.append(f'<a href="scenarios/{r.id}/{name}">{name}</a>')
    colour = COLOURS[r.verdict]
    return (
        f'<details id="{r.id}"><summary><span class="b" style="background:{colour}">'
        f"{r.verdict}</span> {html.escape(r.id)}</summary><table>{rows}</table>"
        f"<p>logs: {' | '.join(logs) or 'none'}</p></details>"
    )


def html_report(results: Sequence[Result], folder: Path, extra_html: str = "") -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in Verdict}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    style = (
        "body{font-family:sans-serif;margin:2em}.grid td,.grid th{border:1px solid #ccc;"
        "padding:4px 8px}.grid{border-collapse:collapse}.b{color:#fff;padding:1px 6px;"
        "border-radius:3px;text-decoration:none;margin:1px;display:inline-block}"
        "details{margin:4px 0}details table{margin:6px 0 6px 2em;font-size:13px}"
        "details th{text-align:left;padding-right:1em}"
    )
    verdict = "PASSED" if exit_code(results) == 0 else "FAILED"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>snapkit campaign"
        f"</title><style>{style}</style></head><body><h1>snapkit consistency campaign: "
        f"{verdict}</h1><p>{summary}</p>{extra_html}{kernel_table(results)}"
        f"<h2>Matrix</h2>{grid(results)}"
        f"<h2>Freeze window per method</h2><p>Longest gap between acknowledged writes "
        f"during the snapshot command (ms).</p>{freeze_plot(results)}"
        f"<h2>Scenarios</h2>{''.join(_details(r, folder) for r in results)}"
        f"</body></html>"
    )


# -- terminal ------------------------------------------------------------------------------
def summary_table(results: Sequence[Result]):  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title="snapkit consistency campaign", show_lines=False)
    for col in ("scenario", "verdict", "fsck", "acked", "lost", "torn", "freeze ms", "s", "note"):
        table.add_column(col, overflow="fold")
    for r in sorted(results, key=lambda r: (r.control, r.id)):
        colour = TERMINAL[r.verdict]
        table.add_row(
            r.id,
            f"[{colour}]{r.verdict}[/]",
            "-" if r.fsck_ok is None else ("ok" if r.fsck_ok else "BAD"),
            str(r.acked_writes_checked),
            str(r.acked_writes_lost),
            str(r.torn) + (f" +{r.holes} hole(s)" if r.holes else ""),
            "-" if r.freeze_window_ms is None else f"{r.freeze_window_ms:.0f}",
            f"{r.duration_s:.1f}",
            r.reason[:90],
        )
    return table
