"""The offline tools as a user meets them (issue 16): device sizes, directories, a safe
export, usage errors and truncated stores."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapkit.cli import main
from snapkit.cow import export as export_module
from snapkit.cow.device import FileDevice, device_bytes
from tests.unit.cow_vectors import sha256_file
from tests.unit.test_cow_cli import _pair

CSB = 4096


def _stat(mode: int, size: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, 0, 0, size, 0, 0, 0))


def test_a_block_device_is_sized_by_the_ioctl_not_st_size() -> None:
    asked: list[int] = []

    def ioctl(fd: int) -> int:
        asked.append(fd)
        return 1 << 30

    assert device_bytes(5, _stat(stat.S_IFBLK | 0o660, 0), ioctl) == 1 << 30
    assert asked == [5]


def test_a_regular_file_is_sized_by_st_size_and_never_asks_the_ioctl() -> None:
    def ioctl(fd: int) -> int:
        raise AssertionError("a regular file has no BLKGETSIZE64")

    assert device_bytes(5, _stat(stat.S_IFREG | 0o644, 12345), ioctl) == 12345


def test_file_device_uses_the_size_seam_only_for_block_devices(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(bytes(3 * CSB))
    with FileDevice(image, block_bytes=lambda _fd: 1) as dev:
        assert dev.size == 3 * CSB


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real loop device over a copy of a COW; needs root (losetup), skipped otherwise."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("attaching a loop device needs root and losetup")
    _origin, cow = _pair(tmp_path)
    dev = subprocess.run(
        ["losetup", "-f", "--show", "--read-only", str(cow)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        yield cow, dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_inspect_of_a_loop_device_equals_inspect_of_its_file(
    loop_device: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cow, dev = loop_device
    with FileDevice(dev) as d:
        assert d.size == cow.stat().st_size  # st_size of the device node is 0
    assert main(["cow", "inspect", str(cow), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["cow", "inspect", dev, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_file
    assert from_file["exceptions"] == 6


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{d}"],
        ["diff", "--cow", "{d}"],
        ["diff", "--cow", "{cow}", "--origin", "{d}"],
        ["export", "--origin", "{d}", "--cow", "{cow}", "--output", "{out}"],
        ["export", "--origin", "{origin}", "--cow", "{d}", "--output", "{out}"],
        ["merge", "--origin", "{d}", "--cow", "{cow}"],
        ["merge", "--origin", "{origin}", "--cow", "{d}"],
        ["format", "{d}", "--chunk-sectors", "8"],
    ],
)
def test_a_directory_is_refused_in_one_line_with_a_hint(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin, cow = _pair(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    names = {"d": folder, "cow": cow, "origin": origin, "out": tmp_path / "out"}
    assert main(["cow", *(word.format(**names) for word in argv)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"snapkit: error: {folder} is a directory, not an image or a block device "
        "(name the image file or the device itself)\n"
    )
    assert not (tmp_path / "out").exists()


def _export_argv(origin: Path, cow: Path, out: Path) -> list[str]:
    return ["cow", "export", "--origin", str(origin), "--cow", str(cow), "--output", str(out)]


def test_export_refuses_an_existing_output_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin, cow = _pair(tmp_path)
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    assert main(_export_argv(origin, cow, out)) == 1
    assert capsys.readouterr().err == (
        f"snapkit: error: output {out} exists (pass --force to replace it)\n"
    )
    assert out.read_bytes() == b"precious"
    # the control: with --force it is replaced, keeping its permission bits
    out.chmod(0o600)
    assert main([*_export_argv(origin, cow, out), "--force"]) == 0
    assert out.stat().st_size == 64 * CSB and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cow.img", "origin.img", "out.img"]


def test_export_through_a_symlink_replaces_the_file_it_names(tmp_path: Path) -> None:
    origin, cow = _pair(tmp_path)
    real, link = tmp_path / "real.img", tmp_path / "link.img"
    real.write_bytes(b"old")
    link.symlink_to(real)
    assert main([*_export_argv(origin, cow, link), "--force"]) == 0
    assert link.is_symlink() and real.stat().st_size == 64 * CSB


def test_export_refuses_a_directory_as_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin, cow = _pair(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main([*_export_argv(origin, cow, folder), "--force"]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("existing", [True, False])
def test_an_export_failing_in_the_middle_leaves_the_output_as_it_was(
    existing: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    origin, cow = _pair(tmp_path, origin_chunks=4096)  # 16 MiB: more than one 8 MiB write
    out = tmp_path / "out.img"
    if existing:
        out.write_bytes(b"precious" * 1000)
    before = sha256_file(out) if existing else None
    real_write = export_module._write_views
    calls: list[int] = []

    def write_then_fail(fd: int, pieces: list[memoryview], offset: int | None) -> int:
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, pieces, offset)

    monkeypatch.setattr(export_module, "_write_views", write_then_fail)
    assert main([*_export_argv(origin, cow, out), "--force"]) == 1
    assert capsys.readouterr().err == "snapkit: error: export failed: No space left on device\n"
    assert len(calls) == 2  # it did fail in the middle, after writing a batch
    assert (sha256_file(out) if existing else out.exists()) == (before if existing else False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cow.img", "origin.img", *(["out.img"] if existing else [])]
    )
    # the control: the same export without the fault writes the snapshot view
    monkeypatch.setattr(export_module, "_write_views", real_write)
    assert main([*_export_argv(origin, cow, out), "--force"]) == 0
    assert out.stat().st_size == 4096 * CSB


def _shrunk_origin(tmp_path: Path) -> tuple[Path, Path]:
    """A pair whose COW has an exception past the end of the origin it is given: the origin
    is cut to 8 of its 64 chunks, and the COW holds chunk 63."""
    origin, cow = _pair(tmp_path)
    with origin.open("r+b") as f:
        f.truncate(8 * CSB)
    return origin, cow


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("failure", ["exception past the origin", "write error", "interrupt"])
def test_a_failed_export_leaves_an_existing_output_byte_identical(
    failure: str,
    force: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 16's "must show": whatever stops an export, with or without --force, the file at
    the output path keeps every byte, and no temporary file is left beside it."""
    if failure == "exception past the origin":
        origin, cow = _shrunk_origin(tmp_path)
    else:
        origin, cow = _pair(tmp_path, origin_chunks=4096)
    out = tmp_path / "out.img"
    out.write_bytes(os.urandom(3 * CSB + 5))
    before = out.read_bytes()
    calls: list[int] = []
    real_write = export_module._write_views

    def fail_second(fd: int, pieces: list[memoryview], offset: int | None) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, pieces, offset)
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(export_module, "_write_views", fail_second)
    code = main([*_export_argv(origin, cow, out), *(["--force"] if force else [])])
    err = capsys.readouterr().err
    if failure == "exception past the origin":  # checked before the output is looked at
        assert code == 1 and "smaller than the exceptions require" in err
    elif not force:
        assert (code, err) == (
            1,
            f"snapkit: error: output {out} exists (pass --force to replace it)\n",
        )
    elif failure == "write error":
        assert (code, err) == (1, "snapkit: error: export failed: Input/output error\n")
    else:
        assert code == 130
    if force and failure != "exception past the origin":
        assert len(calls) == 2  # it failed after a batch had been written to the temp file
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cow.img", "origin.img", "out.img"]


