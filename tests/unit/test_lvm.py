"""lvs JSON reports parse into typed records; every attribute letter we rely on is read right."""

from __future__ import annotations

import json

import pytest

from snapkit.errors import FormatError
from snapkit.host.lvm import LVS_FIELDS, Lvm, lvs_argv, parse_lvs
from tests.unit.fakes import Recorder

# Recorded in the guest (lvm2 2.03.16): an origin with a classic snapshot, a thin pool with a
# thin LV and its (skip-activation, inactive) thin snapshot, and a merge pending on the origin.
ROW = dict.fromkeys(LVS_FIELDS, "")


def row(**kw: str) -> dict[str, str]:
    return {**ROW, **kw}


REPORT = json.dumps(
    {
        "report": [
            {
                "lv": [
                    row(
                        lv_name="lv",
                        vg_name="vg",
                        lv_attr="owi-aos---",
                        lv_size="104857600",
                        segtype="linear",
                        lv_path="/dev/vg/lv",
                        lv_dm_path="/dev/mapper/vg-lv",
                        lv_kernel_major="253",
                        lv_kernel_minor="0",
                    ),
                    row(
                        lv_name="snap",
                        vg_name="vg",
                        origin="lv",
                        lv_attr="swi-a-s---",
                        data_percent="2.60",
                        lv_size="20971520",
                        segtype="linear",
                        lv_kernel_major="253",
                        lv_kernel_minor="3",
                        lv_dm_path="/dev/mapper/vg-snap",
                    ),
                    row(
                        lv_name="[snap2]",
                        vg_name="vg",
                        origin="lv",
                        lv_attr="Swi-a-s---",
                        lv_merging="merging",
                        data_percent="1.00",
                        lv_size="20971520",
                        segtype="linear",
                        lv_kernel_major="253",
                        lv_kernel_minor="4",
                    ),
                    row(
                        lv_name="tlv",
                        vg_name="vg",
                        pool_lv="pool",
                        lv_attr="Vwi-a-tz--",
                        segtype="thin",
                        lv_size="209715200",
                        data_percent="0.00",
                        lv_kernel_major="253",
                        lv_kernel_minor="8",
                    ),
                    row(
                        lv_name="tsnap",
                        vg_name="vg",
                        origin="tlv",
                        pool_lv="pool",
                        lv_attr="Vwi---tz-k",
                        segtype="thin",
                        lv_size="209715200",
                        lv_kernel_major="-1",
                        lv_kernel_minor="-1",
                    ),
                    row(
                        lv_name="bad",
                        vg_name="vg",
                        origin="lv",
                        lv_attr="swi-I-s---",
                        segtype="linear",
                        lv_size="1048576",
                        data_percent="100.00",
                        lv_kernel_major="253",
                        lv_kernel_minor="9",
                    ),
                ]
            }
        ]
    }
)


def test_parse_fields() -> None:
    lv, snap, merging, tlv, tsnap, bad = parse_lvs(REPORT)
    assert (lv.full_name, lv.size, lv.devnum, lv.origin, lv.is_open) == (
        "vg/lv",
        104857600,
        (253, 0),
        None,
        True,
    )
    assert not lv.is_snapshot and not lv.is_thin
    assert snap.is_snapshot and snap.origin == "lv" and snap.data_percent == 2.6
    assert not snap.is_open and not snap.merging and not snap.invalid
    assert merging.merging and merging.hidden and merging.is_snapshot
    assert tlv.is_thin and not tlv.is_thin_snapshot and tlv.pool == "pool"
    assert tsnap.is_thin_snapshot and tsnap.skips_activation and not tsnap.active
    assert tsnap.devnum is None and tsnap.data_percent is None
    assert bad.invalid


def test_lvm_messages_inside_the_report_are_skipped() -> None:
    """Measured in a group-lvm crash state (issue 17): LVM's rescan message on stdout inside
    the JSON; recover exited 1 on it ("cannot read the lvs report")."""
    lines = json.dumps(json.loads(REPORT), indent=4).splitlines()
    lines.insert(2, "  Retrying metadata scan.")
    assert parse_lvs("\n".join(lines)) == parse_lvs(REPORT)


@pytest.mark.parametrize(
    "text", ["", "{}", '{"report": [{"lv": [{"lv_name": "x"}]}]}', '{"report": 3}']
)
def test_bad_reports_are_refused(text: str) -> None:
    with pytest.raises(FormatError):
        parse_lvs(text)


def test_argv_asks_for_bytes_and_every_field() -> None:
    argv = lvs_argv(["vg"])
    assert argv[:3] == ["lvs", "--reportformat", "json"]
    assert "--nosuffix" in argv and argv[argv.index("--units") + 1] == "b"
    assert argv[argv.index("-o") + 1].split(",") == list(LVS_FIELDS)
    assert argv[-1] == "vg"


def recorded(stdout: str, returncode: int = 0) -> Recorder:
    return Recorder(stdout, returncode, stderr="  Volume group not found")


def test_lookups() -> None:
    lvm = Lvm(recorded(REPORT))
    assert lvm.get("vg", "snap2") is not None  # found also while hidden as [snap2]
    assert lvm.get("vg", "nope") is None
    found = lvm.by_devnum((253, 8))
    assert found is not None and found.name == "tlv"
    assert lvm.by_devnum((7, 0)) is None


def test_no_lvm_means_no_lv() -> None:
    lvm = Lvm(recorded("", returncode=5))
    assert lvm.by_devnum((253, 0)) is None
    assert lvm.get("vg", "lv") is None
