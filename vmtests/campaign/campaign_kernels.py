"""Kernels as a campaign axis: one matrix run per kernel, merged into one report.

With one kernel the scenario ids stay as they always were, so ``vmtest run --scenario ID``
replays any id of a report. With several, every id gains ``@RELEASE`` (the kernel's
``uname -r``) so the same scenario on two kernels is two rows, and the report compares them
side by side. Each kernel's own run keeps plain ids in ``kernels/<slug>/``, where
``vmtest run --scenario ID --kernel SPEC`` replays it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from vmtests.campaign.oracle import Result


def slug(spec: str) -> str:
    """A folder name for a spec: ``debian:trixie/cloud-amd64`` -> ``debian-trixie-cloud-amd64``."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", spec).strip("-") or "kernel"


def tagged(results: Sequence[Result], kernel: dict[str, str], *, several: bool) -> list[Result]:
    """The results of one kernel's run, each carrying the kernel, ids suffixed when several."""
    out = []
    for r in results:
        rid = f"{base_id(r.id)}@{kernel['release']}" if several else r.id
        out.append(dataclasses.replace(r, id=rid, kernel=dict(kernel)))
    return out


def base_id(rid: str) -> str:
    """A scenario id without its kernel suffix: what ``--scenario`` takes."""
    return rid.split("@", 1)[0]


def releases(results: Sequence[Result]) -> list[str]:
    """The kernels in a report, in the order they first appear."""
    seen: list[str] = []
    for r in results:
        rel = r.kernel.get("release", "")
        if rel and rel not in seen:
            seen.append(rel)
    return seen


__all__ = ["base_id", "releases", "slug", "tagged"]
