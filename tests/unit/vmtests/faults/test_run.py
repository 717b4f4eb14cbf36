"""The fault runner turns a lost VM into failed cuts, and lets a harness bug surface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmtests.faults.run import Runner
from vmtests.vm import session
from vmtests.vm.errors import LostVMError


def booting(exc: BaseException) -> type:
    class Session:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __enter__(self) -> None:
            raise exc

        def __exit__(self, *args: Any) -> None:
            pass

    return Session


def test_a_lost_vm_is_a_reported_bad_input_run(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(session, "Session", booting(LostVMError("QEMU was killed")))
    out = Runner(None, None, tmp_path, seed=6, say=lambda _: None).hostile(None)
    assert out["tried"] == 0 and "LostVMError: QEMU was killed" in out["error"]


def test_a_harness_bug_is_not_swallowed_as_a_failed_run(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(session, "Session", booting(TypeError("a bug in the harness")))
    with pytest.raises(TypeError, match="a bug in the harness"):
        Runner(None, None, tmp_path, seed=6, say=lambda _: None).hostile(None)
