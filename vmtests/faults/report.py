"""Power cuts, summed up: the figures of issue 6 for results.json, the terminal and
RELIABILITY.md -- cut points per phase x filesystem x method, acknowledged writes checked and
lost, devices left suspended and filesystems left frozen, negative controls caught, bad inputs
tried and refused cleanly, and the acceptance verdict. Pure: results in, figures out.
"""

from __future__ import annotations

from typing import Any

from vmtests.faults.matrix import (
    ALL_FILESYSTEMS,
    ALL_METHODS,
    ALL_PHASES,
    MAIN_PHASES,
    SIBLING_PHASE,
)

ACCEPT_CREATE_MERGE = 60
ACCEPT_BAD_INPUTS = 30
ACCEPT_SECONDS = 15 * 60


def summary(
    results: list[dict[str, Any]], bad: dict[str, Any] | None, seconds: float
) -> dict[str, Any]:
    per: dict[str, list[int]] = {}
    for r in results:
        cell = per.setdefault(f"{r['phase']}/{r['fs']}/{r['method']}", [0, 0])
        cell[0] += 1
        cell[1] += bool(r.get("ok"))
    controls: dict[str, list[int]] = {}
    for r in results:
        for name, caught in (r.get("controls") or {}).items():
            c = controls.setdefault(name, [0, 0])
            c[0] += 1
            c[1] += bool(caught)
    create_merge = sum(r["phase"] in MAIN_PHASES for r in results)
    bad = bad or {}
    figures: dict[str, Any] = {
        "cuts": len(results),
        "cuts_ok": sum(bool(r.get("ok")) for r in results),
        "cuts_create_merge": create_merge,
        "per_phase_fs_method": {k: {"cuts": v[0], "ok": v[1]} for k, v in sorted(per.items())},
        "acked_checked": sum(int(r.get("acked_checked", 0)) for r in results),
        "acked_lost": sum(int(r.get("acked_lost", 0)) for r in results),
        "snapshots_active": sum(r.get("snapshot") == "active" for r in results),
        "snapshots_absent": sum(r.get("snapshot") == "absent" for r in results),
        "suspended_left": sum(len(r.get("suspended", [])) for r in results),
        "frozen_left": sum(len(r.get("frozen", [])) for r in results),
        "controls": {k: {"tried": v[0], "caught": v[1]} for k, v in sorted(controls.items())},
        "bad_inputs_tried": int(bad.get("tried", 0)),
        "bad_inputs_refused_cleanly": int(bad.get("refused_cleanly", 0)),
        "bad_inputs_controls": int(bad.get("controls", 0)),
        "bad_inputs_controls_caught": int(bad.get("controls_caught", 0)),
        "bad_inputs_error": str(bad.get("error", "")),
        "seconds": round(seconds, 1),
        "worker_seconds_per_cut": round(
            sum(float(r.get("seconds", 0)) for r in results) / max(1, len(results)), 1
        ),
        "failures": [_failure(r) for r in results if not r.get("ok")],
        "replay": [r["replay"] for r in results if not r.get("ok") and "replay" in r],
    }
    siblings = [r for r in results if r["phase"] == SIBLING_PHASE]
    if siblings:  # a merge-sibling run (issue 17); a default run's figures stay issue 6's
        figures["siblings_checked"] = len(siblings)
        figures["siblings_exact"] = sum(r.get("sibling_equal") is True for r in siblings)
        figures["sibling_acked_checked"] = sum(
            int(r.get("sibling_acked_checked", 0)) for r in siblings
        )
        figures["sibling_acked_lost"] = sum(int(r.get("sibling_lost", 0)) for r in siblings)
    figures["acceptance"] = acceptance(figures)
    return figures


def _failure(r: dict[str, Any]) -> str:
    return f"{r['id']}: {'; '.join(r.get('problems', []))}"


def _verdict(what: str, held: bool) -> str:
    return f"{'ok' if held else 'MISSED'} {what}"


