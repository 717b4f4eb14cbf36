"""The systemd units snapkit ships and ``snapkit install-units``: what the units say, that
systemd itself accepts them (``systemd-analyze verify``, with broken units as controls that it
must reject), and that installing refuses rather than overwrites."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snapkit import units
from snapkit.cli import main
from snapkit.errors import RefusedError, ValidationError

SNAPKIT = Path(sys.executable).with_name("snapkit")  # this venv's console script


def directives(text: str) -> list[tuple[str, str]]:
    """(key, value) of every directive, comments and section headers left out."""
    lines = [ln.strip() for ln in text.splitlines()]
    return [
        tuple(ln.split("=", 1))  # type: ignore[misc]
        for ln in lines
        if ln and not ln.startswith(("#", "[")) and "=" in ln
    ]


def values(text: str, key: str) -> list[str]:
    return [word for k, v in directives(text) if k == key for word in v.split()]


def test_every_shipped_unit_is_named_and_runs_snapkit_through_the_placeholder() -> None:
    assert sorted(p.name for p in units.FOLDER.glob("*.service")) == sorted(units.NAMES)
    for name in units.NAMES:
        (start,) = (v for k, v in directives(units.template(name)) if k == "ExecStart")
        assert start.startswith(units.PLACEHOLDER + " ")
        rendered = units.render(name, SNAPKIT)
        assert units.PLACEHOLDER not in rendered
        assert f"ExecStart={SNAPKIT} " in rendered


def test_recover_runs_once_before_the_local_mounts_after_the_disks() -> None:
    text = units.template("snapkit-recover.service")
    assert values(text, "ExecStart") == [units.PLACEHOLDER, "recover"]
    assert values(text, "DefaultDependencies") == ["no"]
    assert values(text, "Type") == ["oneshot"] and values(text, "RemainAfterExit") == ["yes"]
    assert "local-fs-pre.target" in values(text, "Before")
    assert "local-fs-pre.target" in values(text, "Wants")
    after = values(text, "After")
    assert {"systemd-udev-settle.service", "systemd-remount-fs.service"} <= set(after)
    assert "lvm2-activation.service" in after


def test_watch_is_a_template_whose_instance_is_the_snapshot_name() -> None:
    text = units.template("snapkit-watch@.service")
    assert values(text, "ExecStart") == [
        units.PLACEHOLDER,
        *["snapshot", "watch", "%i", "--extend-at", "${EXTEND_AT}", "--extend-by", "${EXTEND_BY}"],
    ]
    assert values(text, "Environment") == ["EXTEND_AT=70", "EXTEND_BY=256M"]
    assert "snapkit-recover.service" in values(text, "After")


# -- systemd-analyze verify --------------------------------------------------------------------


def verify(folder: Path, *names: str) -> list[str]:
    """What ``systemd-analyze verify`` says about these units: their lines, or 'exit N'."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run 'make setup' (the systemd package)"
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *(str(folder / n) for n in names)],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [
        ln
        for ln in (proc.stdout + proc.stderr).splitlines()
        if str(folder) in ln or any(n.split("@")[0] in ln for n in names)
    ]
    return ours + ([f"exit {proc.returncode}"] if proc.returncode else [])


def test_systemd_accepts_both_units_as_installed(tmp_path: Path) -> None:
    for name in units.NAMES:
        (tmp_path / name).write_text(units.render(name, SNAPKIT))
    assert verify(tmp_path, *units.NAMES) == []


BROKEN = {
    "a command that is not there": ("ExecStart={snapkit} ", "ExecStart=/nonexistent/snapkit "),
    "an unknown key": ("RemainAfterExit=yes", "RemainAfterExitt=yes"),
    "a bad service type": ("Type=oneshot", "Type=oneshoot"),
    "an unknown specifier": ("ExecStart={snapkit} recover", "ExecStart={snapkit} recover %Q"),
}


