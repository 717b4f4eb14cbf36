"""Code that runs inside the guest on Debian's python3: standard library only (and snapkit).

Every guest script is started through :func:`command`, from the host and from other guest
scripts alike, so a script's place in this package is written down once: here, as its dotted
name under ``vmtests.guest`` (``"campaign.scenario"``, ``"faults.hostile"``, ``"writer"``).
"""

from __future__ import annotations

from pathlib import Path

GUEST_ROOT = "/src/vmtests/guest"  # where every boot's payload puts this package in the guest
PYTHON = ("python3", "-I", "-S")  # isolated, no site: under TCG every import is paid dearly
_HERE = Path(__file__).resolve().parent


def script(module: str) -> str:
    """The in-guest path of the guest script ``module``; a name with no file here is a bug in
    the caller, caught on the host before any VM boots."""
    relative = module.replace(".", "/") + ".py"
    if not (_HERE / relative).is_file():
        raise ValueError(f"no guest script vmtests.guest.{module} ({_HERE / relative})")
    return f"{GUEST_ROOT}/{relative}"


def command(module: str, *args: str) -> list[str]:
    """The guest argv that runs ``module`` as a script with ``args``: by path, so the script's
    own folder is on ``sys.path`` as each script expects."""
    return [*PYTHON, script(module), *args]


__all__ = ["GUEST_ROOT", "PYTHON", "command", "script"]
