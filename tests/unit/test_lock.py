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