@pytest.mark.parametrize("how", BROKEN)
def test_the_control_systemd_rejects_a_broken_unit(tmp_path: Path, how: str) -> None:
    """The check above can fail: each of these breaks the recover unit in one place."""
    good, bad = (s.format(snapkit=SNAPKIT) for s in BROKEN[how])
    text = units.render("snapkit-recover.service", SNAPKIT)
    assert good in text
    (tmp_path / "snapkit-broken.service").write_text(text.replace(good, bad, 1))
    assert verify(tmp_path, "snapkit-broken.service") != []


# -- installing ----------------------------------------------------------------------------------


def test_install_writes_then_keeps_then_refuses_a_differing_file_unless_forced(
    tmp_path: Path,
) -> None:
    planned = units.plan(tmp_path, SNAPKIT)
    assert [u.action for u in planned] == ["create", "create"]
    units.install(planned, euid=0)
    recover = tmp_path / "snapkit-recover.service"
    assert recover.read_text() == units.render(recover.name, SNAPKIT)
    assert recover.stat().st_mode & 0o777 == 0o644
    assert [u.action for u in units.plan(tmp_path, SNAPKIT)] == ["keep", "keep"]

    recover.write_text("# a local edit\n")
    planned = units.plan(tmp_path, SNAPKIT)
    assert [u.action for u in planned] == ["differs", "keep"]
    with pytest.raises(RefusedError, match=r"snapkit-recover\.service already exists and differs"):
        units.install(planned, euid=0)
    assert recover.read_text() == "# a local edit\n"
    units.install(units.plan(tmp_path, SNAPKIT, force=True), euid=0)
    assert recover.read_text() == units.render(recover.name, SNAPKIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(units.NAMES)  # no temp files


def test_install_needs_root_and_writes_nothing_without_it(tmp_path: Path) -> None:
    with pytest.raises(RefusedError, match="needs root"):
        units.install(units.plan(tmp_path, SNAPKIT), euid=1000)
    assert list(tmp_path.iterdir()) == []


def test_a_unit_that_cannot_be_written_is_a_refusal_that_changes_nothing(tmp_path: Path) -> None:
    """The second file fails (its temporary name is taken by a folder) after the first was
    written aside: the first is removed again, and no unit is in place."""
    obstacle = tmp_path / ".snapkit-watch@.service.snapkit-tmp"
    obstacle.mkdir()
    with pytest.raises(RefusedError, match=r"cannot write .*snapkit-watch@\.service\.snapkit-tmp"):
        units.install(units.plan(tmp_path, SNAPKIT), euid=0)
    assert [p.name for p in tmp_path.iterdir()] == [obstacle.name]


def test_the_snapkit_path_is_the_running_command_or_the_one_on_path(tmp_path: Path) -> None:
    assert units.find_snapkit(str(SNAPKIT)) == SNAPKIT
    on_path = shutil.which("snapkit")
    if on_path:  # python -m snapkit: argv[0] is __main__.py
        assert units.find_snapkit("/x/snapkit/__main__.py") == Path(on_path)
    for bad, why in [
        (tmp_path / "with space" / "snapkit", "split or expand"),
        (tmp_path / "nothing", "not an executable"),
        (Path("relative/snapkit"), "not an absolute path"),
    ]:
        with pytest.raises(ValidationError, match=why):
            units.check_snapkit(bad)


def test_cli_dry_run_writes_nothing_and_names_the_next_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "units"
    argv = ["install-units", "--dir", str(folder), "--snapkit", str(SNAPKIT), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"would write {folder}/snapkit-recover.service\n" in out
    assert f"    ExecStart={SNAPKIT} recover\n" in out
    assert out.endswith(f"next: {units.NEXT_STEP}\n")
    assert not folder.exists()

    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] is True and doc["snapkit"] == str(SNAPKIT)
    assert [u["action"] for u in doc["units"]] == ["create", "create"]


@pytest.mark.skipif(os.geteuid() != 0, reason="writes as root would")
def test_cli_installs_and_refuses_a_differing_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["install-units", "--dir", str(tmp_path), "--snapkit", str(SNAPKIT)]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path}/snapkit-recover.service\n")
    (tmp_path / "snapkit-watch@.service").write_text("edited\n")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs" in err and "--force replaces it" in err
    assert main([*argv, "--force"]) == 0
    assert f"replaced {tmp_path}/snapkit-watch@.service" in capsys.readouterr().out
