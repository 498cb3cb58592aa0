"""The pipelined writes of the stores (Postgres COPY CSV streamed in chunks, Parquet day files staged on
threads) store exactly what a one-shot write stores, and a failure midway keeps the previous rows."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from data_puller_dagster.io.destinations import parquet_store, postgres_store
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.destinations.postgres_store import PostgresDestination
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.io.test_destinations import BOTH, D1, TABLE, assert_same, two_symbols

PART = PartitionSlice(BOTH, D1, date(2024, 1, 3))


def test_postgres_copy_in_many_chunks_round_trips(pg_schema, monkeypatch) -> None:
    monkeypatch.setattr(postgres_store, "COPY_CHUNK_ROWS", 7)  # 144 rows -> 21 chunks, last one partial
    dest = PostgresDestination(*pg_schema)
    df = two_symbols(D1, 3)
    dest.write(TABLE, df, PART)
    assert_same(dest.read(TABLE, PART), df, "postgres")


def test_postgres_encoding_error_midway_rolls_back(pg_schema, monkeypatch) -> None:
    dest = PostgresDestination(*pg_schema)
    old = two_symbols(D1, 3)
    dest.write(TABLE, old, PART)
    monkeypatch.setattr(postgres_store, "COPY_CHUNK_ROWS", 10)
    real, calls = postgres_store._timestamps_as_text, []

    def fail_on_third(arrow):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("encoder broke")
        return real(arrow)

    monkeypatch.setattr(postgres_store, "_timestamps_as_text", fail_on_third)
    with pytest.raises(Exception, match="encoder broke"):
        dest.write(TABLE, two_symbols(D1, 3, offset=20), PART)
    monkeypatch.setattr(postgres_store, "_timestamps_as_text", real)
    assert_same(dest.read(TABLE, PART), old, "postgres")


@pytest.mark.parametrize("threads", [1, 4])
def test_parquet_threaded_staging_same_rows(tmp_path: Path, monkeypatch, threads: int) -> None:
    monkeypatch.setattr(parquet_store, "WRITE_THREADS", threads)
    dest = ParquetDestination(str(tmp_path / "lake"))
    df = two_symbols(D1, 3)
    info = dest.write(TABLE, df, PART)
    assert info["files"] == len(df.groupby(["symbol", df["ts"].dt.date]))  # one file per symbol-day
    assert_same(dest.read(TABLE, PART), df, "parquet")
    assert list(Path(dest.table_dir(TABLE)).rglob(".*.tmp")) == []
