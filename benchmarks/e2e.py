"""End to end through Dagster: a backfill of 1 symbol x 1 year of 1m candles through every layer (raw ->
normalized -> derived 1h -> enriched 1h -> dataset 1h, Parquet + DuckDB), in runs of 31 day partitions,
next to a plain baseline (a requests loop + pandas + to_parquet) over the same local server."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import requests

from benchmarks.common import FIXED_NOW, START, base_config, row, served, timed

PER_RUN = 31


def _cfg(tmp: Path, url: str, days: int):
    end = (date.fromisoformat(START) + timedelta(days=days)).isoformat()
    return base_config(tmp / "data", feed={"end_date": end},
                       sources={"binance": {"base_url": url, "use_archive": False, "max_retries": 1}},
                       runs={"retry_max": 0, "max_partitions_per_run": PER_RUN})  # fmt: skip


def chunks(days: int) -> list[tuple[str, str]]:
    first = date.fromisoformat(START)
    out = []
    for i in range(0, days, PER_RUN):
        a, b = first + timedelta(days=i), first + timedelta(days=min(i + PER_RUN, days) - 1)
        out.append((a.isoformat(), b.isoformat()))
    return out


def backfill(defs, cfg, days: int) -> float:
    import dagster as dg

    from data_puller_dagster.automation.jobs import dataset_job_name, pipeline_job_name

    feed = cfg.feed("bench")
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.perf_counter()
    for job in (pipeline_job_name(feed), dataset_job_name(feed)):
        job_def = defs.resolve_job_def(job)
        for a, b in chunks(days):
            res = job_def.execute_in_process(
                instance=instance,
                tags={"dagster/asset_partition_range_start": f"{a}|BTCUSDT",
                      "dagster/asset_partition_range_end": f"{b}|BTCUSDT"},  # fmt: skip
                raise_on_error=True,
            )
            assert res.success
    return time.perf_counter() - t0


def baseline(url: str, start_ms: int, n: int, out: Path) -> int:
    """The least a user could do: page through /api/v3/klines in a loop, one DataFrame, to_parquet."""
    s = requests.Session()
    rows: list[list] = []
    cursor, end_ms = start_ms, start_ms + n * 60_000
    while cursor < end_ms:
        page = s.get(f"{url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", "startTime": cursor,
                                                     "endTime": end_ms - 1, "limit": 1000}).json()  # fmt: skip
        if not page:
            break
        rows.extend(page)
        cursor = page[-1][0] + 60_000
    cols = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
            "taker_buy_base", "taker_buy_quote", "ignore"]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    for c in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote"):
        df[c] = df[c].astype("float64")
    df["ts"] = pd.to_datetime(df["open_time"], unit="ms", utc=True)
    df.to_parquet(out, index=False)
    return len(df)


def pull_store(url: str, cfg, n: int) -> int:
    """Our raw pull + store without Dagster: adapter fetch, normalize, primary (Parquet) write per day."""
    from data_puller_dagster.assets.naming import table_ref
    from data_puller_dagster.io.router import build_destination
    from data_puller_dagster.io.tables import PartitionSlice
    from data_puller_dagster.sources.binance import BinanceAdapter
    from data_puller_dagster.transform.normalize import normalize

    start = pd.Timestamp(START, tz="UTC")
    ad = BinanceAdapter.from_config(cfg.sources.binance)
    raw = ad.fetch("BTCUSDT", "1m", start, start + pd.Timedelta(minutes=n))
    ad.close()
    data = normalize(raw, asset_class="crypto", timeframe="1m", now=FIXED_NOW).data
    part = PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=start.date(),
                          end=(start + pd.Timedelta(minutes=n - 1)).date())  # fmt: skip
    build_destination(cfg, "parquet").write(table_ref(cfg.feed("bench"), "normalized", "1m"), data, part)
    return len(data)


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-e2e-"))


def dagster_backfill(quick: bool) -> list[dict]:
    from data_puller_dagster.definitions import build_definitions

    days = 31 if quick else 366  # 2024 is a leap year: 527,040 candles
    n = days * 1440
    tmp = _tmp()
    try:
        with served("rest", ["BTCUSDT"], n) as url:
            cfg = _cfg(tmp, url, days)
            defs = build_definitions(cfg)
            t = backfill(defs, cfg, days)
        return [row(f"e2e Dagster backfill, {days} days x 1m, all layers", n, t, target="< 60 s, < 1.5 GB",
                    note=f"{len(chunks(days))} pipeline + {len(chunks(days))} dataset runs; 1 run")]  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plain(quick: bool) -> list[dict]:
    days, runs = (31, 2) if quick else (365, 3)
    n = days * 1440
    start_ms = int(pd.Timestamp(START, tz="UTC").value // 1_000_000)
    tmp = _tmp()
    try:
        with served("rest", ["BTCUSDT"], n) as url:
            cfg = _cfg(tmp, url, days)
            t_b, _, got = timed(lambda: baseline(url, start_ms, n, tmp / "baseline.parquet"), runs)
            assert got == n
            t_o, _, got2 = timed(lambda: pull_store(url, cfg, n), runs)
            assert got2 == n
        return [
            row("baseline: requests loop + pandas + to_parquet", n, t_b, note="sequential pages, one file"),
            row("ours: raw pull + normalize + Parquet store", n, t_o, target="<= 1.3x baseline",
                note=f"{t_o / t_b:.2f}x baseline"),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CASES = {"plain": plain, "dagster_backfill": dagster_backfill}
