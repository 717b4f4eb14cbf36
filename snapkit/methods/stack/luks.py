"""``--key-file``: the snapshot's LUKS header unlocked by ``cryptsetup`` with the user's key
file, instead of the key copied from the origin's table.

For users who would rather not have snapkit copy a key, and for LUKS2's default, where the
table names a key in the kernel keyring (``:64:logon:cryptsetup:...``) that no other process
can load. The snapshot of the LV under the mapping is a copy of its LUKS header too, so
``cryptsetup open --key-file FILE SNAPSHOT NAME-crypt`` unlocks it as the origin was. A merge
closes the origin's mapping (``cryptsetup close``) and opens it again under the same name
with the same key file. snapkit passes the file's *path* on cryptsetup's command line and
never reads the file; the record keeps the path.
"""

from __future__ import annotations

import os

from snapkit.errors import RefusedError
from snapkit.plan import Step
from snapkit.run import Executor


def check(run: Executor, device: str, key_file: str) -> None:
    """Refuse, before anything changes, a key file that cannot be read or a device with no
    LUKS header (a plain crypt mapping has none: its key can only come from the table)."""
    if not os.path.isfile(key_file) or not os.access(key_file, os.R_OK):
        raise RefusedError(
            f"--key-file {key_file} is not a readable file",
            hint="give the file cryptsetup opens the volume with",
        )
    if not run.run(["cryptsetup", "isLuks", device], check=False).ok:
        raise RefusedError(
            f"{device} has no LUKS header, so --key-file cannot unlock its snapshot",
            hint="leave out --key-file: snapkit then copies the key from the mapping's table",
        )


def open_mapping(run: Executor, key_file: str, device: str, name: str) -> None:
    """``cryptsetup open`` of ``device``'s LUKS header as ``name`` (also recover's, after a
    merge cut short or a reboot)."""
    run.run(["cryptsetup", "open", "--type", "luks", "--key-file", key_file, device, name])


def _close(run: Executor, name: str) -> None:
    run.run(["cryptsetup", "close", name])


def open_step(run: Executor, key_file: str, device: str, name: str) -> Step:
    return Step(
        f"cryptsetup open --key-file {key_file} {device} {name}",
        lambda: open_mapping(run, key_file, device, name),
        lambda: _close(run, name),
        f"cryptsetup close {name}",
    )


def close_step(run: Executor, key_file: str, device: str, name: str) -> Step:
    return Step(
        f"cryptsetup close {name}",
        lambda: _close(run, name),
        lambda: open_mapping(run, key_file, device, name),
        f"cryptsetup open --key-file {key_file} {device} {name}",
    )


__all__ = ["check", "close_step", "open_mapping", "open_step"]
