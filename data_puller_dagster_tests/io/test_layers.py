"""Layer-specific storage rules: quarantine rows with NaT ts stay attached to the slice's first day in
every store; dataset lines are written to JSONL verbatim."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.io.destinations.duckdb_store import DuckDBDestination
from data_puller_dagster.io.destinations.files_store import JSONLDestination
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.destinations.postgres_store import PostgresDestination
from data_puller_dagster.io.errors import FrameContractError, StorageError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows

QUARANTINE = TableRef("forex", "quarantine_ohlcv_1h", "quarantine", "forex", "1h", None)
DATASET = TableRef("forex", "llm_dataset_1h", "dataset", "forex", "1h", None)
EUR = {"EURUSD": "EUR/USD"}


def quarantined(start: date) -> pd.DataFrame:
    df = candles("EUR/USD", start, 2).head(4)
    df["reason"] = pd.array(["high<low", "duplicate ts", "unparseable ts", "negative volume"], dtype="string")
    df.loc[2, "ts"] = pd.NaT
    return pd.concat([df, df.iloc[[0]]], ignore_index=True)  # quarantine may hold duplicates


@pytest.mark.parametrize("kind", ["parquet", "duckdb", "postgres"])
def test_quarantine_nat_rows_belong_to_first_day_of_their_slice(kind: str, tmp_path: Path, request) -> None:
    if kind == "parquet":
        dest = ParquetDestination(str(tmp_path / "lake"))
    elif kind == "duckdb":
        dest = DuckDBDestination(tmp_path / "w.duckdb")
    else:
        url, prefix = request.getfixturevalue("pg_schema")
        dest = PostgresDestination(url, prefix)
    d1, d2 = date(2024, 1, 2), date(2024, 1, 3)
    first = quarantined(d1)
    dest.write(QUARANTINE, first, PartitionSlice(EUR, d1, d1))
    second = quarantined(d2)
    dest.write(QUARANTINE, second, PartitionSlice(EUR, d2, d2))
    both = PartitionSlice(EUR, d1, d2)
    got = dest.read(QUARANTINE, both)
    assert len(got) == 10 and int(got["ts"].isna().sum()) == 2
    # Rewriting day 1 replaces day 1's NaT row only, not day 2's.
    dest.write(QUARANTINE, first.iloc[:2], PartitionSlice(EUR, d1, d1))
    got = dest.read(QUARANTINE, both)
    pd.testing.assert_frame_equal(
        sort_rows(got).drop(columns="ts"), sort_rows(pd.concat([first.iloc[:2], second])).drop(columns="ts")
    )
    assert int(got["ts"].isna().sum()) == 1
    assert list(got.columns) == list(first.columns)  # the stores' partition_date column stays internal


def test_nat_ts_is_rejected_outside_quarantine(tmp_path: Path) -> None:
    table = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
    df = candles("EUR/USD", date(2024, 1, 2), 1)
    df.loc[0, "ts"] = pd.NaT
    with pytest.raises(FrameContractError, match="NaT ts; only quarantine"):
        ParquetDestination(str(tmp_path)).write(
            table, df, PartitionSlice(EUR, date(2024, 1, 2), date(2024, 1, 2))
        )


def test_dataset_lines_are_written_verbatim(tmp_path: Path) -> None:
    df = candles("EUR/USD", date(2024, 1, 2), 2)
    # Lines as a dataset builder would produce them: fixed decimals, key order chosen on purpose.
    lines = df["close"].map("{:.5f}".format)
    examples = pd.DataFrame(
        {
            "ts": df["ts"],
            "symbol": df["symbol"],
            "split": pd.array(["train"] * len(df), dtype="string"),
            "line": ('{"target": ' + lines + ', "symbol": "EUR/USD"}').astype("string"),
        }
    )
    dest = JSONLDestination(tmp_path / "jsonl")
    dest.write(DATASET, examples, PartitionSlice(EUR, date(2024, 1, 2), date(2024, 1, 3)))
    day2 = examples[examples["ts"].dt.date == date(2024, 1, 2)]
    text = (tmp_path / "jsonl" / "forex" / "llm_dataset_1h" / "EURUSD" / "2024-01-02.jsonl").read_text()
    assert text.splitlines() == list(day2["line"])
    assert json.loads(text.splitlines()[0])["target"] == float(
        day2["line"].iloc[0].split(": ")[1].split(",")[0]
    )
    with pytest.raises(StorageError, match="read it from storage.primary"):
        dest.read(DATASET, PartitionSlice(EUR, date(2024, 1, 2), date(2024, 1, 3)))
