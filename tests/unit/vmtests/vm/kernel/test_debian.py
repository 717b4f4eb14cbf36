"""The Debian suite and mirror: the recipe's, the environment's, the host's sources last."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtests.vm import image
from vmtests.vm.errors import KernelError
from vmtests.vm.kernel import debian

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


def _apt(tmp_path: Path, deb822: str = "", one_line: str = "") -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True)
    if deb822:
        (tmp_path / "sources.list.d/debian.sources").write_text(deb822)
    if one_line:
        (tmp_path / "sources.list").write_text(one_line)
    return tmp_path


def test_the_environment_wins_over_the_host(tmp_path: Path) -> None:
    env = {debian.MIRROR_ENV: "http://env.example/debian/"}
    got = debian.choose_mirrors(env, debian.apt_entries(_apt(tmp_path, DEB822)))
    assert got == debian.Mirrors("http://env.example/debian", None, "environment")


def test_the_hosts_deb822_sources_are_the_fallback(tmp_path: Path) -> None:
    got = debian.choose_mirrors({}, debian.apt_entries(_apt(tmp_path, DEB822)))
    assert (got.main, got.security) == (
        "http://mirror.example/debian",
        "http://security.example/debian-security",
    )


def test_one_line_sources_with_options_are_read(tmp_path: Path) -> None:
    line = "deb [arch=amd64 signed-by=/k.gpg] http://old.example/debian bullseye main # c\n"
    got = debian.choose_mirrors({}, debian.apt_entries(_apt(tmp_path, one_line=line)))
    assert got.main == "http://old.example/debian"


def test_a_host_without_debian_sources_must_set_the_mirror(tmp_path: Path) -> None:
    ubuntu = "deb http://archive.example/ubuntu jammy main\n"  # an Ubuntu host: not Debian's
    with pytest.raises(KernelError, match=f"no Debian mirror: set {debian.MIRROR_ENV}=URL"):
        debian.choose_mirrors({}, debian.apt_entries(_apt(tmp_path, one_line=ubuntu)))
    with pytest.raises(KernelError, match="no Debian mirror"):  # no apt at all (Fedora, Arch)
        debian.choose_mirrors({}, debian.apt_entries(tmp_path / "absent"))


def test_sources_of_a_stable_suite_a_backports_suite_and_testing() -> None:
    m = debian.Mirrors("http://m/debian", "http://s/debian-security", "environment")
    plain = [line.split("] ")[-1].removeprefix("deb ") for line in debian.sources("bookworm", m)]
    assert plain == [
        "http://m/debian bookworm main",
        "http://m/debian bookworm-updates main",
        "http://s/debian-security bookworm-security main",
    ]
    bpo = debian.sources("bookworm-backports", m, signed=False)
    assert bpo == [
        "deb http://m/debian bookworm main",
        "deb http://m/debian bookworm-backports main",
    ]
    no_sec = debian.Mirrors("http://m/debian", None, "environment")
    assert len(debian.sources("trixie", no_sec, signed=False)) == 2


def test_the_suite_is_the_recipes_not_the_hosts(tmp_path: Path) -> None:
    # the image build reads no /etc/os-release: the suite is a recipe file, part of the key
    assert image.suite() == "bookworm"
    assert "debian-suite.txt" in image.HASHED_FILES
    m = debian.Mirrors("http://m/debian", None, "environment")
    argv = image.mmdebstrap_argv("trixie", m, ["fio"], tmp_path / "root.tar", 1000)
    assert argv[argv.index(str(tmp_path / "root.tar")) - 1] == "trixie"
    assert any(a.endswith("http://m/debian trixie main contrib") for a in argv)
    assert "--mode=unshare" in argv
