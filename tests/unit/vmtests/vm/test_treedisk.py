"""The tree disk: keyed by the tree's sources, padded to a size class, built once, pruned."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vmtests.vm import cache as vmcache
from vmtests.vm import payload, treedisk


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SNAPKIT_IMAGE_CACHE", str(folder))
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A minimal snapkit tree: what payload.check_tree asks for."""
    root = tmp_path / "tree"
    for name, text in {
        "snapkit/__init__.py": "X = 1\n",
        "vmtests/guest/stage2.sh": "exit 0\n",
        "vmtests/guest/agent.py": "print('hi')\n",
        "vmtests/images/init.sh": "exit 0\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_size_classes_are_powers_of_two_of_at_least_16_mib() -> None:
    mib = 1 << 20
    assert treedisk.size_class(0) == 16 * mib
    assert treedisk.size_class(2 * mib) == 16 * mib
    assert treedisk.size_class(16 * mib) == 16 * mib
    assert treedisk.size_class(16 * mib + 1) == 32 * mib
    assert treedisk.size_class(40 * mib) == 64 * mib


def test_the_key_follows_names_bytes_and_modes_of_the_sources(tree: Path) -> None:
    def key() -> str:
        return treedisk.key(payload.tree_sources(tree, prefix=""))

    first = key()
    assert key() == first
    (tree / "snapkit/__init__.py").write_text("X = 2\n")
    edited = key()
    assert edited != first
    (tree / "snapkit/__init__.py").chmod(0o755)
    assert key() != edited
    (tree / "snapkit/__pycache__").mkdir()  # skipped, as in a cold boot's payload
    (tree / "snapkit/__pycache__/x.pyc").write_bytes(b"junk")
    assert key() == key()


def test_the_image_holds_the_tree_and_bytecode_padded_and_is_built_once(
    cache: Path, tree: Path
) -> None:
    f = treedisk.image(tree)
    assert f.stat().st_size == treedisk.MIN_BYTES
    listing = subprocess.run(
        ["unsquashfs", "-lls", "-d", "", str(f)], capture_output=True, text=True, check=True
    ).stdout
    assert " root/root " in listing
    for name in ("/snapkit/__init__.py", "/vmtests/guest/agent.py", "/bin/snapkit"):
        assert name in listing
    assert "/snapkit/__pycache__/__init__." in listing  # hash-checked .pyc beside each source
    mtime = f.stat().st_mtime_ns
    time.sleep(0.01)
    assert treedisk.image(tree) == f
    assert f.stat().st_mtime_ns >= mtime  # touched, not rebuilt: the same inode
    assert len(list(cache.glob("tree-*"))) == 1


def test_the_same_tree_makes_the_same_bytes(cache: Path, tree: Path, tmp_path: Path) -> None:
    first = treedisk.image(tree).read_bytes()
    shutil.rmtree(cache)
    assert treedisk.image(tree).read_bytes() == first


def test_prune_removes_entries_unused_for_a_day_but_never_the_one_kept(cache: Path) -> None:
    now = time.time()
    entries = {}
    for name, age in (("old", 2 * vmcache.UNUSED_FOR_S), ("new", 60), ("kept", 3e5)):
        entry = cache / f"tree-{name}"
        entry.mkdir(parents=True)
        (entry / treedisk.FILE).write_bytes(b"")
        os.utime(entry / treedisk.FILE, (now - age, now - age))
        entries[name] = entry
    (cache / "tree-x.tmp-1").mkdir()  # being built
    (cache / "state-old").mkdir()  # another pattern
    gone = vmcache.prune("tree-*", treedisk.FILE, keep=entries["kept"], now=now)
    assert gone == [entries["old"]]
    assert {p.name for p in cache.iterdir()} == {
        "tree-new",
        "tree-kept",
        "tree-x.tmp-1",
        "state-old",
    }
