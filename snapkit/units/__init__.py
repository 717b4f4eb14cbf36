"""The systemd units snapkit ships, and putting them in place (``snapkit install-units``).

The unit files here are templates whose ``ExecStart`` names ``@SNAPKIT@``: the path of the
``snapkit`` command that installs them is written in instead, so a unit runs the very snapkit
(and Python, and venv) it was installed from, and nothing depends on PATH at boot.

Installing refuses, before writing anything, to overwrite a unit file that differs (a local
edit, or an older snapkit's) unless forced, and writes each file whole (a temporary file
renamed into place), so a failure never leaves a half-written unit for systemd to read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from snapkit.errors import RefusedError, ValidationError

FOLDER = Path(__file__).resolve().parent
NAMES = ("snapkit-recover.service", "snapkit-watch@.service")
PLACEHOLDER = "@SNAPKIT@"
DEFAULT_DIR = Path("/etc/systemd/system")
NEXT_STEP = "systemctl daemon-reload && systemctl enable snapkit-recover.service"
# What systemd would read as a word break, a quote, a specifier (%) or a variable ($) in a path.
_UNSAFE = frozenset(" \t\n\"'\\%$;")


def template(name: str) -> str:
    """The shipped unit file ``name``, its ExecStart still naming ``@SNAPKIT@``."""
    return (FOLDER / name).read_text()


def render(name: str, snapkit: Path) -> str:
    """The unit ``name`` as it is installed: ExecStart runs ``snapkit``."""
    return template(name).replace(PLACEHOLDER, str(snapkit))


def find_snapkit(argv0: str) -> Path:
    """The absolute path of the running ``snapkit`` command: argv[0] when it is the console
    script (a venv's bin/snapkit), else the one on PATH (``python -m snapkit`` has no script)."""
    candidates = [argv0] if Path(argv0).name == "snapkit" else []
    candidates += [found] if (found := shutil.which("snapkit")) else []
    for text in candidates:
        path = Path(os.path.abspath(text))
        if path.is_file() and os.access(path, os.X_OK):
            return check_snapkit(path)
    raise RefusedError(
        "cannot tell where the snapkit command is installed",
        hint="name it with --snapkit PATH",
    )


def check_snapkit(path: Path) -> Path:
    """``path`` if systemd can run it as written: absolute, executable, nothing to quote."""
    if not path.is_absolute():
        raise ValidationError(f"{path} is not an absolute path", hint="systemd needs one")
    if bad := sorted(_UNSAFE & set(str(path))):
        raise ValidationError(
            f"{path} holds {''.join(bad)!r}, which an ExecStart line would split or expand",
            hint="install snapkit under a plain path",
        )
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ValidationError(f"{path} is not an executable file", hint="name snapkit's command")
    return path


@dataclass(frozen=True)
class UnitFile:
    """One unit to install: where it goes, its text, and what installing it does."""

    name: str
    path: Path
    text: str
    # "create" (absent), "keep" (already identical), "replace" (differs, and forced), "differs"
    # (differs, not forced: installing refuses)
    action: str


def plan(folder: Path, snapkit: Path, *, force: bool = False) -> list[UnitFile]:
    """What installing into ``folder`` would do, file by file. Reads only."""
    units = []
    for name in NAMES:
        path = folder / name
        text = render(name, snapkit)
        try:
            old: str | None = path.read_text()
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise RefusedError(f"cannot read {path}: {exc.strerror}") from None
        differs = "replace" if force else "differs"
        action = "create" if old is None else "keep" if old == text else differs
        units.append(UnitFile(name, path, text, action))
    return units


def install(units: list[UnitFile], *, euid: int) -> None:
    """Write every unit that is not already in place (root only: they are system units).

    Every file is written beside its place first and only then renamed in, so a failure
    (a full disk, a read-only folder) leaves the folder as it was: a refusal, nothing changed."""
    if differ := [str(u.path) for u in units if u.action == "differs"]:
        raise RefusedError(
            f"{', '.join(differ)} already exists and differs from what snapkit would write",
            hint="see the difference with --dry-run; --force replaces it",
        )
    if euid != 0:
        raise RefusedError(
            "installing systemd units needs root", hint="run it with sudo, or see --dry-run"
        )
    todo = [(u, u.path.with_name(f".{u.name}.snapkit-tmp")) for u in units if u.action != "keep"]
    written: list[Path] = []
    try:
        for unit, tmp in todo:
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)  # left by a run that was killed here
            with tmp.open("x") as f:  # never through a file or link already there
                written.append(tmp)
                f.write(unit.text)
            tmp.chmod(0o644)
    except OSError as exc:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise RefusedError(
            f"cannot write {exc.filename}: {exc.strerror}", hint="is --dir a writable folder?"
        ) from None
    for unit, tmp in todo:
        tmp.replace(unit.path)


__all__ = [
    "DEFAULT_DIR",
    "NAMES",
    "NEXT_STEP",
    "PLACEHOLDER",
    "UnitFile",
    "check_snapkit",
    "find_snapkit",
    "install",
    "plan",
    "render",
    "template",
]
