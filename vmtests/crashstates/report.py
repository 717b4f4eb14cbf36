"""The crash-state figures, the acceptance, summary.md and the replay lines (pure)."""

from __future__ import annotations

from collections import Counter
from typing import Any

CONTROLS = ("skip-flush", "state-no-fsync", "cow-fua-drop")
# a group kind's (vmtests/guest/crashstates/group.py): a run of group kinds only must catch these
GROUP_CONTROLS = ("skip-flush", "group-split")
# cow-fua-drop drops the writes to a COW *file*'s metadata areas: only these methods have one
# (lvm's COW is an LV, lvm-thin has none), so a run of other kinds only cannot try it
COW_FILE_METHODS = ("dm", "dm-direct")


def flatten(kinds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(real states, control replays), each entry carrying its kind's fs and method."""
    real: list[dict[str, Any]] = []
    ctl: list[dict[str, Any]] = []
    for k in kinds:
        for s in k.get("states", []):
            entry = {**s, "fs": k["fs"], "method": k["method"], "kid": k["kid"]}
            (ctl if s.get("control") else real).append(entry)
    return real, ctl


def summary(kinds: list[dict[str, Any]], seconds: float, report: str) -> dict[str, Any]:
    real, ctl = flatten(kinds)
    grouped = [str(k["method"]).startswith("group-") for k in kinds]
    names = (CONTROLS if not all(grouped) or not kinds else ()) + (
        GROUP_CONTROLS if any(grouped) else ()
    )
    controls = {name: {"tried": 0, "caught": 0} for name in dict.fromkeys(names)}
    for s in real + ctl:
        for name, caught in (s.get("controls") or {}).items():
            controls[name]["tried"] += 1
            controls[name]["caught"] += bool(caught)
    for s in ctl:
        controls[s["control"]]["tried"] += 1
        controls[s["control"]]["caught"] += not s["ok"]
    failing = [s for s in real if not s["ok"]]
    return {
        "states": len(real),
        "states_ok": sum(bool(s["ok"]) for s in real),
        "acked_checked": sum(int(s.get("acked_checked", 0)) for s in real),
        "acked_lost": sum(int(s.get("acked_lost", 0)) for s in real),
        "suspended_left": sum(bool(s.get("suspended")) for s in real),
        "frozen_left": sum(bool(s.get("frozen")) for s in real),
        # reordered states in which LVM's own unflushed metadata commit tore (excused, counted)
        "lvm_metadata_torn": sum(bool(s.get("excused")) for s in real),
        "controls": controls,
        "by_operation": dict(sorted(Counter(s["operation"] for s in real).items())),
        "by_replayed": dict(sorted(Counter(s["replayed"] for s in real).items())),
        "by_fs_method": dict(sorted(Counter(f"{s['fs']} {s['method']}" for s in real).items())),
        "by_kind": {
            k["kid"]: {
                "fs": k["fs"],
                "method": k["method"],
                "states": len([s for s in k.get("states", []) if not s.get("control")]),
                "entries": k.get("entries", 0),
                "durable_points": k.get("durable_points", 0),
                "record_s": k.get("record_s"),
                "judge_s": k.get("judge_s"),
                "error": k.get("error", ""),
            }
            for k in kinds
        },
        "errors": [f"{k['kid']}: {k['error']}" for k in kinds if k.get("error")],
        "failures": [
            f"{s['kid']} cut {s['cut']} ({s['replayed']}, {s['operation']}): "
            + "; ".join(s["problems"])[:400]
            for s in failing
        ],
        "replay": [replay_line(s, report) for s in failing],
        "seconds": round(seconds, 1),
    }


def replay_line(state: dict[str, Any], report: str) -> str:
    """The command that judges ``state`` again from its kind's kept log: log, entry, seed.

    The seed is always printed, 0 for a durable point: the replay reads a non-zero seed as a
    reordered state's, and ``vmtest run`` without ``--seed`` would otherwise fill in the run's
    default seed, turning a flush or FUA point's line into a reordered draw it never named."""
    return (
        f"vmtest run --matrix crash-states --replay {report}/logs/{state['kid']} "
        f"--cut {state['cut']} --seed {int(state.get('seed') or 0)} -n 1 "
        f"--report {report}-replay-{state['kid']}-{state['cut']}"
    )


def passed(f: dict[str, Any]) -> bool:
    """Every real state holds, at least one was judged, nothing errored, and every control
    was tried and caught at least once -- cow-fua-drop only if a kind of the run has a COW
    file (``--methods lvm-thin`` alone could otherwise never pass)."""
    cow_file = any(k["method"] in COW_FILE_METHODS for k in f["by_kind"].values())
    return (
        f["states"] > 0
        and f["states_ok"] == f["states"]
        and not f["errors"]
        and f["acked_lost"] == 0
        and all(
            c["tried"] > 0 and c["caught"] > 0
            for name, c in f["controls"].items()
            if cow_file or name != "cow-fua-drop"
        )
    )


def table(f: dict[str, Any]) -> str:
    rows = [
        f"crash states: {f['states_ok']}/{f['states']} hold in {f['seconds']} s; acknowledged "
        f"writes {f['acked_checked']} checked, {f['acked_lost']} lost; suspended left "
        f"{f['suspended_left']}, frozen left {f['frozen_left']}",
        "per operation: " + ", ".join(f"{k} {v}" for k, v in f["by_operation"].items()),
        "per replay: " + ", ".join(f"{k} {v}" for k, v in f["by_replayed"].items()),
        *(
            [
                f"excused: {f['lvm_metadata_torn']} reordered state(s) whose LVM metadata tore "
                "(LVM writes text and header with no flush between; RELIABILITY.md)"
            ]
            if f.get("lvm_metadata_torn")
            else []
        ),
        "controls: "
        + ", ".join(f"{k} caught {v['caught']}/{v['tried']}" for k, v in f["controls"].items()),
    ]
    for kid, k in f["by_kind"].items():
        rows.append(
            f"  {kid:5} {k['fs']:5} {k['method']:9} {k['states']:4} states of "
            f"{k['durable_points']} durable points, {k['entries']} log entries, record "
            f"{k['record_s']} s, judge {k['judge_s']} s {k['error'][:200]}"
        )
    return "\n".join(rows)


def markdown(f: dict[str, Any], command: str) -> str:
    out = [
        "# crash states",
        "",
        f"`{command}`",
        "",
        "```",
        table(f),
        "```",
        "",
        f"passed: {passed(f)}",
    ]
    if f["failures"]:
        out += ["", "## failing states", ""] + [f"- {x}" for x in f["failures"]]
        out += ["", "## replay", ""] + [f"    {x}" for x in f["replay"]]
    return "\n".join(out) + "\n"


__all__ = [
    "CONTROLS",
    "COW_FILE_METHODS",
    "GROUP_CONTROLS",
    "flatten",
    "markdown",
    "passed",
    "replay_line",
    "summary",
    "table",
]
