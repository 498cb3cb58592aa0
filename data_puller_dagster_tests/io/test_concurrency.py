"""Concurrent writers on the real stores: DuckDB from several processes (one file lock), Postgres and
Parquet from several threads writing overlapping slices. Every writer must succeed and every partition
must end up with exactly one copy of one writer's rows."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from data_puller_dagster.io.destinations.duckdb_store import DuckDBDestination
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.destinations.postgres_store import PostgresDestination
from data_puller_dagster.io.errors import LockTimeoutError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows

TABLE = TableRef("crypto", "ohlcv_1h", "derived", "crypto", "1h", ("symbol", "ts"))
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
START, DAYS = date(2024, 3, 1), 4
PART_ALL = PartitionSlice({s: s for s in SYMBOLS}, START, date(2024, 3, 4))


def _job(symbol: str, offset: int) -> tuple[pd.DataFrame, PartitionSlice]:
    return candles(symbol, START, DAYS, seed_offset=offset), PartitionSlice(
        {symbol: symbol}, START, date(2024, 3, 4)
    )


def _duck_writer(path: str, symbol: str, offset: int, rounds: int) -> int:
    dest = DuckDBDestination(path, lock_timeout=60)
    df, part = _job(symbol, offset)
    for _ in range(rounds):
        dest.write(TABLE, df, part)
    return len(df)


def _hold_lock(path: str, ready, release) -> None:
    con = duckdb.connect(path)
    ready.set()
    release.wait(30)
    con.close()


def _expected(offsets: dict[str, int]) -> pd.DataFrame:
    return pd.concat([_job(s, o)[0] for s, o in offsets.items()], ignore_index=True)


def test_duckdb_writers_in_separate_processes_all_succeed(tmp_path: Path) -> None:
    path = str(tmp_path / "warehouse.duckdb")
    ctx = mp.get_context("fork")
    # Two processes per symbol write the same slice (same rows): overlap on the lock and on the rows.
    args = [(path, s, i, 3) for i, s in enumerate(SYMBOLS)] * 2
    with ctx.Pool(len(args)) as pool:
        results = pool.starmap(_duck_writer, args)
    assert all(n > 0 for n in results)
    got = DuckDBDestination(path).read(TABLE, PART_ALL)
    pd.testing.assert_frame_equal(
        sort_rows(got), sort_rows(_expected({s: i for i, s in enumerate(SYMBOLS)})), check_exact=True
    )


def test_duckdb_lock_held_too_long_raises_clear_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "warehouse.duckdb")
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        df, part = _job("BTCUSDT", 0)
        with pytest.raises(
            LockTimeoutError, match=r"warehouse\.duckdb stayed locked by another process for 1 s"
        ):
            DuckDBDestination(path, lock_timeout=1).write(TABLE, df, part)
    finally:
        release.set()
        holder.join(20)
    DuckDBDestination(path, lock_timeout=30).write(TABLE, df, part)  # lock released: the write goes through
    assert len(DuckDBDestination(path).read(TABLE, part)) == len(df)


def _threaded(dest, rounds: int = 3) -> None:
    jobs = [(s, i) for i, s in enumerate(SYMBOLS)] * 2
    frames = {s: _job(s, o) for s, o in jobs}

    def work(symbol: str) -> None:
        df, part = frames[symbol]
        for _ in range(rounds):
            dest.write(TABLE, df, part)

    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(work, [s for s, _ in jobs]))
    got = dest.read(TABLE, PART_ALL)
    pd.testing.assert_frame_equal(
        sort_rows(got), sort_rows(_expected({s: i for i, s in enumerate(SYMBOLS)})), check_exact=True
    )


def test_postgres_concurrent_writers_same_table(pg_schema) -> None:
    url, prefix = pg_schema
    _threaded(PostgresDestination(url, prefix))


def test_parquet_concurrent_writers_same_partitions(tmp_path: Path) -> None:
    _threaded(ParquetDestination(str(tmp_path / "lake")))
