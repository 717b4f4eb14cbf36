"""The ledger file and the self-describing records the writers put on the filesystem."""

from pathlib import Path

from vmtests.guest.campaign import ledger


def test_records_describe_themselves_and_detect_tearing() -> None:
    a = ledger.make_record("w0/f001", 3, 17, seed=5)
    b = ledger.make_record("w0/f001", 3, 18, seed=5)
    assert len(a) == ledger.RECORD
    assert ledger.parse_record("w0/f001", 3, a) == "17"
    half = ledger.RECORD // 2
    assert ledger.parse_record("w0/f001", 3, a[:half] + b[half:]).startswith("torn")
    assert ledger.parse_record("w0/f001", 4, a).startswith("torn")  # another slot's record
    assert ledger.parse_record("w0/f002", 3, a).startswith("torn")  # another file's record
    assert ledger.parse_record("w0/f001", 3, bytes(ledger.RECORD)) == ledger.ZERO
    assert ledger.parse_record("w0/f001", 3, b"") == ledger.ABSENT
    flipped = bytearray(a)
    flipped[1000] ^= 1
    assert ledger.parse_record("w0/f001", 3, bytes(flipped)) == "torn:crc"


def test_ledger_numbers_each_objects_history_and_skips_marks(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.jsonl")
    led = ledger.Ledger(path)
    led.record("w:a#0", "1", 0.1, 0.2)
    led.mark("snapshot-begin", 0.25)
    led.record("w:b#0", "2", 0.3, 0.4)
    led.record("w:a#0", "3", 0.5, 0.6)
    led.close()
    ops = ledger.load(path)
    assert [(o.obj, o.step, o.state) for o in ops] == [
        ("w:a#0", 1, "1"),
        ("w:b#0", 1, "2"),
        ("w:a#0", 2, "3"),
    ]


def test_observe_writer_reads_the_slot_from_a_tree(tmp_path: Path) -> None:
    (tmp_path / "w0").mkdir()
    rec = ledger.make_record("w0/f000", 1, 99, seed=1)
    (tmp_path / "w0" / "f000").write_bytes(bytes(ledger.RECORD) + rec)
    assert ledger.observe_writer(str(tmp_path), "w:w0/f000#1") == "99"
    assert ledger.observe_writer(str(tmp_path), "w:w0/f000#0") == ledger.ZERO
    assert ledger.observe_writer(str(tmp_path), "w:w0/f000#2") == ledger.ABSENT
    assert ledger.observe_writer(str(tmp_path), "w:w0/nope#0") == ledger.ABSENT
    (tmp_path / "w0" / "f000").write_bytes(rec[:5000])
    assert ledger.observe_writer(str(tmp_path), "w:w0/f000#0") == "torn:short"
