"""Guest scripts are started through one helper, never by a path written out by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmtests import guest

TREE = Path(__file__).resolve().parents[4]


def test_command_maps_a_dotted_name_to_the_script_in_the_guest() -> None:
    assert guest.command("campaign.scenario", "{}") == [
        "python3",
        "-I",
        "-S",
        "/src/vmtests/guest/campaign/scenario.py",
        "{}",
    ]
    assert guest.script("writer") == "/src/vmtests/guest/writer.py"


def test_a_script_that_does_not_exist_is_refused_on_the_host() -> None:
    with pytest.raises(ValueError, match=r"no guest script vmtests\.guest\.campaign\.nope"):
        guest.command("campaign.nope")


def test_no_python_file_spells_out_a_guest_script_path() -> None:
    spelled = re.compile(r"/src/vmtests/guest/\w")
    offenders = [
        str(p.relative_to(TREE))
        for folder in ("vmtests", "tests")
        for p in sorted((TREE / folder).rglob("*"))
        if p.suffix in (".py", ".sh")
        and p != TREE / "vmtests" / "guest" / "__init__.py"
        and p != Path(__file__).resolve()
        and spelled.search(p.read_text())
    ]
    # init.sh hands over to stage2.sh, the one step before any Python exists, and so does
    # park.py, the same step in a guest restored from a saved state (vmtests.vm.resume)
    assert offenders == ["vmtests/guest/park.py", "vmtests/images/init.sh"]
