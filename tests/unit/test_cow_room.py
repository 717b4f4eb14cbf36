"""The room under a COW file: a sparse COW is accepted at any size and takes space only as the
origin changes, so a ``--cow-size`` larger than the free space under ``--cow-dir`` is refused
at create (the kernel would drop the snapshot when that filesystem fills), unless ``--force``;
and ``snapshot watch`` warns, once, while the COW may still outgrow what is free."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapkit.errors import ValidationError
from snapkit.flow import Flow
from snapkit.host.cowdir import check_cow_space, room
from snapkit.methods.dm.direct import DmDirectMethod
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.settings import Settings
from snapkit.state import StateData
from snapkit.validate import format_size, parse_size
from tests.unit.fakes import created, make_world
from tests.unit.test_watch import _usage

PETABYTE = 1 << 50  # more than any test machine's free space


@pytest.mark.parametrize("method", [DmMethod, DmDirectMethod])
def test_a_cow_larger_than_the_free_space_is_refused_before_anything_changes(
    tmp_path: Path, method: type[DmMethod] | type[DmDirectMethod]
) -> None:
    world = make_world(tmp_path)
    request = replace(world.request("s1"), cow_size=PETABYTE)
    with pytest.raises(ValidationError) as caught:
        method(world.host).plan_create(request)
    assert "may outgrow" in str(caught.value) and "drops the snapshot" in str(caught.value)
    assert "--force" in (caught.value.hint or "") and "--cow-size" in (caught.value.hint or "")
    assert world.faults.calls == [] and world.files.files == {}


@pytest.mark.parametrize("method", [DmMethod, DmDirectMethod])
def test_force_takes_the_risk(
    tmp_path: Path, method: type[DmMethod] | type[DmDirectMethod]
) -> None:
    world = make_world(tmp_path)
    request = replace(world.request("s1"), cow_size=PETABYTE, force=True)
    plan, _ = method(world.host).plan_create(request)
    assert any(str(PETABYTE) in step.description for step in plan.steps)


def test_a_cow_that_fits_needs_no_force(tmp_path: Path) -> None:
    check_cow_space(tmp_path, 1 << 20, force=False)


def test_on_the_root_filesystem_the_refusal_says_what_filling_it_does() -> None:
    with pytest.raises(ValidationError, match="every other write to / fail"):
        check_cow_space(Path("/"), PETABYTE, force=False)
    assert room(Path("/")).on_root


def test_the_hint_names_a_size_that_fits(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        check_cow_space(tmp_path / "not-yet" / "made", PETABYTE, force=False)
    hint = caught.value.hint or ""
    size = hint.split("--cow-size ")[1].split()[0]
    check_cow_space(tmp_path, parse_size(size), force=False)  # the quoted size is accepted


@given(st.integers(min_value=1, max_value=1 << 60))
def test_format_size_reads_back_as_at_most_the_size_and_close_to_it(size: int) -> None:
    back = parse_size(format_size(size))
    assert back <= size and back * 16 >= size * 15


def _watching(tmp_path: Path) -> tuple[Flow, list[str]]:
    world = make_world(tmp_path)
    created(world)
    flow = Flow(
        world.host, settings=Settings(state_dir=world.cow_dir / "state", lock_dir=world.cow_dir)
    )
    flow.state.save(StateData(snapshots=(world.records["s1"],)))
    _usage(world, 400)  # 39 %: no extend
    return flow, []


def test_watch_warns_once_while_the_cow_may_outgrow_the_free_space(tmp_path: Path) -> None:
    flow, said = _watching(tmp_path)
    cow = tmp_path / "s1.cow"  # the fakes keep the COW's size apart: make a real sparse one
    with open(cow, "wb") as f:
        os.truncate(f.fileno(), 1 << 43)  # 8 TiB apparent, nothing allocated
    kept = flow.load()
    looks = iter([kept, kept, kept, StateData(snapshots=())])
    flow.load = lambda: next(looks)  # type: ignore[method-assign]
    flow.watch("s1", extend_at=50, extend_by=1 << 20, interval=0, report=said.append)
    assert " free on the " in said[0], said
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 1, said
    assert "may still grow by 8T" in warnings[0] and "drops the snapshot" in warnings[0]


def test_watch_is_quiet_about_room_when_the_cow_fits(tmp_path: Path) -> None:
    """The negative control of the warning above: the same look with a COW that fits."""
    flow, said = _watching(tmp_path)
    (tmp_path / "s1.cow").write_bytes(b"")
    flow.watch("s1", extend_at=50, extend_by=1 << 20, once=True, report=said.append)
    assert not any(line.startswith("warning:") for line in said), said
