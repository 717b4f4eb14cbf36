"""snapkit against the bytes real kernels wrote (6.1 and 6.12): export, inspect, merge, resume.

Every test runs on each kernel's vectors (ids KERNEL/NAME, see tests/unit/cow_vectors.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from snapkit.cli import main
from snapkit.cow import merge as merge_module
from snapkit.cow.device import MemDevice
from snapkit.cow.image import inspect
from snapkit.cow.model import Origin
from tests.unit.cow_vectors import (
    KERNELS,
    copy,
    export_matches,
    manifest,
    merge_matches,
    names,
    replay,
    sha256_file,
    status_tail,
    unpacked,
    vector,
)

VALID = [n for n in names("snapshot_view_sha256") if vector(n)["snapshot_view_sha256"] != "EIO"]
INVALID = [n for n in names("snapshot_view_sha256") if n not in VALID]
MERGED = names("merged_origin_sha256")
MID = names("interrupted_status")


@pytest.mark.parametrize("name", names("status_before_remove"))
def test_inspect_status_is_dmsetup_status(name: str) -> None:
    result = inspect(str(unpacked() / f"{name}.cow"))
    assert result.status == status_tail(vector(name)["status_before_remove"])
    assert result.chunk_sectors == vector(name)["chunk_sectors"]


@pytest.mark.parametrize("name", VALID)
def test_export_is_the_kernels_snapshot_view(name: str, tmp_path: Path) -> None:
    src = unpacked()
    expected = vector(name)["snapshot_view_sha256"]
    assert export_matches(src / f"{name}.origin", src / f"{name}.cow", expected, tmp_path / "o")


@pytest.mark.parametrize("name", MID)
def test_export_of_a_mid_merge_pair_is_still_the_snapshot_view(name: str, tmp_path: Path) -> None:
    src = unpacked()
    expected = vector(name)["snapshot_view_sha256"]
    origin, cow = src / f"{name}.origin-mid-merge", src / f"{name}.cow-mid-merge"
    assert export_matches(origin, cow, expected, tmp_path / "o")


def test_export_to_stdout_streams_the_same_bytes() -> None:
    name = VALID[0]
    src = unpacked()
    argv = ["--origin", str(src / f"{name}.origin"), "--cow", str(src / f"{name}.cow")]
    proc = subprocess.run(
        [sys.executable, "-m", "snapkit", "cow", "export", *argv, "--output", "-"],
        capture_output=True,
        check=True,
    )
    assert hashlib.sha256(proc.stdout).hexdigest() == vector(name)["snapshot_view_sha256"]


@pytest.mark.parametrize("name", INVALID)
def test_invalid_vectors_are_refused_and_nothing_is_written(name: str, tmp_path: Path) -> None:
    origin, cow = copy(name, ".origin", tmp_path), copy(name, ".cow", tmp_path)
    before = sha256_file(origin), sha256_file(cow)
    out = tmp_path / "out"
    assert main(["cow", "export", "--origin", str(origin), "--cow", str(cow), "--output", str(out)])
    assert main(["cow", "merge", "--origin", str(origin), "--cow", str(cow)]) == 1
    assert not out.exists()
    assert (sha256_file(origin), sha256_file(cow)) == before
    assert inspect(str(cow)).status == "Invalid"


@pytest.mark.parametrize("name", MERGED)
def test_merge_gives_the_kernels_origin_and_cow(name: str, tmp_path: Path) -> None:
    origin, cow = copy(name, ".origin", tmp_path), copy(name, ".cow", tmp_path)
    assert merge_matches(origin, cow, vector(name))
    assert inspect(str(cow)).status == status_tail(vector(name)["merge_final_status"])


@pytest.mark.parametrize("name", MID)
def test_a_merge_the_kernel_stopped_is_finished(name: str, tmp_path: Path) -> None:
    origin = copy(name, ".origin-mid-merge", tmp_path)
    cow = copy(name, ".cow-mid-merge", tmp_path)
    assert inspect(str(cow)).status == status_tail(vector(name)["interrupted_status"])
    assert merge_matches(origin, cow, vector(name))


@pytest.mark.parametrize("name", MERGED[:1])
def test_merge_stopped_after_every_batch_resumes_to_the_same_bytes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(merge_module, "GROUP_BYTES", 1)  # one batch per commit
    origin, cow = copy(name, ".origin", tmp_path), copy(name, ".cow", tmp_path)
    runs = 0
    while True:
        result = merge_module.merge(str(origin), str(cow), stop_after_groups=1)
        runs += 1
        if result.merged == result.remaining:
            break
    assert runs > 100  # really stopped at many batch boundaries
    assert merge_matches(origin, cow, vector(name))


@pytest.mark.parametrize("name", MID)
def test_model_passes_through_the_kernels_interrupted_state(name: str) -> None:
    """The kernel was stopped at a batch boundary; the model's batching must hit it exactly."""
    src = unpacked()
    origin_dev = MemDevice((src / f"{name}.origin").read_bytes())
    cow_dev = MemDevice((src / f"{name}.cow").read_bytes())
    want_origin = (src / f"{name}.origin-mid-merge").read_bytes()
    want_cow = (src / f"{name}.cow-mid-merge").read_bytes()
    origin = Origin(origin_dev)
    snap = origin.snapshot(cow_dev, "P", vector(name)["chunk_sectors"])
    while bytes(cow_dev.data) != want_cow:
        assert not origin.merge(snap, max_batches=1), "merge ended without the kernel's state"
    assert bytes(origin_dev.data) == want_origin
    assert snap.status() == status_tail(vector(name)["interrupted_status"])


