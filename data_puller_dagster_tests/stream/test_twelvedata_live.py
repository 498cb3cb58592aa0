"""Twelve Data live mode against the fake /time_series server: each closed candle is polled once
shortly after its close (never for hours the forex market is shut), and the feed's day reaches the
live table complete, once, through the same state, normalize and routes as the websocket stream."""

from __future__ import annotations

import asyncio
import time

import pandas as pd

from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.config import parse_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.stream.runner import run_async
from data_puller_dagster_tests.fakes.server import Reply
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData, generate_time_series

DAY = pd.Timestamp("2024-03-08", tz="UTC")  # a Friday: forex closes at 17:00 New York (22:00 UTC)
KEY = "td-test-key-0123456789"
HOUR = pd.Timedelta(hours=1)


class FastClock:
    """Virtual time `speed` times faster than real time, from `start`."""

    def __init__(self, start: pd.Timestamp, speed: float):
        self.start, self.speed, self.t0 = start, speed, time.monotonic()

    def now(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(seconds=(time.monotonic() - self.t0) * self.speed)

    async def sleep_until(self, when: pd.Timestamp, stop: asyncio.Event) -> None:
        seconds = (when - self.now()).total_seconds() / self.speed
        if seconds > 0:
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                pass


class ClockedTwelveData(FakeTwelveData):
    """Serves only the bars closed on the virtual clock (a bar is published when its hour is over)."""

    def __init__(self, clock: FastClock, **kw):
        super().__init__(**kw)
        self.clock = clock

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
        last = (self.clock.now() - HOUR).floor("s")
        if "end_date" in params:
            params = {**params, "end_date": min(pd.Timestamp(params["end_date"]), last.tz_localize(None)).isoformat(" ")}
        return super().handle(path, params, headers)


def test_polls_each_closed_candle_once_within_the_budget(tmp_path) -> None:
    clock = FastClock(DAY + pd.Timedelta(hours=15, minutes=30), speed=3600 * 4)  # an hour per 0.25 s
    symbols = ["EUR/USD", "GBP/USD"]
    fake = ClockedTwelveData(clock, api_key=KEY)
    for i, s in enumerate(symbols):
        fake.add(s, "1h", generate_time_series(str(DAY.date()), 24, "1h", volume=False, seed=i))
    with fake:
        cfg = parse_config({
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": {"twelvedata": {"base_url": fake.url, "api_key": KEY, "credits_per_minute": 60,
                                       "live_poll_delay_seconds": 120}},
            "feeds": [{"name": "forex", "source": "twelvedata", "asset_class": "forex", "timeframe": "1h",
                       "symbols": symbols, "start_date": "2024-01-01"}],
            "stream": {"store_flush_seconds": 0.2},
        }, env={})  # fmt: skip
        started = time.monotonic()
        streams = asyncio.run(run_async(cfg, cfg.feeds, duration=2.4, clock=clock))
        elapsed = time.monotonic() - started
        requests = fake.time_series_requests
        virtual_end = clock.now()
    poller = streams[0].source
    table = table_ref(cfg.feeds[0], "live", "1h")
    df = Router(cfg).store("parquet").read(table, PartitionSlice({"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"},
                                                                 DAY.date(), DAY.date()))  # fmt: skip
    # Forex closes Friday 22:00 UTC: the last bar is 21:00; the clock ran to about 01:00 Saturday.
    assert virtual_end > DAY + pd.Timedelta(hours=23)
    expected = pd.date_range(DAY, DAY + pd.Timedelta(hours=21), freq="1h")
    for s in symbols:
        rows = df[df["symbol"] == s].sort_values("ts")
        assert list(rows["ts"]) == list(expected), s
        assert rows["is_final"].all() and rows["volume"].isna().all() and set(rows["source"]) == {"twelvedata"}
    # The clock starts at 15:30: one poll per symbol per closed bar from the 14:00 bar to the 21:00 bar,
    # none after the close, plus one request per symbol for the day before 14:00 (the fill); retries
    # only for a bar not out yet.
    polled_hours = 8
    assert poller.stats.polls == len(symbols) * polled_hours + poller.stats.retries
    assert requests == len(symbols) * (polled_hours + 1) + poller.stats.retries
    assert poller.stats.retries <= 2 and 0 < poller.stats.last_lag_s < 3600 and requests <= 60 * max(1.0, elapsed / 60)  # within credits_per_minute
    assert streams[0].pipe.counters.stale == 0 and streams[0].pipe.counters.finals_routed == len(df)
