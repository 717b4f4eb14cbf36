"""The CLI contract of ``snapkit cow`` and ``snapkit bench cow``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapkit.cli import main
from snapkit.cow.device import FileDevice, MemDevice
from snapkit.cow.format import Header
from snapkit.cow.image import inspect
from snapkit.cow.model import Origin
from tests.unit.cow_vectors import names, sha256_file, status_tail, unpacked, vector

CSB = 4096


def _pair(tmp_path: Path, origin_chunks: int = 64, sparse: bool = False) -> tuple[Path, Path]:
    """A small origin/COW pair made by the model; optionally a sparse origin file."""
    origin_path, cow_path = tmp_path / "origin.img", tmp_path / "cow.img"
    if sparse:
        with origin_path.open("wb") as f:
            f.truncate(origin_chunks * CSB)
    else:
        origin_path.write_bytes(bytes(i % 251 for i in range(origin_chunks * CSB)))
    cow_path.write_bytes(bytes(32 * CSB))
    with FileDevice(origin_path, writable=True) as odev, FileDevice(cow_path, writable=True) as cd:
        origin = Origin(odev)
        snap = origin.snapshot(cd, "P", 8)
        for chunk in (3, 4, 5, 9, origin_chunks - 1):
            origin.write(chunk * CSB, b"changed" * 10)
        snap.write(20 * CSB, b"s" * 100)
    return origin_path, cow_path


def test_inspect_json_has_the_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    name = names("status_before_remove")[0]
    assert main(["cow", "inspect", str(unpacked() / f"{name}.cow"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == status_tail(vector(name)["status_before_remove"])
    assert doc["valid"] is True and doc["version"] == 1
    for key in ("chunk_sectors", "exceptions", "metadata_areas", "allocated_sectors"):
        assert isinstance(doc[key], int)
    assert doc["total_sectors"] == vector(name)["cow_sectors"]
    assert doc["metadata_sectors"] == int(doc["status"].split()[1])


def test_inspect_human_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _origin, cow = _pair(tmp_path)
    assert main(["cow", "inspect", str(cow)]) == 0
    out = capsys.readouterr().out
    assert "6 in 1 metadata area" in out and "status:" in out


def test_format_makes_a_store_the_kernel_sees_as_new(tmp_path: Path) -> None:
    cow = tmp_path / "cow.img"
    cow.write_bytes(b"\xff" * (16 * CSB))
    assert main(["cow", "format", str(cow), "--chunk-sectors", "8"]) == 0
    raw = cow.read_bytes()
    assert raw[:CSB] == bytes(CSB) and raw[CSB:] == b"\xff" * (15 * CSB)
    result = inspect(str(cow))
    assert result.new and result.exceptions == 0 and result.status == f"16/{16 * 8} 16"
    snap = Origin(MemDevice(8 * CSB)).snapshot(MemDevice(raw), "P", 8)
    assert snap.status() == "16/128 16"


def test_format_refuses_bad_sizes_and_existing_stores(tmp_path: Path) -> None:
    cow = tmp_path / "cow.img"
    cow.write_bytes(bytes(16 * CSB))
    with pytest.raises(SystemExit) as usage:  # a bad chunk size is a usage error (issue 16)
        main(["cow", "format", str(cow), "--chunk-sectors", "12"])
    assert usage.value.code == 2
    assert main(["cow", "format", str(cow), "--chunk-sectors", "64"]) == 1  # < 3 chunks
    _origin, store = _pair(tmp_path)
    before = sha256_file(store)
    assert main(["cow", "format", str(store), "--chunk-sectors", "8"]) == 1
    assert sha256_file(store) == before
    assert main(["cow", "format", str(store), "--chunk-sectors", "8", "--force"]) == 0


def test_merge_of_a_new_store_writes_what_activation_writes(tmp_path: Path) -> None:
    origin, cow = tmp_path / "o", tmp_path / "c"
    origin.write_bytes(b"o" * 8 * CSB)
    cow.write_bytes(b"\x11" * 8 * CSB)
    assert main(["cow", "format", str(cow), "--chunk-sectors", "8"]) == 0
    assert main(["cow", "merge", "--origin", str(origin), "--cow", str(cow)]) == 0
    raw = cow.read_bytes()
    assert Header.unpack(raw) == Header.fresh(8)
    assert raw[CSB : 2 * CSB] == bytes(CSB)  # area 0 zeroed
    assert origin.read_bytes() == b"o" * 8 * CSB


def test_diff_lists_coalesced_sector_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin, cow = _pair(tmp_path)
    assert main(["cow", "diff", "--cow", str(cow), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    runs = [(r["start"], r["sectors"]) for r in doc["runs"]]
    assert runs == [(24, 24), (72, 8), (160, 8), (504, 8)]
    assert doc["sectors"] == 48
    assert main(["cow", "diff", "--cow", str(cow), "--origin", str(origin)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "24+24"


def test_merge_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    origin, cow = _pair(tmp_path)
    export = tmp_path / "view.img"
    assert (
        main(["cow", "export", "--origin", str(origin), "--cow", str(cow), "--output", str(export)])
        == 0
    )
    assert main(["cow", "merge", "--origin", str(origin), "--cow", str(cow), "--progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "merge: 6/6 exceptions (100%)" in captured.err
    assert origin.read_bytes() == export.read_bytes()
    assert inspect(str(cow)).status == "16/256 16"


def test_export_keeps_a_sparse_origin_sparse(tmp_path: Path) -> None:
    origin, cow = _pair(tmp_path, origin_chunks=4096, sparse=True)  # 16 MiB, mostly holes
    out = tmp_path / "view.img"
    assert (
        main(["cow", "export", "--origin", str(origin), "--cow", str(cow), "--output", str(out)])
        == 0
    )
    assert out.stat().st_size == 4096 * CSB
    assert out.stat().st_blocks * 512 < 1 << 20
    with FileDevice(origin) as odev, FileDevice(cow) as cdev:
        snap = Origin(odev).snapshot(cdev, "P", 8)
        assert snap.read(0, odev.size) == out.read_bytes()


@pytest.mark.parametrize("argv", [["cow"], ["cow", "--help"], ["bench", "--help"]])
def test_help_teaches_with_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert "example" in captured.out + captured.err
    assert code in (0, 2)


@pytest.mark.parametrize("verb", ["inspect", "export", "merge", "diff", "format"])
def test_every_verb_has_help_with_an_example(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["cow", verb, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["cow", "export", "--cow", "x"], ["cow", "format", "x"], ["cow", "nosuch"], ["bench"]],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 2


def test_bench_cow_runs_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "cow", "--json", "--dir", str(tmp_path), "--origin-mib", "4", "--rounds", "2"]
    assert main([*argv, "--exceptions", "300", "--inspect-exceptions", "2000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in doc["results"]} == {"inspect", "inspect-1M", "export", "merge"}
    assert doc["copy_seconds"] > 0 and doc["cp_seconds"] > 0 and doc["rounds"] == 2
    export = next(r for r in doc["results"] if r["name"] == "export")
    assert export["baseline"] == "cp" and export["goal"] == "<= 1.5x cp"
    assert os.listdir(tmp_path) == []


def test_bench_cow_text_prints_both_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "cow", "--dir", str(tmp_path), "--origin-mib", "4", "--rounds", "1"]
    assert main([*argv, "--exceptions", "300", "--inspect-exceptions", "2000"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("export / cp: ") and "inspect of 2000 exceptions: " in last
    assert os.listdir(tmp_path) == []
