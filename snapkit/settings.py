"""Where snapkit keeps its files, and how loud it is: resolved once, then passed down.

Every piece that needs a directory takes it from one :class:`Settings`, instead of reading the
environment itself: when two verbs read it each in their own way, they can disagree. They did:
``snapkit freeze`` locked in ``/run/snapkit/locks`` while ``snapshot create`` locked under
``$SNAPKIT_STATE_DIR``, so the two did not exclude each other on the same origin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/snapkit")
DEFAULT_LOCK_DIR = Path("/run/snapkit/locks")
UNSAFE_STATE_ENV = "SNAPKIT_TEST_STATE_NO_FSYNC"  # a planted bug, for a negative control


@dataclass(frozen=True)
class Settings:
    """``state_dir`` holds state.json and the COW files; ``lock_dir`` the per-origin locks;
    ``debug`` turns on the log of every step.

    ``unsafe_state_writes`` is a planted bug for the crash-state harness's negative control
    (``SNAPKIT_TEST_STATE_NO_FSYNC``, issue 17): the state file's new text is renamed into place
    without the fsync before the rename, so a power cut can leave the new name over data that
    never reached the disk. Only a test sets it; it exists to prove the harness sees that."""

    state_dir: Path = DEFAULT_STATE_DIR
    lock_dir: Path = DEFAULT_LOCK_DIR
    debug: bool = False
    unsafe_state_writes: bool = False

    @classmethod
    def under(cls, state_dir: Path, *, debug: bool = False, unsafe: bool = False) -> Settings:
        """Everything under ``state_dir``: a test's or a guest's private snapkit."""
        return cls(
            state_dir=state_dir,
            lock_dir=state_dir / "locks",
            debug=debug,
            unsafe_state_writes=unsafe,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """``SNAPKIT_STATE_DIR`` (its locks go under it too), ``SNAPKIT_DEBUG`` and the test
        hook ``SNAPKIT_TEST_STATE_NO_FSYNC``."""
        env = os.environ if env is None else env
        debug = bool(env.get("SNAPKIT_DEBUG"))
        unsafe = bool(env.get(UNSAFE_STATE_ENV))
        state = env.get("SNAPKIT_STATE_DIR")
        if state:
            return cls.under(Path(state), debug=debug, unsafe=unsafe)
        return cls(debug=debug, unsafe_state_writes=unsafe)


__all__ = ["DEFAULT_LOCK_DIR", "DEFAULT_STATE_DIR", "UNSAFE_STATE_ENV", "Settings"]