def test_an_interrupted_export_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin, cow = _pair(tmp_path)

    def interrupt(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_write_views", interrupt)
    assert main(_export_argv(origin, cow, tmp_path / "out.img")) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cow.img", "origin.img"]


@pytest.mark.parametrize(
    "argv",
    [
        ["format", "{cow}", "--chunk-sectors", "7"],
        ["format", "{cow}", "--chunk-sectors", "0"],
        ["format", "{cow}", "--chunk-sectors", "-8"],
        ["format", "{cow}", "--chunk-sectors", "eight"],
        ["format", "{cow}", "--chunk-sectors", str(1 << 40)],
        ["format", "{cow}"],
        ["format", "--chunk-sectors", "8"],
        ["inspect", "{cow}", "--table-chunk-sectors", "12"],
        ["inspect"],
        ["diff", "--cow", "{cow}", "--table-chunk-sectors", "3"],
        ["diff"],
        [
            "export",
            "--origin",
            "{origin}",
            "--cow",
            "{cow}",
            "--output",
            "{out}",
            "--table-chunk-sectors",
            "x",
        ],
        ["export", "--origin", "{origin}", "--cow", "{cow}"],
        ["merge", "--origin", "{origin}", "--cow", "{cow}", "--table-chunk-sectors", "6"],
        ["merge", "--cow", "{cow}"],
        ["inspect", "{cow}", "--no-such-option"],
    ],
)
def test_every_cow_usage_error_exits_2_and_changes_nothing(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin, cow = _pair(tmp_path)
    before = sha256_file(origin), sha256_file(cow)
    names = {"cow": cow, "origin": origin, "out": tmp_path / "out"}
    with pytest.raises(SystemExit) as exc:
        main(["cow", *(word.format(**names) for word in argv)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("snapkit") and err.count("\n") == 1
    assert (sha256_file(origin), sha256_file(cow)) == before
    assert not (tmp_path / "out").exists()


def test_a_good_chunk_size_is_not_a_usage_error(tmp_path: Path) -> None:
    """The control for the usage errors above: the same options with valid values run."""
    _origin, cow = _pair(tmp_path)
    assert main(["cow", "inspect", str(cow), "--table-chunk-sectors", "16"]) == 0
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(16 * CSB))
    assert main(["cow", "format", str(blank), "--chunk-sectors", "8"]) == 0


@pytest.mark.parametrize(
    "content", [bytes(100), b"SnAp" + bytes([1, 0, 0, 0, 1, 0, 0, 0, 8]) + bytes(87)]
)
@pytest.mark.parametrize("verb", ["inspect", "diff"])
def test_a_100_byte_cow_is_reported_as_truncated(
    content: bytes, verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cow = tmp_path / "cow.img"
    cow.write_bytes(content)
    argv = [str(cow)] if verb == "inspect" else ["--cow", str(cow)]
    assert main(["cow", verb, *argv]) == 1
    assert capsys.readouterr().err == (
        f"snapkit: error: {cow}: COW is truncated: 100 bytes, too short for its header chunk "
        "of 4096 bytes\n"
    )


def test_a_cow_of_one_whole_chunk_keeps_the_three_chunks_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: a store cut at a chunk boundary is not truncated, only too small."""
    cow = tmp_path / "cow.img"
    cow.write_bytes(bytes(CSB))
    assert main(["cow", "inspect", str(cow)]) == 1
    err = capsys.readouterr().err
    assert "smaller than three chunks" in err and "truncated" not in err


def test_a_holey_origin_exports_exactly_and_stays_as_sparse(tmp_path: Path) -> None:
    """Chunks of 8 KiB over an origin whose 4 KiB blocks alternate between data and holes, so
    exception chunks straddle a hole's edge and the image is cut into many zones; the file,
    the pipe and the model must agree, and the file holds no more blocks than the origin's
    data plus the exceptions."""
    from snapkit.cow.model import Origin

    origin, cow = tmp_path / "origin.img", tmp_path / "cow.img"
    size = 2048 * CSB  # 8 MiB
    with origin.open("wb") as f:
        f.truncate(size)
        for block in (0, 1, 7, 100, 101, 102, 1000, 2047):
            f.seek(block * CSB)
            f.write(bytes([block % 200 + 1]) * CSB)
    cow.write_bytes(bytes(64 * CSB))
    with FileDevice(origin, writable=True) as odev, FileDevice(cow, writable=True) as cdev:
        model = Origin(odev)
        snap = model.snapshot(cdev, "P", 16)
        for block in (1, 6, 101, 500, 1000, 2046):  # half of an 8 KiB chunk each
            model.write(block * CSB, b"new" * 100)
        snap.write(300 * CSB, b"s" * 5000)
        view = snap.read(0, size)
    out = tmp_path / "view.img"
    assert main([*_export_argv(origin, cow, out), "--no-fsync"]) == 0
    assert out.read_bytes() == view
    piped = subprocess.run(
        [sys.executable, "-m", "snapkit", *_export_argv(origin, cow, Path("-"))],
        check=True,
        capture_output=True,
    )
    assert piped.stdout == view
    origin_blocks = origin.stat().st_blocks * 512
    exceptions = 7 * 2 * CSB
    assert out.stat().st_size == size
    assert out.stat().st_blocks * 512 <= origin_blocks + exceptions < size // 4


def test_both_ways_of_sorting_the_exceptions_agree() -> None:
    from array import array

    from snapkit.cow.export import sorted_exceptions

    class Store:
        olds = array("Q", [9, 2, 7, 0, 5])
        news = array("Q", [2, 3, 4, 5, 6])

    expected = ([0, 2, 5, 7, 9], [5, 3, 6, 4, 2])
    assert sorted_exceptions(Store(), 10) == expected  # type: ignore[arg-type]
    assert sorted_exceptions(Store()) == expected  # type: ignore[arg-type]
