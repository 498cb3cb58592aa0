"""Range writes on every real store: Arrow-backed strings round-trip, empty slices write nothing new but
still clear what was stored, rows in any order land in their partitions, the primary-key check holds
whatever the row order, and a routed write checks and converts its frame once for all destinations."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from data_puller_dagster.io import frames
from data_puller_dagster.io.errors import FrameContractError
from data_puller_dagster.io.frames import check_frame, dtype_map, sql_type
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io import test_destinations
from data_puller_dagster_tests.io.conftest import candles
from data_puller_dagster_tests.io.test_destinations import BOTH, D1, D10, EUR, TABLE, assert_same, two_symbols
from data_puller_dagster_tests.io.test_router import config

dest = test_destinations.dest  # the same fixture: every store (parquet local and memory://, duckdb, ...)

STRINGS = ["symbol", "asset_class", "timeframe", "source"]
RAW = TableRef("forex", "raw_ohlcv_1h", "raw", "forex", "1h", None)


def arrow_strings(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: "string[pyarrow]" for c in STRINGS})


def storages(df: pd.DataFrame) -> list[str]:
    return [df[c].dtype.storage for c in STRINGS]


def stored_files(dest, table: TableRef) -> list[str]:
    """Every file under the table's directory of a file store (local or memory://), by name."""
    if dest.kind == "parquet_memory":
        infos = dest.fs.get_file_info(
            pafs.FileSelector(dest.table_dir(table), recursive=True, allow_not_found=True)
        )
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return sorted(p.name for p in Path(dest.table_dir(table)).rglob("*") if p.is_file())


def test_string_pyarrow_is_accepted_and_recorded() -> None:
    dtype = pd.StringDtype("pyarrow")
    assert (sql_type(dtype, "duckdb"), sql_type(dtype, "postgres")) == ("VARCHAR", "text")
    df = arrow_strings(candles("EUR/USD", D1, 2))
    assert check_frame(TABLE, df, PartitionSlice(EUR, D1, date(2024, 1, 2))) is df
    recorded = dtype_map(df)
    assert [recorded[c] for c in STRINGS] == ["string[pyarrow]"] * 4
    assert dtype_map(candles("EUR/USD", D1, 1))["symbol"] == "string"  # python storage: as before


def test_arrow_backed_strings_round_trip(dest) -> None:
    df = arrow_strings(two_symbols(D1, 3))
    part = PartitionSlice(BOTH, D1, date(2024, 1, 3))
    dest.write(TABLE, df, part)
    got = dest.read(TABLE, part)
    assert storages(got) == ["pyarrow"] * 4
    assert_same(got, df, dest.kind)


def test_either_string_storage_writes_to_the_same_table(dest) -> None:
    """Switching a source to Arrow-backed strings is no schema drift; the latest flavour is read back."""
    dest.write(TABLE, two_symbols(D1, 2), PartitionSlice(BOTH, D1, date(2024, 1, 2)))
    later = arrow_strings(two_symbols(date(2024, 1, 3), 2, offset=5))
    dest.write(TABLE, later, PartitionSlice(BOTH, date(2024, 1, 3), date(2024, 1, 4)))
    got = dest.read(TABLE, PartitionSlice(BOTH, D1, date(2024, 1, 4)))
    assert storages(got) == ["pyarrow"] * 4
    assert_same(got, arrow_strings(pd.concat([two_symbols(D1, 2), later])), dest.kind)
    dest.write(TABLE, two_symbols(D1, 2), PartitionSlice(BOTH, D1, date(2024, 1, 2)))  # and back
    assert storages(dest.read(TABLE, PartitionSlice(BOTH, D1, D10))) == ["python"] * 4


