"""The guest's artifact tar is untrusted: safe_extract writes plain files inside the folder only,
on every Python the project claims (3.11.2 has no ``extractall(filter=...)``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vmtests.campaign import runner as campaign


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o4755
    return info


def test_the_guests_own_archive_unpacks(tmp_path: Path) -> None:
    tar_path = archive(
        tmp_path / "out.raw",
        (member("result.json"), b"{}"),
        (member("logs", tarfile.DIRTYPE), b""),
        (member("logs/guest.log"), b"hello"),
    )
    dest = tmp_path / "art"
    dest.mkdir()
    with tarfile.open(tar_path) as tar:
        assert campaign.safe_extract(tar, dest) == ["result.json", "logs", "logs/guest.log"]
    assert (dest / "logs" / "guest.log").read_bytes() == b"hello"
    assert (dest / "result.json").stat().st_mode & 0o7777 == 0o644  # not the archive's setuid


@pytest.mark.parametrize(
    "bad",
    [
        member("/etc/evil"),
        member("../evil"),
        member("logs/../../evil"),
        member("link", tarfile.SYMTYPE, "/etc"),
        member("inside", tarfile.SYMTYPE, "result.json"),  # no link at all: none is needed
        member("hard", tarfile.LNKTYPE, "/etc/passwd"),
        member("dev", tarfile.CHRTYPE),
        member("fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: f"{m.name}-{m.type!r}",
)
def test_a_hostile_archive_writes_nothing(tmp_path: Path, bad: tarfile.TarInfo) -> None:
    tar_path = archive(tmp_path / "out.raw", (member("result.json"), b"{}"), (bad, b"x"))
    dest = tmp_path / "art"
    dest.mkdir()
    with tarfile.open(tar_path) as tar, pytest.raises(campaign.UnsafeArchive):
        campaign.safe_extract(tar, dest)
    assert list(dest.iterdir()) == []  # checked before anything was written
    assert not (tmp_path / "evil").exists()


def test_unpack_says_why_there_are_no_artifacts(tmp_path: Path) -> None:
    dest = tmp_path / "art"
    dest.mkdir()
    campaign._unpack(archive(tmp_path / "out.raw", (member("../evil"), b"x")), dest)
    assert "UnsafeArchive" in (dest / "unpack.log").read_text()
    (tmp_path / "zeros.raw").write_bytes(bytes(4096))  # the guest never wrote its tar
    campaign._unpack(tmp_path / "zeros.raw", dest)
    assert "not unpacked" in (dest / "unpack.log").read_text()
