"""The newc writer: what it writes parses back exactly, with a reader written here from the
format's description, and with GNU cpio when the host has it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmtests.vm import cpio


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    data: bytes
    ino: int


def read_newc(blob: bytes) -> list[Member]:
    """Members up to the trailer; asserts the 4-byte alignment the kernel relies on."""
    out: list[Member] = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert blob[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, _, _, namesize, check = fields
        assert check == 0
        name_at = pos + 110
        name = blob[name_at : name_at + namesize]
        assert name.endswith(b"\0") and b"\0" not in name[:-1]
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        assert blob[name_at + namesize : data_at].strip(b"\0") == b""
        data = blob[data_at : data_at + size]
        pos = data_at + size + (-size % 4)
        if name[:-1] == b"TRAILER!!!":
            assert pos == len(blob), "bytes after the trailer"
            return out
        out.append(Member(name[:-1].decode(), mode, uid, gid, nlink, mtime, data, ino))


def test_round_trip_of_every_entry_kind() -> None:
    entries = [
        cpio.Entry.directory("etc", 0o700),
        cpio.Entry.file("etc/a", b"hello\n"),
        cpio.Entry.file("etc/odd", b"12345", 0o755),  # a length that needs padding
        cpio.Entry.file("empty", b""),
        cpio.Entry.symlink("bin/sh", "busybox"),
    ]
    members = read_newc(cpio.archive(entries, mtime=1234))
    by_name = {m.name: m for m in members}
    assert [m.name for m in members] == ["etc", "etc/a", "etc/odd", "empty", "bin", "bin/sh"]
    assert by_name["etc"].mode == stat.S_IFDIR | 0o700 and by_name["etc"].nlink == 2
    assert by_name["etc/a"].data == b"hello\n" and by_name["etc/a"].mode == stat.S_IFREG | 0o644
    assert by_name["etc/odd"].data == b"12345" and by_name["etc/odd"].mode & 0o777 == 0o755
    assert by_name["empty"].data == b""
    assert stat.S_ISLNK(by_name["bin/sh"].mode) and by_name["bin/sh"].data == b"busybox"
    assert all((m.uid, m.gid, m.mtime) == (0, 0, 1234) for m in members)
    assert len({m.ino for m in members}) == len(members)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 109, 110, 111, 112, 4095, 4096, 65537])
def test_every_padding_case_round_trips(size: int) -> None:
    data = os.urandom(size)
    for name in ("a", "ab", "abc", "abcd"):
        [member] = read_newc(cpio.archive([cpio.Entry.file(name, data)]))
        assert (member.name, member.data) == (name, data)


def test_missing_parents_come_first_and_once() -> None:
    members = read_newc(
        cpio.archive([cpio.Entry.file("a/b/c", b"1"), cpio.Entry.file("a/b/d", b"2")])
    )
    assert [m.name for m in members] == ["a", "a/b", "a/b/c", "a/b/d"]


def test_archives_are_reproducible() -> None:
    entries = [cpio.Entry.file("x/y", b"data")]
    assert cpio.archive(entries, mtime=7) == cpio.archive(entries, mtime=7)


def test_tree_walks_files_links_and_skips(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"x")
    (tmp_path / "pkg" / "m.py").write_text("print(1)\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o750)
    (tmp_path / "link").symlink_to("run.sh")
    entries = cpio.tree(tmp_path, "src", skip=frozenset({"__pycache__"}))
    members = {m.name: m for m in read_newc(cpio.archive(entries))}
    assert set(members) == {"src", "src/pkg", "src/pkg/m.py", "src/run.sh", "src/link"}
    assert members["src/run.sh"].mode == stat.S_IFREG | 0o750
    assert members["src/link"].data == b"run.sh" and stat.S_ISLNK(members["src/link"].mode)
    assert members["src/pkg/m.py"].data == b"print(1)\n"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_gnu_cpio_extracts_what_we_write(tmp_path: Path) -> None:
    blob = cpio.archive(
        [
            cpio.Entry.file("d/f", b"content\n", 0o600),
            cpio.Entry.symlink("d/l", "f"),
            cpio.Entry.file("d/e/g", os.urandom(1001)),
        ]
    )
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=blob, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["d", "d/f", "d/l", "d/e", "d/e/g"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=blob,
        cwd=out,
        check=True,
        capture_output=True,
    )
    assert (out / "d" / "f").read_bytes() == b"content\n"
    assert (out / "d" / "f").stat().st_mode & 0o777 == 0o600
    assert os.readlink(out / "d" / "l") == "f"
    assert (out / "d" / "e" / "g").stat().st_size == 1001
