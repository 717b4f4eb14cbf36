"""The cross-volume check on a chain of members, and its negative control: a record on a
member whose predecessor lacks it is a broken pair; one acknowledged before and absent is
missing."""

from __future__ import annotations

from pathlib import Path

from vmtests.guest import crosswriter


def test_a_consistent_chain_has_nothing_broken_or_missing() -> None:
    judged = crosswriter.judge([{1, 2, 3}, {1, 2, 3}, {1, 2}], 2)
    assert judged["missing"] == [] and judged["broken"] == []
    assert (judged["a"], judged["b"], judged["c"]) == (3, 3, 2)


def test_a_record_ahead_of_its_predecessor_is_broken() -> None:
    judged = crosswriter.judge([{1, 2}, {1, 2}, {1, 2, 3}], 2)
    assert judged["broken"] == [3]
    assert crosswriter.judge([{1}, {1, 2}], 1)["broken"] == [2]
    assert crosswriter.judge([{2}, {2}], 2)["missing"] == [1]


def test_writer_and_reader_agree(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    stop = tmp_path / "stop"
    ledger = tmp_path / "ledger"
    for d in dirs:
        d.mkdir()
    for n in (1, 2):
        for d in dirs:
            (d / f"r{n}").write_bytes(crosswriter.pattern(n))
    (dirs[2] / "r2").write_bytes(b"torn")
    found = [crosswriter.present(d) for d in dirs]
    assert found == [{1, 2}, {1, 2}, {1}]
    stop.touch()
    assert crosswriter.write(dirs, ledger, stop) == 0 and ledger.read_text() == ""
