"""Every destination against its real store: write, read a range, overwrite, empty days, failure midway,
schema drift. Frames are real EURUSD hourly candles (see conftest)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.io.destinations.duckdb_store import DuckDBDestination
from data_puller_dagster.io.destinations.files_store import CSVDestination, JSONLDestination
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.destinations.postgres_store import PostgresDestination
from data_puller_dagster.io.errors import FrameContractError, SchemaDriftError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows

TABLE = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
EUR = {"EURUSD": "EUR/USD"}
GBP = {"GBPUSD": "GBP/USD"}
BOTH = {**EUR, **GBP}
D1, D10 = date(2024, 1, 1), date(2024, 1, 10)
# JSON keeps 15 significant digits; every other store must round-trip floats exactly.
EXACT = {"parquet", "parquet_memory", "parquet_s3", "duckdb", "postgres", "csv", "influxdb"}
# Stores whose destination comes from a server fixture (servers/): kind -> fixture name.
SERVER_STORES = {"parquet_s3": "s3_parquet_destination", "influxdb": "influxdb_destination"}


@pytest.fixture(
    params=["parquet", "parquet_memory", "parquet_s3", "duckdb", "postgres", "csv", "jsonl", "influxdb"]
)
def dest(request, tmp_path: Path):
    kind = request.param
    if kind in SERVER_STORES:
        d = request.getfixturevalue(SERVER_STORES[kind])
    elif kind == "parquet":
        d = ParquetDestination(str(tmp_path / "lake"))
    elif kind == "parquet_memory":
        d = ParquetDestination(f"memory://lake_{tmp_path.name}")
    elif kind == "duckdb":
        d = DuckDBDestination(tmp_path / "warehouse.duckdb")
    elif kind == "postgres":
        url, prefix = request.getfixturevalue("pg_schema")
        d = PostgresDestination(url, prefix)
    elif kind == "csv":
        d = CSVDestination(tmp_path / "csv")
    else:
        d = JSONLDestination(tmp_path / "jsonl")
    d.kind = kind  # type: ignore[attr-defined]
    return d


def assert_same(got: pd.DataFrame, want: pd.DataFrame, kind: str) -> None:
    pd.testing.assert_frame_equal(sort_rows(got), sort_rows(want), check_exact=kind in EXACT)


def two_symbols(start: date, days: int, offset: int = 0) -> pd.DataFrame:
    return pd.concat(
        [
            candles("EUR/USD", start, days, seed_offset=offset),
            candles("GBP/USD", start, days, seed_offset=offset + 3),
        ],
        ignore_index=True,
    )


def test_write_then_read_range_round_trips_dtypes(dest) -> None:
    df = two_symbols(D1, 10)
    md = dest.write(TABLE, df, PartitionSlice(BOTH, D1, D10))
    assert md["rows"] == len(df)
    # Range read of a sub-slice: one symbol, days 3..6.
    part = PartitionSlice(EUR, date(2024, 1, 3), date(2024, 1, 6))
    got = dest.read(TABLE, part)
    want = df[(df["symbol"] == "EUR/USD") & (df["ts"] >= part.start_ts) & (df["ts"] < part.end_ts)]
    assert len(want) > 20
    assert_same(got, want, dest.kind)
    assert list(got.dtypes.astype(str)) == list(df.dtypes.astype(str))


def test_overwrite_is_idempotent_and_replaces_exactly_the_slice(dest) -> None:
    first = two_symbols(D1, 10)
    dest.write(TABLE, first, PartitionSlice(BOTH, D1, D10))
    dest.write(TABLE, first, PartitionSlice(BOTH, D1, D10))  # same again: still one copy
    assert_same(dest.read(TABLE, PartitionSlice(BOTH, D1, D10)), first, dest.kind)

    # Rewrite EUR/USD days 2..4 with other values, and no rows at all on day 3.
    part = PartitionSlice(EUR, date(2024, 1, 2), date(2024, 1, 4))
    new = candles("EUR/USD", part.start, 3, seed_offset=40)
    new = new[new["ts"].dt.date != date(2024, 1, 3)]
    assert not new.empty
    dest.write(TABLE, new, part)

    got = dest.read(TABLE, PartitionSlice(BOTH, D1, D10))
    untouched = first[
        ~((first["symbol"] == "EUR/USD") & (first["ts"] >= part.start_ts) & (first["ts"] < part.end_ts))
    ]
    assert_same(got, pd.concat([untouched, new]), dest.kind)
    assert not (got["ts"].dt.date == date(2024, 1, 3))[got["symbol"] == "EUR/USD"].any()
    assert (got["ts"].dt.date == date(2024, 1, 3))[got["symbol"] == "GBP/USD"].any()


def test_unknown_table_and_empty_slice_read_as_empty(dest) -> None:
    assert dest.read(TABLE, PartitionSlice(EUR, D1, D10)).empty
    dest.write(TABLE, candles("EUR/USD", D1, 2), PartitionSlice(EUR, D1, date(2024, 1, 2)))
    empty = dest.read(TABLE, PartitionSlice(GBP, D1, D10))
    assert empty.empty and list(empty.columns) == list(candles("EUR/USD", D1, 1).columns)
    assert str(empty["ts"].dtype) == "datetime64[ns, UTC]"


def test_contract_violations_are_rejected_before_anything_is_written(dest) -> None:
    df = candles("EUR/USD", D1, 3)
    with pytest.raises(FrameContractError, match="outside"):
        dest.write(TABLE, df, PartitionSlice(EUR, D1, D1))
    with pytest.raises(FrameContractError, match="GBP/USD"):
        dest.write(
            TABLE,
            df.assign(symbol=pd.array(["GBP/USD"] * len(df), dtype="string")),
            PartitionSlice(EUR, D1, D10),
        )
    with pytest.raises(FrameContractError, match="primary key"):
        dest.write(TABLE, pd.concat([df, df.head(2)]), PartitionSlice(EUR, D1, D10))
    assert dest.read(TABLE, PartitionSlice(EUR, D1, D10)).empty


def test_schema_drift_names_the_columns(dest) -> None:
    part = PartitionSlice(EUR, D1, date(2024, 1, 2))
    df = candles("EUR/USD", D1, 2)
    dest.write(TABLE, df, part)
    drifted = df.drop(columns=["quote_volume"]).assign(spread=df["high"] - df["low"])
    with pytest.raises(SchemaDriftError, match=r"added \['spread'\], removed \['quote_volume'\]"):
        dest.write(TABLE, drifted, part)
    assert_same(dest.read(TABLE, part), df, dest.kind)


def test_failure_midway_leaves_previous_version(dest, request) -> None:
    """A real failure after part of the write was done: the old rows survive."""
    part = PartitionSlice(BOTH, D1, date(2024, 1, 3))
    old = two_symbols(D1, 3)
    dest.write(TABLE, old, part)
    new = two_symbols(D1, 3, offset=20)
    if dest.kind in ("duckdb", "postgres"):
        # The DELETE runs, then the bulk load fails: a uint64 beyond BIGINT in the last row.
        trades = new["trades"].fillna(1).astype("uint64").to_numpy()
        trades[-1] = np.uint64(2**63 + 5)
        with pytest.raises(Exception, match="(?i)range|overflow|convert"):
            dest.write(TABLE, new.assign(trades=trades), part)
    elif dest.kind == "parquet_memory":
        pytest.skip("memory:// cannot be made to fail one partition; the local root covers it")
    elif dest.kind == "parquet_s3":
        # A real refusal midway: the S3 server enforces an IAM policy denying PUTs under GBPUSD. Each
        # day file is one whole PUT: EURUSD's days hold the new rows, GBPUSD's their previous ones.
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        with server.puts_denied(bucket, "*/symbol_key=GBPUSD/*") as options:
            with pytest.raises(PermissionError, match=r"2 of 5 partition file PUT\(s\) failed.*GBPUSD"):
                ParquetDestination(dest.root, storage_options=options).write(TABLE, new, part)
        old = pd.concat([new[new["symbol"] == "EUR/USD"], old[old["symbol"] == "GBP/USD"]])
    elif dest.kind == "influxdb":
        # Batches of 10 points: the server takes the first ones, then rejects the last batch (its last
        # row's source tag makes a series key beyond InfluxDB's 64 KiB limit). Nothing is committed.
        dest.batch_size = 10
        source = new["source"].astype(object).to_numpy()
        source[-1] = "x" * 70_000
        with pytest.raises(Exception, match=r"max key length(.|\n)*after [1-9]\d* of \d+ write requests"):
            dest.write(TABLE, new.assign(source=pd.array(source, dtype="string")), part)
    else:
        # EURUSD partitions are staged first; GBPUSD's directory cannot be created (a file is in its
        # place), so the write fails on its second symbol. The GBPUSD rows are sacrificed by the test.
        f = Path(dest.partition_file(TABLE, "GBPUSD", D1))
        victim = f.parents[1] if dest.kind == "parquet" else f.parent
        shutil.rmtree(victim)
        victim.write_text("in the way")
        with pytest.raises(OSError):
            dest.write(TABLE, new, part)
        victim.unlink()
        old = old[old["symbol"] == "EUR/USD"]
        assert list(Path(dest.table_dir(TABLE)).rglob(".*.tmp")) == []
    assert_same(dest.read(TABLE, part), old, dest.kind)