def test_empty_slice_writes_nothing_new_and_clears_what_was_stored(dest) -> None:
    df = two_symbols(D1, 10)
    empty = df.iloc[:0]
    part = PartitionSlice(BOTH, D1, D10)
    assert dest.write(TABLE, empty, part)["rows"] == 0
    got = dest.read(TABLE, part)  # no day holds rows: an empty frame with the written dtypes
    assert got.empty and list(got.columns) == list(df.columns)
    assert dict(got.dtypes.astype(str)) == dict(df.dtypes.astype(str))
    if dest.kind in ("parquet", "parquet_memory"):
        assert stored_files(dest, TABLE) == ["_common_metadata"]  # the table's schema, no day file
    elif dest.kind in ("csv", "jsonl"):
        assert stored_files(dest, TABLE) == ["_dtypes.json"]

    dest.write(TABLE, df, part)
    cleared = PartitionSlice(EUR, date(2024, 1, 3), date(2024, 1, 5))
    md = dest.write(TABLE, empty, cleared)  # the days had rows: the replace must remove them
    inside = (df["symbol"] == "EUR/USD") & (df["ts"] >= cleared.start_ts) & (df["ts"] < cleared.end_ts)
    assert inside.sum() > 0
    if "emptied_partitions" in md:
        assert md["emptied_partitions"] == df.loc[inside, "ts"].dt.date.nunique() and md["files"] == 0
    assert_same(dest.read(TABLE, part), df[~inside], dest.kind)
    assert dest.read(TABLE, cleared).empty
    dest.write(TABLE, empty, cleared)  # idempotent
    assert_same(dest.read(TABLE, part), df[~inside], dest.kind)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_rows_in_any_order_land_in_their_partitions(dest, order: str) -> None:
    df = two_symbols(D1, 4)
    rows = df.iloc[::-1] if order == "reversed" else df.sample(frac=1.0, random_state=3)
    part = PartitionSlice(BOTH, D1, date(2024, 1, 4))
    dest.write(TABLE, rows, part)
    assert_same(dest.read(TABLE, part), df, dest.kind)
    assert_same(dest.read(TABLE, PartitionSlice(EUR, date(2024, 1, 2), date(2024, 1, 2))),
                df[(df["symbol"] == "EUR/USD") & (df["ts"].dt.date == date(2024, 1, 2))], dest.kind)  # fmt: skip


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
def test_primary_key_check_holds_whatever_the_row_order(order: str) -> None:
    df = two_symbols(D1, 3)
    part = PartitionSlice(BOTH, D1, date(2024, 1, 3))
    twice = pd.concat([df, df.iloc[[10, 40]]], ignore_index=True).sort_values(["symbol", "ts"], kind="stable")

    def arrange(f: pd.DataFrame) -> pd.DataFrame:
        if order == "reversed":
            return f.iloc[::-1]
        return f.sample(frac=1.0, random_state=1) if order == "shuffled" else f

    with pytest.raises(FrameContractError, match=r"4 row\(s\) share a primary key \('symbol', 'ts'\)"):
        check_frame(TABLE, arrange(twice), part)
    check_frame(TABLE, arrange(df), part)  # unique keys pass in any order
    nat_pk = TableRef("forex", "q", "quarantine", "forex", "1h", ("symbol", "ts"))
    nats = df.head(3).assign(ts=pd.Series(pd.NaT, index=df.index[:3], dtype="datetime64[ns, UTC]"))
    with pytest.raises(FrameContractError, match="share a primary key"):  # NaT keys are equal keys
        check_frame(nat_pk, arrange(nats), part)


def test_sub_microsecond_and_nat_timestamps() -> None:
    """Truncation still floors sub-microsecond values, and NaT (quarantine) is left alone."""
    quarantine = TableRef("forex", "quarantine_ohlcv_1h", "quarantine", "forex", "1h", None)
    df = candles("EUR/USD", D1, 1)
    part = PartitionSlice(EUR, D1, D1)
    assert check_frame(quarantine, df, part) is df  # nothing to floor: no copy
    odd = df.assign(ts=df["ts"] + pd.Timedelta(nanoseconds=7))
    odd.loc[3, "ts"] = pd.NaT
    out = check_frame(quarantine, odd, part)
    assert out["ts"].isna().sum() == 1
    assert (out["ts"].dropna() == df["ts"].drop(index=3)).all()


