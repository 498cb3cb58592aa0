"""The README's analyst snippets, run for real: DuckDB, pyarrow.dataset and pandas all see the display
symbol (`EUR/USD`) in `symbol`, the key in `symbol_key` and the day in `date`."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds

from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles

TABLE = TableRef("forex", "ohlcv_1h", "derived", "forex", "1h", ("symbol", "ts"))


def _lake(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    df = pd.concat(
        [candles("EUR/USD", date(2024, 1, 1), 5), candles("BRK.B", date(2024, 1, 1), 5, seed_offset=9)]
    )
    ParquetDestination(str(tmp_path / "parquet")).write(
        TABLE, df, PartitionSlice({"EURUSD": "EUR/USD", "BRK.B": "BRK.B"}, date(2024, 1, 1), date(2024, 1, 5))
    )
    return tmp_path / "parquet", df


def test_duckdb_read_parquet_with_hive_partitioning(tmp_path: Path) -> None:
    root, df = _lake(tmp_path)
    got = duckdb.sql(
        "SELECT symbol, symbol_key, date, count(*) AS n, sum(close) AS s "
        "FROM read_parquet(?, hive_partitioning=true) GROUP BY ALL ORDER BY symbol, date",
        params=[f"{root}/forex/ohlcv_1h/**/*.parquet"],
    ).df()
    want = (
        df.assign(date=df["ts"].dt.date)
        .groupby(["symbol", "date"])
        .agg(n=("close", "size"), s=("close", "sum"))
        .reset_index()
    )
    assert list(got["symbol"]) == [str(s) for s in want["symbol"]]
    assert set(got["symbol_key"]) == {"EURUSD", "BRK.B"}
    assert [d.date() for d in pd.to_datetime(got["date"])] == list(want["date"])
    assert list(got["n"]) == list(want["n"])
    assert (abs(got["s"] - want["s"]) < 1e-9).all()


def test_pyarrow_dataset_with_hive_partitioning(tmp_path: Path) -> None:
    root, df = _lake(tmp_path)
    dataset = ds.dataset(root / "forex" / "ohlcv_1h", format="parquet", partitioning="hive")
    table = dataset.to_table(filter=(ds.field("symbol_key") == "EURUSD") & (ds.field("date") >= "2024-01-02"))
    out = table.to_pandas()
    want = df[(df["symbol"] == "EUR/USD") & (df["ts"] >= pd.Timestamp("2024-01-02", tz="UTC"))]
    assert set(out["symbol"]) == {"EUR/USD"}
    assert len(out) == len(want) > 0
    assert out["close"].sum() == want["close"].sum()


def test_pandas_read_parquet(tmp_path: Path) -> None:
    root, df = _lake(tmp_path)
    out = pd.read_parquet(root / "forex" / "ohlcv_1h", filters=[("symbol_key", "==", "BRK.B")])
    want = df[df["symbol"] == "BRK.B"]
    assert set(out["symbol"]) == {"BRK.B"}
    assert len(out) == len(want) > 0
    assert str(out["ts"].dtype) == "datetime64[ns, UTC]" and str(out["trades"].dtype) == "Int64"
    full = pd.read_parquet(root / "forex" / "ohlcv_1h")
    assert len(full) == len(df)
