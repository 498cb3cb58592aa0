"""Writes of 1M normalized rows through each destination (as the router calls them: one file / slice per
symbol x UTC day), and a one-month range read back from each."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from benchmarks.common import PG_URL, START, base_config, normalized_frame, row, timed


def _setup(quick: bool):
    from data_puller_dagster.io.tables import PartitionSlice

    n, runs = (200_000, 2) if quick else (1_000_000, 3)
    df = normalized_frame(n)
    first = date.fromisoformat(START)
    last = df["ts"].max().date()
    part = PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=first, end=last)
    month = PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=first + timedelta(days=31),
                           end=first + timedelta(days=61))  # fmt: skip
    return n, runs, df, part, month


def _table(feed: str):
    from data_puller_dagster.io.tables import TableRef

    return TableRef(feed=feed, name="normalized_1m", layer="normalized", asset_class="crypto", timeframe="1m",
                    primary_key=("symbol", "timeframe", "ts"))  # fmt: skip


def _bench(dest_name: str, quick: bool, target: str = "") -> list[dict]:
    from data_puller_dagster.io.router import build_destination

    n, runs, df, part, month = _setup(quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    cfg = base_config(tmp, storage={"postgres_url": PG_URL})
    dest = build_destination(cfg, dest_name)
    counter = itertools.count()
    feeds: list[str] = []

    def write():  # a fresh table each run: the first write of a backfill
        feeds.append(f"bench_{dest_name}_{int(time.time())}_{next(counter)}")
        return dest.write(_table(feeds[-1]), df, part)

    try:
        t_w, _, info = timed(write, runs)
        t_r, _, back = timed(lambda: dest.read(_table(feeds[-1]), month), runs)
        rows = [
            row(f"{dest_name} write", n, t_w, target=target, note=f"{info.get('files', part.days)} day slices"),
            row(f"{dest_name} read 31 days", len(back), t_r),
        ]
        if dest_name == "parquet":  # the ceiling: the same rows as one file, no per-day split
            import pyarrow as pa
            import pyarrow.parquet as pq

            from data_puller_dagster.io.destinations.parquet_store import COMPRESSION

            one = tmp / "one.parquet"
            t1, _, _ = timed(lambda: pq.write_table(pa.Table.from_pandas(df, preserve_index=False), one,
                                                    compression=COMPRESSION), runs)  # fmt: skip
            rows.append(row("parquet write, one file (reference)", n, t1, note="pyarrow alone, no day split"))
        return rows
    finally:
        if dest_name == "postgres":
            import psycopg2

            with psycopg2.connect(PG_URL) as conn, conn.cursor() as cur:
                for f in feeds:
                    cur.execute(f'DROP SCHEMA IF EXISTS "{f}" CASCADE')
        shutil.rmtree(tmp, ignore_errors=True)


CASES = {
    "parquet": lambda quick: _bench("parquet", quick, ">= 2M rows/s"),
    "duckdb": lambda quick: _bench("duckdb", quick),
    "postgres": lambda quick: _bench("postgres", quick, ">= 300k rows/s (COPY)"),
}