def acceptance(f: dict[str, Any]) -> dict[str, bool]:
    """Issue 6's bar, each line on its own, so a report says which one a run missed."""
    controls_ok = all(c["caught"] == c["tried"] for c in f["controls"].values())
    return {
        f"create+merge cuts >= {ACCEPT_CREATE_MERGE}": (
            f["cuts_create_merge"] >= ACCEPT_CREATE_MERGE
        ),
        "every cut held": f["cuts_ok"] == f["cuts"],
        "0 acknowledged writes lost": f["acked_lost"] == 0,
        "0 devices suspended, 0 filesystems frozen": not (f["suspended_left"] or f["frozen_left"]),
        "every negative control caught": controls_ok
        and f["bad_inputs_controls_caught"] == f["bad_inputs_controls"],
        f"bad inputs >= {ACCEPT_BAD_INPUTS}, all refused cleanly": (
            f["bad_inputs_tried"] >= ACCEPT_BAD_INPUTS
            and f["bad_inputs_refused_cleanly"] == f["bad_inputs_tried"]
        ),
        f"run time <= {ACCEPT_SECONDS // 60} min": f["seconds"] <= ACCEPT_SECONDS,
    }


def passed(f: dict[str, Any]) -> bool:
    """The exit status: what this run set out to do held (a small slice is not judged on
    the acceptance's sizes or time)."""
    return (
        f["cuts_ok"] == f["cuts"]
        and f["acked_lost"] == 0
        and not (f["suspended_left"] or f["frozen_left"])
        and all(c["caught"] == c["tried"] for c in f["controls"].values())
        and f["bad_inputs_controls_caught"] == f["bad_inputs_controls"]
        and f["bad_inputs_refused_cleanly"] == f["bad_inputs_tried"]
        and not f["bad_inputs_error"]
    )


def _grid(f: dict[str, Any]) -> list[list[str]]:
    """Cuts held/tried per phase (rows) x filesystem/method (columns), header first; only
    the columns a run has, so a default run's table is issue 6's and a stacked run's its own."""
    cols = [(fs, m) for fs in ALL_FILESYSTEMS for m in ALL_METHODS]
    cols = [c for c in cols if any(k.endswith(f"/{c[0]}/{c[1]}") for k in f["per_phase_fs_method"])]
    rows = [["phase"] + [f"{fs}/{m}" for fs, m in cols] + ["all"]]
    for phase in ALL_PHASES:
        cells = [f["per_phase_fs_method"].get(f"{phase}/{fs}/{m}") for fs, m in cols]
        if not any(cells):
            continue
        ok = sum(c["ok"] for c in cells if c)
        n = sum(c["cuts"] for c in cells if c)
        rows.append(
            [phase] + [f"{c['ok']}/{c['cuts']}" if c else "-" for c in cells] + [f"{ok}/{n}"]
        )
    return rows


def markdown(f: dict[str, Any], command: str) -> str:
    """The same figures as a RELIABILITY.md section, to paste after a measured run."""
    rows = _grid(f)
    lines = [
        f"Run: `{command}`",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + " --- |" * len(rows[0]),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", *(f"- {line}" for line in _figures(f))]
    return "\n".join(lines) + "\n"


def table(f: dict[str, Any]) -> str:
    """Cuts held/tried per phase (rows) x filesystem/method (columns), then the figures."""
    rows = _grid(f)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, "", *_figures(f)])


def _figures(f: dict[str, Any]) -> list[str]:
    ctl = ", ".join(f"{k} {v['caught']}/{v['tried']}" for k, v in f["controls"].items())
    sibling = (
        [
            f"sibling snapshots exactly their own point in time: {f['siblings_exact']}/"
            f"{f['siblings_checked']} (acknowledged files in them: "
            f"{f['sibling_acked_checked']} checked, {f['sibling_acked_lost']} lost)"
        ]
        if "siblings_checked" in f
        else []
    )
    return [
        f"cuts held: {f['cuts_ok']}/{f['cuts']} ({f['cuts_create_merge']} in create or merge)",
        f"acknowledged writes: {f['acked_checked']} checked, {f['acked_lost']} lost",
        f"snapshots after recover: {f['snapshots_active']} active, "
        f"{f['snapshots_absent']} cleanly absent",
        f"left behind: {f['suspended_left']} devices suspended, "
        f"{f['frozen_left']} filesystems frozen",
        *sibling,
        f"negative controls caught: {ctl or 'none run'}",
        f"bad inputs: {f['bad_inputs_refused_cleanly']}/{f['bad_inputs_tried']} refused cleanly, "
        f"{f['bad_inputs_controls_caught']}/{f['bad_inputs_controls']} controls caught",
        f"time: {f['seconds']} s wall, {f['worker_seconds_per_cut']} s of worker time per cut",
        "acceptance: " + "; ".join(_verdict(k, v) for k, v in f["acceptance"].items()),
    ]


__all__ = ["acceptance", "markdown", "passed", "summary", "table"]
