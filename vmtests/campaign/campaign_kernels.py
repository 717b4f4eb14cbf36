"""Kernels as a campaign axis: one matrix run per kernel, merged into one report.

With one kernel the scenario ids stay as they always were, so ``vmtest run --scenario ID``
replays any id of a report. With several, every id gains ``@RELEASE`` (the kernel's
``uname -r``) so the same scenario on two kernels is two rows, and the report compares them
side by side. Each kernel's own run keeps plain ids in ``kernels/<slug>/``, where
``vmtest run --scenario ID --kernel SPEC`` replays it.

A row may need another flavour of the run's kernel (``Scenario.flavour``: reiserfs is in the
generic Debian flavour, not in the cloud one the harness boots by default). ``row_spec`` names
the kernel such a row boots; the plugin prepares its layer the first time a row asks, so a run
without such rows never fetches or builds it. The row's result carries the kernel it booted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from vmtests.campaign.oracle import Result
from vmtests.vm.kernel import spec

GENERIC = "generic"  # a Scenario.flavour: the run's Debian kernel line, generic flavour


def slug(spec: str) -> str:
    """A folder name for a spec: ``debian:trixie/cloud-amd64`` -> ``debian-trixie-cloud-amd64``."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", spec).strip("-") or "kernel"


def tagged(results: Sequence[Result], kernel: dict[str, str], *, several: bool) -> list[Result]:
    """The results of one kernel's run, each carrying the kernel, ids suffixed when several."""
    out = []
    for r in results:
        rid = f"{base_id(r.id)}@{kernel['release']}" if several else r.id
        # a row that booted another flavour (row_spec) keeps the kernel it booted
        out.append(dataclasses.replace(r, id=rid, kernel=dict(r.kernel or kernel)))
    return out


def row_spec(run_spec: str, flavour: str) -> str | None:
    """The kernel a row needing ``flavour`` boots when the run boots ``run_spec`` (a layer's
    canonical spec), or None for the run's own kernel: when the row needs nothing, when the run
    boots a user's kernel (the guest then says whether it can host the row), or when the run's
    flavour already is generic. ``debian:bookworm/cloud-amd64`` -> ``debian:bookworm/amd64``;
    ``debian:trixie/6.12-cloud-amd64`` -> ``debian:trixie/6.12-amd64``."""
    if flavour != GENERIC or not run_spec.startswith("debian:"):
        return None
    parsed = spec.parse(run_spec)
    assert isinstance(parsed, spec.DebianKernel)
    generic = parsed.flavour.replace("cloud-", "")
    if generic == parsed.flavour:
        return None
    return str(spec.DebianKernel(parsed.suite, generic))


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


__all__ = ["GENERIC", "base_id", "releases", "row_spec", "slug", "tagged"]
