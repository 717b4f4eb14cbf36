"""The state file: atomic round trips, refusal of a corrupt file, and rebuilding from the
kernel's view when the file is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkit.errors import RefusedError
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.model import SnapshotRecord
from snapkit.plan import apply
from snapkit.state import Prepared, StateData, StateFile, parse, reconcile, render
from tests.unit.fakes import make_world

RECORD = SnapshotRecord("s1", "dm", "/dev/mapper/data", "/dev/mapper/s1", 1.5, {"k": "v"})


def test_round_trip_and_no_rewrite_when_unchanged(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    assert state.load() == StateData()
    data = StateData().with_snapshot(RECORD).with_device(Prepared("data", "/dev/loop0"))
    state.save(data)
    assert state.load() == data
    mtime = state.path.stat().st_mtime_ns
    state.save(data)
    assert state.path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_records_replace_and_drop() -> None:
    data = StateData().with_snapshot(RECORD).with_snapshot(RECORD)
    assert len(data.snapshots) == 1
    assert data.without_snapshot("s1").snapshots == ()
    assert parse(render(data)) == data


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 9}', '{"version": 1, "snapshots": [{}]}'])
def test_a_corrupt_file_is_refused_with_a_hint(tmp_path: Path, text: str) -> None:
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(RefusedError, match="aside"):
        StateFile(tmp_path).load()


def test_a_lost_file_is_rebuilt_from_snapkit_uuids(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    plan, record = DmMethod(world.host).plan_create(world.request("s1"))
    apply(plan)
    rebuilt = reconcile(StateData(), world.dm)
    assert rebuilt.device("data") == Prepared("data", "7:0")
    found = rebuilt.snapshot("s1")
    assert found is not None
    assert (found.method, found.origin, found.device) == ("dm", record.origin, record.device)
    assert found.details["table"] == record.details["table"]
    assert reconcile(rebuilt, world.dm) == rebuilt  # stable


def test_the_planted_no_fsync_hook_skips_only_the_fsync_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SNAPKIT_TEST_STATE_NO_FSYNC (issue 17's negative control) reaches the state file through
    Settings alone, and drops exactly one fsync: the file's, before the rename (the directory's
    after it stays). Unset, both happen."""
    import os

    from snapkit.settings import UNSAFE_STATE_ENV, Settings

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    for env, expected in (({}, 2), ({UNSAFE_STATE_ENV: "1"}, 1)):
        settings = Settings.from_env({"SNAPKIT_STATE_DIR": str(tmp_path / str(expected)), **env})
        synced.clear()
        StateFile(settings.state_dir, sync=not settings.unsafe_state_writes).save(
            StateData().with_device(Prepared("d", "/dev/x", None))
        )
        assert len(synced) == expected
        assert StateFile(settings.state_dir).load().device("d") is not None
