"""Filling a live feed's gaps with the batch adapter (Binance REST, Twelve Data /time_series).

Why the existing adapters: they already respect the provider's budget (Binance request weight read from
`X-MBX-USED-WEIGHT-1M`, Twelve Data credits per minute), persist and honour 418 bans, and retry 5xx with
backoff; the stream shares that budget with everything else of the process. A fill asks exactly for
[last final candle + 1, first candle seen after the gap): every candle of that range is closed, so the
answer needs no guessing about the current one.

At a symbol's first sight the fill starts after what `storage.primary` already holds of the live table
for that day (a restart), or at the day's start (`stream.initial_backfill: day`).

A fill that keeps failing (provider down, ban) is retried with backoff for `stream.backfill_give_up_seconds`;
then the held rows flow on without it and the range is logged as a gap the batch pipeline fills.
Errors a retry cannot fix (invalid symbol, refused key) give up at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.sources.base import raw_empty
from data_puller_dagster.sources.errors import (
    AuthenticationError,
    InvalidRequestError,
    IpBannedError,
    SourceError,
)
from data_puller_dagster.sources.live import RawBatch, in_daemon_thread
from data_puller_dagster.stream.daystore import day_of_ns
from data_puller_dagster.stream.routing import LiveRouters
from data_puller_dagster.stream.state import Gap
from data_puller_dagster.symbols import partition_key
from data_puller_dagster.transform.canonical import coerce_canonical

log = logging.getLogger("data_puller_dagster.stream")

Fetch = Callable[[str, datetime, datetime], pd.DataFrame]  # (symbol, start, end) -> raw frame


@dataclass
class Filled:
    gap: Gap
    batch: RawBatch
    restored: pd.DataFrame | None
    fetched: int
    failed: bool = False


class Backfiller:
    def __init__(self, table: TableRef, layout: str, fetch: Fetch, step_ns: int, routers: LiveRouters | None,
                 give_up_seconds: float, concurrency: int = 4):  # fmt: skip
        self.table = table
        self.layout = layout
        self.fetch = fetch
        self.step_ns = step_ns
        self.routers = routers
        self.give_up = give_up_seconds
        self.limit = asyncio.Semaphore(concurrency)
        self.requests = 0

    def _restore(self, symbol: str, end: pd.Timestamp) -> pd.DataFrame | None:
        """The day's final candles before `end` that storage.primary holds (None: not restorable)."""
        if self.routers is None or not self.routers.restorable(self.table):
            return None
        day = day_of_ns(end.value)
        store = self.routers.stores.store(self.routers.cfg.storage.primary)
        df = store.read(self.table, PartitionSlice({partition_key(symbol): symbol}, day, day))
        if not len(df) or "is_final" not in df.columns:  # nothing stored yet (a store may return no columns)
            return None
        df = df[df["is_final"].astype(bool) & (df["ts"] < end)].reset_index(drop=True)
        return coerce_canonical(df)

    async def fill(self, gap: Gap) -> Filled:
        restored = None
        start = gap.start
        if start is None:
            restored = await asyncio.to_thread(self._restore, gap.symbol, gap.end)
            if restored is not None and len(restored):
                start = restored["ts"].max() + pd.Timedelta(self.step_ns, "ns")
            else:
                start = gap.end.normalize()  # the UTC day's start
        raw, failed = raw_empty(self.layout), False
        if start < gap.end:
            raw, failed = await self._fetch(gap.symbol, start, gap.end)
        return Filled(gap, RawBatch.polled(raw, self.step_ns), restored, len(raw), failed)

    async def _fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.DataFrame, bool]:
        deadline = time.monotonic() + self.give_up
        delay = 0.5
        what = f"live {self.table.qualified} {symbol} {start.isoformat()}..{end.isoformat()}"
        while True:
            try:
                async with self.limit:
                    self.requests += 1
                    raw = await in_daemon_thread(self.fetch, symbol, start.to_pydatetime(), end.to_pydatetime())
                log.info("%s: filled %d candle(s) over REST", what, len(raw))
                return raw, False
            except (InvalidRequestError, AuthenticationError) as e:
                log.error("%s: cannot fill the gap (%s); the batch pipeline will", what, e)
                return raw_empty(self.layout), True
            except (SourceError, OSError) as e:
                wait = delay * random.uniform(0.5, 1.0)
                if isinstance(e, IpBannedError) and e.until is not None:
                    wait = max(wait, (e.until - datetime.now(UTC)).total_seconds() + 0.5)
                if time.monotonic() + wait > deadline:
                    log.error("%s: gap not filled after %.0f s (%s: %s); these candles are missing from the "
                              "live table and the streams; the batch pipeline fills the day",
                              what, self.give_up, type(e).__name__, e)  # fmt: skip
                    return raw_empty(self.layout), True
                log.warning("%s: %s; retrying in %.1f s", what, e, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, 30.0)
