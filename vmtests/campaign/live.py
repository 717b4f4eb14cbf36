"""The campaign's controller side: collect each scenario's result as its test report arrives
(from this process or from a pytest-xdist worker), show progress live, and write the report.

With ``--live`` on a terminal, a rich table redraws one line per scenario with its state;
otherwise one plain line is printed per finished scenario, which is what CI logs want.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from vmtests.campaign import oracle, report
from vmtests.campaign.oracle import Result
from vmtests.campaign.scenarios import Scenario

RESULT_KEY = "campaign_result"  # the user_properties key a worker's result travels under
STYLE = {
    "queued": "dim",
    "running": "yellow",
    "pass": "green",
    "caught": "blue",
    "fail": "bold red",
    "skipped": "dim",
    "refused": "dim",
    "lost": "yellow",
    "error": "magenta",
}


def _scenario_id(nodeid: str) -> str:
    return nodeid[nodeid.index("[") + 1 : -1] if nodeid.endswith("]") else nodeid


class Collector:
    def __init__(self, folder: Path, scenarios: Sequence[Scenario], *, live: bool) -> None:
        self.folder = folder
        self.scenarios = {s.id: s for s in scenarios}
        self.results: dict[str, Result] = {}
        self.states: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.live_wanted = live and sys.stdout.isatty()
        self.live: Any = None
        self.t0 = time.monotonic()

    # -- pytest hooks ------------------------------------------------------------------------
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        for sid in self.scenarios:
            self.states[sid] = "queued"
        if self.live_wanted:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                self._render(), console=Console(), refresh_per_second=4, get_renderable=self._render
            )
            self.live.start()

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        sid = _scenario_id(nodeid)
        if sid in self.states:
            self.states[sid] = "running"
            self.started[sid] = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        sid = _scenario_id(report.nodeid)
        for key, value in report.user_properties:
            if key == RESULT_KEY and report.when == "call":
                result = Result.from_json(json.loads(str(value)))
                self.results[result.id] = result
                self._finished(result)
                return
        if report.failed and sid not in self.results and sid in self.states:
            self.states[sid] = "fail"  # setup error (no image, ...) before any result existed
            self._say(f"{sid}: error in {report.when}: {str(report.longrepr)[-300:]}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.live is not None:
            self.live.stop()
        results = list(self.results.values())
        for sid, state in self.states.items():
            if sid not in self.results and state == "fail":
                scenario = self.scenarios[sid]
                results.append(oracle.no_result(scenario, 0.0, "the test errored before a result"))
        report.write_all(self.folder, results)
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        if results:
            console.print(report.summary_table(results))
        code = report.exit_code(results)
        total = time.monotonic() - self.t0
        console.print(
            f"report: {self.folder / 'report.html'}  ({len(results)} scenarios, "
            f"{total:.0f} s) -> {'OK' if code == 0 else 'FAILED'}"
        )

    # -- display -----------------------------------------------------------------------------
    def _finished(self, r: Result) -> None:
        self.states[r.id] = str(r.verdict)
        if self.live is None:
            extra = f" ({r.reason})" if r.reason else ""
            self._say(f"{r.verdict:>7}  {r.id}  {r.duration_s:.1f}s{extra}")

    def _say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text)
        else:
            print(text, flush=True)

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("scenario")
        table.add_column("state")
        table.add_column("time", justify="right")
        table.add_column("detail", overflow="ellipsis", max_width=70)
        now = time.monotonic()
        for sid, state in self.states.items():
            r = self.results.get(sid)
            if r is not None:
                took, detail = (
                    f"{r.duration_s:.1f}s",
                    r.reason
                    or (
                        f"{r.acked_writes_checked} acked writes checked, "
                        f"freeze {r.freeze_window_ms} ms"
                    ),
                )
            elif state == "running":
                took, detail = f"{now - self.started.get(sid, now):.0f}s", ""
            else:
                took, detail = "", ""
            table.add_row(sid, f"[{STYLE.get(state, '')}]{state}[/]", took, detail)
        done = sum(1 for s in self.states.values() if s not in ("queued", "running"))
        table.caption = f"{done}/{len(self.states)} done, {now - self.t0:.0f} s"
        return table