@pytest.mark.parametrize("name", names("writes"))
def test_model_replaying_the_writes_builds_the_kernels_cow(name: str) -> None:
    """From the initial fill and the recorded writes, the model writes the kernel's bytes."""
    vec = vector(name)
    origin, origin_dev, cow_dev = replay(vec)
    assert hashlib.sha256(origin_dev.data).hexdigest() == vec["origin_view_sha256"]
    assert bytes(cow_dev.data) == (unpacked() / f"{name}.cow").read_bytes()
    snap = origin.snapshots[0]
    assert snap.status() == status_tail(vec["status_before_remove"])
    if snap.valid:
        view = snap.read(0, origin.size)
        assert hashlib.sha256(view).hexdigest() == vec["snapshot_view_sha256"]


# -- negative controls: the checkers above must fail on a corrupted vector ----------------


def _first_data_chunk_offset(cow: Path, chunk_sectors: int) -> int:
    import struct

    raw = cow.read_bytes()
    csb = chunk_sectors * 512
    _old, new = struct.unpack_from("<QQ", raw, csb)  # area 0, entry 0
    return int(new) * csb + 100


@pytest.mark.parametrize("name", VALID[:2])
def test_negative_control_flipped_data_byte_fails_export_check(name: str, tmp_path: Path) -> None:
    origin, cow = copy(name, ".origin", tmp_path), copy(name, ".cow", tmp_path)
    vec = vector(name)
    at = _first_data_chunk_offset(cow, vec["chunk_sectors"])
    raw = bytearray(cow.read_bytes())
    raw[at] ^= 0xFF
    cow.write_bytes(raw)
    assert not export_matches(origin, cow, vec["snapshot_view_sha256"], tmp_path / "o")


@pytest.mark.parametrize("name", VALID[:2])
def test_negative_control_flipped_entry_byte_fails_export_check(name: str, tmp_path: Path) -> None:
    origin, cow = copy(name, ".origin", tmp_path), copy(name, ".cow", tmp_path)
    vec = vector(name)
    raw = bytearray(cow.read_bytes())
    raw[vec["chunk_sectors"] * 512] ^= 0x01  # low byte of entry 0's old chunk
    cow.write_bytes(raw)
    assert not export_matches(origin, cow, vec["snapshot_view_sha256"], tmp_path / "o")


@pytest.mark.parametrize("name", MERGED[:1])
def test_negative_control_flipped_data_byte_fails_merge_check(name: str, tmp_path: Path) -> None:
    origin, cow = copy(name, ".origin", tmp_path), copy(name, ".cow", tmp_path)
    vec = vector(name)
    at = _first_data_chunk_offset(cow, vec["chunk_sectors"])
    raw = bytearray(cow.read_bytes())
    raw[at] ^= 0xFF
    cow.write_bytes(raw)
    assert not merge_matches(origin, cow, vec)


def test_missing_vectors_fail_instead_of_skipping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.unit.cow_vectors as cv

    monkeypatch.setattr(cv, "DATA", tmp_path)
    cv.manifest.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"kernel vectors for 6\.1 are missing"):
            cv.manifest()
    finally:
        cv.manifest.cache_clear()


def test_every_kernel_has_every_vector() -> None:
    by_kernel = {k: sorted(v["name"] for v in manifest() if v["kernel"] == k) for k in KERNELS}
    assert (
        by_kernel["6.1"]
        == by_kernel["6.12"]
        == [
            "s1-c8-origin",
            "s2-c32-mixed",
            "s3-c8-overflow",
            "s4-c8-midmerge",
        ]
    )
