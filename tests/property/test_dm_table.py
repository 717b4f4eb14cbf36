"""parse(format(table)) == table for any table, and formatting is a fixed point."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from snapkit.dm.table import (
    Dev,
    DevNum,
    Error,
    Flakey,
    Line,
    Linear,
    Raw,
    Snapshot,
    SnapshotMerge,
    SnapshotOrigin,
    Store,
    Table,
    Target,
    Thin,
    ThinPool,
    Zero,
    parse_table,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
devnum = st.builds(DevNum, st.integers(0, 4095), st.integers(0, 2**20 - 1))
path = st.from_regex(r"/dev/[a-z][a-z0-9/_-]{0,20}", fullmatch=True)
dev: st.SearchStrategy[Dev] = st.one_of(devnum, path)
chunk = st.sampled_from([2**k for k in range(0, 16)])
features = st.lists(word, max_size=4).map(tuple)
persistent = st.sampled_from([Store.PERSISTENT, Store.PERSISTENT_OVERFLOW])
raw_type = word.filter(lambda w: w not in {"linear", "error", "zero", "thin", "flakey", "snapshot"})

targets: st.SearchStrategy[Target] = st.one_of(
    st.builds(Linear, dev, u64),
    st.builds(SnapshotOrigin, dev),
    st.builds(Snapshot, dev, dev, st.sampled_from(list(Store)), chunk, features),
    st.builds(SnapshotMerge, dev, dev, persistent, chunk, features),
    st.builds(Thin, dev, u64, st.none() | dev),
    st.builds(ThinPool, dev, dev, u64, u64, features),
    st.builds(Flakey, dev, u64, u64, u64, features),
    st.just(Error()),
    st.just(Zero()),
    st.builds(Raw, raw_type, st.text(st.characters(codec="utf-8").filter(str.isprintable))),
)


@st.composite
def tables(draw: st.DrawFn) -> Table:
    lines = []
    start = 0
    for target in draw(st.lists(targets, min_size=1, max_size=5)):
        length = draw(st.integers(1, 2**40))
        lines.append(Line(start, length, target))
        start += length
    return Table(tuple(lines))


@given(tables())
def test_round_trip(table: Table) -> None:
    text = table.format()
    assert parse_table(text) == table
    assert parse_table(text).format() == text
