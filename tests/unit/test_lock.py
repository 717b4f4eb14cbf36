"""One operation per origin: a second one is refused at once, with who holds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapkit.lock import LockedError, lock_key, origin_lock


def test_second_holder_is_refused_with_the_holder(tmp_path: Path) -> None:
    with origin_lock("vg/lv", operation="snapshot create", lock_dir=tmp_path):
        with (
            pytest.raises(LockedError) as info,
            origin_lock("vg/lv", operation="merge", lock_dir=tmp_path),
        ):
            pass
        assert f"pid {os.getpid()} (snapshot create)" in str(info.value)
        assert info.value.hint
    with origin_lock("vg/lv", operation="merge", lock_dir=tmp_path):
        pass  # released


def test_other_origins_are_independent(tmp_path: Path) -> None:
    with (
        origin_lock("a", operation="x", lock_dir=tmp_path),
        origin_lock("b", operation="y", lock_dir=tmp_path),
    ):
        pass


def test_lock_is_across_processes_and_dies_with_the_holder(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from snapkit.lock import origin_lock\n"
        f"with origin_lock('o', operation='child', lock_dir=Path({str(tmp_path)!r})):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with (
            pytest.raises(LockedError, match="child"),
            origin_lock("o", operation="parent", lock_dir=tmp_path),
        ):
            pass
    finally:
        child.kill()
        child.wait()
    with origin_lock("o", operation="parent", lock_dir=tmp_path):
        pass


def test_keys_are_safe_file_names() -> None:
    key = lock_key("../../etc/passwd x")
    assert "/" not in key and " " not in key and key.startswith("name-")
    assert lock_key("a") != lock_key("b")


def test_block_devices_share_a_key_by_number() -> None:
    devs = [p for p in ("/dev/loop0", "/dev/sda", "/dev/vda") if Path(p).exists()]
    if not devs:
        pytest.skip("no block device node here")
    st = os.stat(devs[0])
    assert lock_key(devs[0]) == f"block-{os.major(st.st_rdev)}-{os.minor(st.st_rdev)}"


class _MustNotRun:
    """A freezer and watchdog that fail the test if the freeze gets past the lock."""

    def __getattr__(self, name: str) -> object:
        def ran(*_args: object) -> None:
            raise AssertionError(f"the freeze ran ({name}) while the origin was locked")

        return ran


def test_freeze_and_create_share_the_lock_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With SNAPKIT_STATE_DIR set, `snapkit freeze` must take the same lock as the flow's
    `snapshot create` on that origin, or the two interleave a freeze with a suspend."""
    from snapkit import flow
    from snapkit.cli import main
    from snapkit.host import freezing, target
    from snapkit.methods import freeze
    from snapkit.model import Target
    from snapkit.settings import Settings

    monkeypatch.setenv("SNAPKIT_STATE_DIR", str(tmp_path / "state"))
    origin = Target(Path("/dev/snapkit-test-origin"), tmp_path, "ext4", (7, 99))
    # Patched wherever the verb could resolve or freeze (flow.freeze today; cli/freeze.py did
    # it itself before), so a regression fails this test instead of freezing the test machine.
    for module in (target, flow):
        monkeypatch.setattr(module, "resolve", lambda _spec: origin)
    for module in (freeze, freezing):
        monkeypatch.setattr(module, "IoctlFreezer", _MustNotRun)
        monkeypatch.setattr(module, "real_watchdog", lambda _mp: _MustNotRun())
    flow_locks = Settings.from_env().lock_dir  # what every Flow verb locks in
    with origin_lock(str(origin.device), operation="create s1", lock_dir=flow_locks):
        code = main(["freeze", str(tmp_path), "--", "true"])
    assert code == 1
    assert "is busy: pid" in capsys.readouterr().err
