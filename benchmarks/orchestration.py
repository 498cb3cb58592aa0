"""Orchestration overhead: the daily update of 10 symbols (one single-partition pipeline run per symbol,
as the daily schedule launches them) and the per-run overhead of Dagster over the same work done directly."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import FIXED_NOW, base_config, row, served

SYMBOLS = [f"SYM{i}USDT" for i in range(10)]
DAY = "2024-01-03"


def daily(quick: bool) -> list[dict]:
    import dagster as dg

    from data_puller_dagster.assets.naming import table_ref
    from data_puller_dagster.automation.jobs import pipeline_job_name
    from data_puller_dagster.definitions import build_definitions
    from data_puller_dagster.io.router import Router
    from data_puller_dagster.io.tables import PartitionSlice
    from data_puller_dagster.sources.binance import BinanceAdapter
    from data_puller_dagster.transform.normalize import normalize

    symbols = SYMBOLS[:3] if quick else SYMBOLS
    tmp = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    try:
        with served("rest", symbols, 5 * 1440) as url:
            cfg = base_config(tmp / "data", feed={"symbols": symbols, "end_date": "2024-01-05"},
                              sources={"binance": {"base_url": url, "use_archive": False, "max_retries": 1}})  # fmt: skip
            defs = build_definitions(cfg)
            job = defs.resolve_job_def(pipeline_job_name(cfg.feed("bench")))
            instance = dg.DagsterInstance.ephemeral()
            # warm-up run (imports, first table creation) is not counted
            assert job.execute_in_process(instance=instance, partition_key=f"2024-01-02|{symbols[0]}").success
            per_run = []
            t0 = time.perf_counter()
            for s in symbols:
                t1 = time.perf_counter()
                assert job.execute_in_process(instance=instance, partition_key=f"{DAY}|{s}").success
                per_run.append(time.perf_counter() - t1)
            wall = time.perf_counter() - t0

            # The same work for one symbol-day without Dagster: fetch, normalize, write to both stores.
            feed = cfg.feed("bench")
            router = Router(cfg)
            day = pd.Timestamp(DAY, tz="UTC")
            direct = []
            for s in symbols:
                t1 = time.perf_counter()
                ad = BinanceAdapter.from_config(cfg.sources.binance)
                raw = ad.fetch(s, "1m", day, day + pd.Timedelta(days=1))
                ad.close()
                data = normalize(raw, asset_class="crypto", timeframe="1m", now=FIXED_NOW).data
                part = PartitionSlice(symbols={s: s}, start=day.date(), end=day.date())
                router.write(table_ref(feed, "normalized", "1m"), data, part)
                direct.append(time.perf_counter() - t1)
        med, dmed = statistics.median(per_run), statistics.median(direct)
        n = 1440 * len(symbols)
        return [
            row(f"daily update, {len(symbols)} symbols (1 run each)", n, wall,
                note=f"median run {med:.2f} s; layers 1m->1h->enriched"),
            row("per-run overhead (run minus direct raw+normalized work)", 1440, med - dmed,
                note=f"direct fetch+normalize+write {dmed * 1000:.0f} ms"),
        ]  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CASES = {"daily": daily}