def test_router_checks_and_converts_a_frame_once_for_all_destinations(tmp_path: Path, monkeypatch) -> None:
    cfg = config(tmp_path, [{"id": "all", "destinations": ["parquet", "duckdb", "csv"]},
                            {"id": "eur", "match": {"symbol": ["EUR/USD"]}, "destinations": ["jsonl"]}])  # fmt: skip
    converted: list[int] = []
    checked: list[int] = []
    convert, increasing = frames._convert, frames._strictly_increasing
    monkeypatch.setattr(frames, "_convert", lambda df: converted.append(len(df)) or convert(df))
    monkeypatch.setattr(frames, "_strictly_increasing", lambda *a: checked.append(1) or increasing(*a))
    df = two_symbols(D1, 3)
    part = PartitionSlice(BOTH, D1, date(2024, 1, 3))
    summary = Router(cfg).write(TABLE, df, part)
    assert summary.rows_by_destination == {"all/parquet": len(df), "all/duckdb": len(df), "all/csv": len(df),
                                           "eur/jsonl": int((df["symbol"] == "EUR/USD").sum())}  # fmt: skip
    assert converted == [len(df)]  # one Arrow conversion for parquet, duckdb and csv; jsonl uses pandas
    assert checked == [1]  # the primary-key check ran once, in the router
    router = Router(cfg)
    for name in ("parquet", "duckdb", "csv"):
        assert_same(router.destination(name).read(TABLE, part), df, name)
    # Outside the router every destination checks its frame itself.
    with pytest.raises(FrameContractError, match="share a primary key"):
        router.destination("duckdb").write(TABLE, pd.concat([df, df.head(1)]), part)


def test_partition_ranges_group_rows_without_copying_sorted_frames() -> None:
    df = two_symbols(D1, 3)
    part = PartitionSlice(BOTH, D1, date(2024, 1, 3))
    order, ranges = frames.partition_ranges(df, part)
    assert order is None
    sizes = df.groupby([df["symbol"].str.replace("/", ""), df["ts"].dt.date]).size()
    assert [(k, d, b - a) for k, d, a, b in ranges] == [(k, d, int(n)) for (k, d), n in sizes.items()]
    assert ranges[0][2] == 0 and all(r[3] == nxt[2] for r, nxt in zip(ranges, ranges[1:], strict=False))
    shuffled = df.sample(frac=1.0, random_state=2)
    order, ranges2 = frames.partition_ranges(shuffled, part)
    assert order is not None
    assert [(k, d, b - a) for k, d, a, b in ranges2] == [(k, d, b - a) for k, d, a, b in ranges]
    for key, day, a, b in ranges2:
        rows = shuffled.iloc[order[a:b]]
        assert (rows["symbol"].str.replace("/", "") == key).all() and (rows["ts"].dt.date == day).all()
        assert np.all(np.diff(order[a:b]) > 0)  # stable: a partition's rows keep their order


def test_raw_frames_with_arrow_strings_round_trip_through_the_router(tmp_path: Path) -> None:
    """A raw table (no primary key, string prices) as sources may hand it over: Arrow-backed strings."""
    cfg = config(tmp_path, [{"id": "all", "destinations": ["parquet", "duckdb", "csv", "jsonl"]}])
    df = candles("EUR/USD", D1, 2).assign(open_text=lambda f: f["open"].map("{:.5f}".format))
    df = df.astype({"open_text": "string[pyarrow]", "symbol": "string[pyarrow]"})
    part = PartitionSlice(EUR, D1, date(2024, 1, 2))
    router = Router(cfg)
    router.write(RAW, df, part)
    for name in ("parquet", "duckdb", "csv", "jsonl"):
        got = router.destination(name).read(RAW, part)
        assert got["open_text"].dtype == pd.StringDtype("pyarrow"), name
        assert got["open_text"].dtype.storage == "pyarrow" and got["symbol"].dtype.storage == "pyarrow", name
        assert_same(got, df, name if name != "jsonl" else "jsonl")
