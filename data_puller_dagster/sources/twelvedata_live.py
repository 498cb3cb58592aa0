"""Twelve Data live mode: the latest closed candle of each symbol, polled shortly after each close.

Why polling: Twelve Data has no kline stream on most plans. Shortly (`sources.twelvedata.
live_poll_delay_seconds`) after each candle close on the feed's grid, each symbol is asked for the
candles since the last one it returned, up to that close (`/time_series`, through the batch adapter:
same credit budget per minute, same retries, the key only in the Authorization header). Closes the
market calendar has no candle for (forex weekends, NYSE holidays and nights) are not polled, so no
credit is spent on them. A candle the provider has not published yet is asked for again (up to
`RETRIES` times, spaced by the delay) and otherwise comes with the next poll. The answers enter the
stream runner as polled raw frames: the same state, normalize, validation and routes as websocket
events ("the same event flow").

Cost: one credit per symbol per candle (plus retries). A feed needing more credits per minute than
`credits_per_minute` allows is warned about at start; its polls then wait for the budget and lag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.config import FeedConfig, TwelveDataSourceConfig
from data_puller_dagster.sources.errors import SourceError
from data_puller_dagster.sources.live import RawBatch, in_daemon_thread
from data_puller_dagster.sources.twelvedata import TwelveDataAdapter
from data_puller_dagster.transform.calendars import expected_grid

log = logging.getLogger("data_puller_dagster.stream")
RETRIES = 3


class Clock(Protocol):
    def now(self) -> pd.Timestamp: ...

    async def sleep_until(self, when: pd.Timestamp, stop: asyncio.Event) -> None: ...


class WallClock:
    def now(self) -> pd.Timestamp:
        return pd.Timestamp.now(tz="UTC")

    async def sleep_until(self, when: pd.Timestamp, stop: asyncio.Event) -> None:
        seconds = (when - self.now()).total_seconds()
        if seconds > 0:
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                pass


@dataclass
class PollStats:
    symbols: list[str]
    polls: int = 0
    interval_polls: int = 0
    candles: int = 0
    retries: int = 0
    errors: int = 0
    last_lag_s: float = 0.0  # fetch time - candle close of the newest candle received


class TwelveDataPoller:
    def __init__(self, feed: FeedConfig, adapter: TwelveDataAdapter, options: TwelveDataSourceConfig,
                 submit: Callable[[RawBatch], None], clock: Clock | None = None):  # fmt: skip
        self.feed = feed
        self.adapter = adapter
        self.delay = pd.Timedelta(seconds=options.live_poll_delay_seconds)
        self.submit = submit
        self.clock = clock or WallClock()
        self.step = pd.Timedelta(seconds=timeframes.seconds(feed.timeframe))
        self.have_until: dict[str, pd.Timestamp] = {}
        self.stats = PollStats(list(feed.symbols))
        per_minute = len(feed.symbols) * 60 / self.step.total_seconds()
        if per_minute > options.credits_per_minute:
            log.warning("twelvedata live %s: %d symbol(s) every %s need %.1f credits/minute, more than "
                        "credits_per_minute=%d; polls will wait for credits and lag", feed.name,
                        len(feed.symbols), feed.timeframe, per_minute, options.credits_per_minute)  # fmt: skip

    def _expected(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
        return expected_grid(self.feed.asset_class, self.feed.timeframe, start, end)

    def _poll(self, symbol: str, close: pd.Timestamp) -> bool:
        """Fetch [have_until, close) for one symbol; True when the candle ending at `close` came."""
        start = self.have_until.get(symbol, close - self.step)
        if start >= close or not len(self._expected(start, close)):
            return True  # nothing to ask for (already have it, or the market had no candle)
        self.stats.polls += 1
        self.stats.interval_polls += 1
        raw = self.adapter.fetch(symbol, self.feed.timeframe, start.to_pydatetime(), close.to_pydatetime())
        if len(raw):
            last = raw["ts"].max()
            self.have_until[symbol] = last + self.step
            self.stats.candles += len(raw)
            self.stats.last_lag_s = (self.clock.now() - (last + self.step)).total_seconds()
            self.submit(RawBatch.polled(raw, self.step.value))
        return self.have_until.get(symbol, start) >= close

    async def run(self, stop: asyncio.Event) -> None:
        """Poll after every close until `stop` is set."""
        close = self.clock.now().floor(self.step)
        while not stop.is_set():
            todo = list(self.feed.symbols)
            for attempt in range(RETRIES + 1):
                missing = []
                for symbol in todo:
                    if stop.is_set():
                        return
                    try:
                        if not await in_daemon_thread(self._poll, symbol, close):
                            missing.append(symbol)
                    except SourceError as e:
                        self.stats.errors += 1
                        log.warning("twelvedata live %s %s: poll for %s failed: %s", self.feed.name, symbol,
                                    close.isoformat(), e)  # fmt: skip
                        missing.append(symbol)
                todo = missing
                if not todo or attempt == RETRIES:
                    break
                self.stats.retries += len(todo)
                await self.clock.sleep_until(self.clock.now() + max(self.delay, pd.Timedelta(seconds=1)) / 2, stop)
            close = close + self.step
            await self.clock.sleep_until(close + self.delay, stop)

