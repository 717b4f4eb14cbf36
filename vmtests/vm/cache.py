"""The image cache: where userlands and kernel layers live, and how an entry comes to be.

Every entry (a userland, a kernel layer) is a folder named by a hash of what made it, built in
``NAME.tmp-PID`` and renamed into place under one lock, so parallel test workers and an
interrupted build never see half an entry, and a hit needs no network.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vmtests.vm.errors import ImageError

SOURCE_DATE_EPOCH = 1700000000  # fixed timestamps make the artefacts reproducible
Say = Callable[[str], None]


def cache_dir() -> Path:
    explicit = os.environ.get("SNAPKIT_IMAGE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "snapkit" / "images"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def remove(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ImageError(f"cannot remove {folder} ({exc.strerror}): remove it by hand") from exc


def build_env() -> dict[str, str]:
    """The build's environment: fixed timestamps, and no .pyc written as a side effect of an import.

    Maintainer scripts import Python modules (py3compile imports debpython) and may cache them
    as timestamp .pyc files before py3compile writes its own (hash-based under
    SOURCE_DATE_EPOCH); which one wins differed between root and unshare mode."""
    return {
        **os.environ,
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "LC_ALL": "C",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def show(argv: list[str], say: Say) -> None:
    say("  $ " + " ".join(argv[:6]) + (" ..." if len(argv) > 6 else ""))


def failed(tool: str, code: int, output: str) -> str:
    tail = "\n".join(output.strip().splitlines()[-15:])
    return f"{tool} failed (exit {code}):\n{tail}"


def run(argv: list[str], say: Say, *, epoch: bool = True) -> None:
    """Run a build tool; its failure is an ImageError with the tail of its output.

    ``epoch=False`` leaves SOURCE_DATE_EPOCH out, for a tool (mksquashfs) that refuses it next
    to its own -mkfs-time/-all-time options."""
    show(argv, say)
    env = build_env()
    if not epoch:
        del env["SOURCE_DATE_EPOCH"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(failed(argv[0], proc.returncode, proc.stderr or proc.stdout))


UNUSED_FOR_S = 24 * 3600.0  # how long an entry made per tree or per shape outlives its last use


def touch(path: Path) -> None:
    """Mark an entry's file used now, for prune."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune(pattern: str, marker: str, keep: Path, now: float | None = None) -> list[Path]:
    """Remove the entries matching ``pattern`` whose ``marker`` file was not used (touched) for
    UNUSED_FOR_S, never ``keep`` nor one being built; return what went.

    For entries made per tree or per saved-state shape: every edit makes a new one, and nothing
    else would ever remove the old. A day, so a run that uses one is never raced."""
    now = time.time() if now is None else now
    gone = []
    for folder in sorted(cache_dir().glob(pattern)):
        if folder == keep or ".tmp-" in folder.name:
            continue
        try:
            if now - (folder / marker).stat().st_mtime < UNUSED_FOR_S:
                continue
        except FileNotFoundError:
            pass
        with contextlib.suppress(ImageError):
            remove(folder)
            gone.append(folder)
    return gone


@contextmanager
def entry(final: Path) -> Iterator[Path]:
    """A temporary folder that becomes ``final`` if the block ends normally (call under lock)."""
    work = final.with_name(final.name + f".tmp-{os.getpid()}")
    remove(work)
    work.mkdir(parents=True)
    try:
        yield work
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        remove(work)


__all__ = [
    "SOURCE_DATE_EPOCH",
    "UNUSED_FOR_S",
    "Say",
    "build_env",
    "cache_dir",
    "entry",
    "locked",
    "prune",
    "remove",
    "run",
    "touch",
]
