"""One live feed's micro-batch path: raw events -> normalize + validation -> routes.

Per micro-batch (vectorized throughout):
1. **Conflate**: of several events of one candle in the batch only the last received is kept (the
   candle's newest state; the final one when the batch holds it). The live table has one row per
   (symbol, ts), and a stream consumer gains nothing from an update the same batch already replaced.
2. **normalize()** and **validate_normalized()** exactly as the batch pipeline runs them; rows breaking
   a rule go to the live quarantine table (`live_quarantine_ohlcv_<tf>`, same rules, same columns).
   `is_final` is then taken from the event (`k.x`) for websocket rows, not from the receipt time: only
   Binance knows when a candle is closed. Rows from REST or polls keep normalize's rule (fetched at or
   after the close).
3. **Stale rows** (candles at or before the symbol's last routed final candle: overlaps of a REST
   fill, a replayed event) are dropped: every final candle is routed once.
4. **Streams** get the batch through Router.write on the live table (in-progress rows only reach
   routes with `in_progress: true`; the router drops them for the others). **Stores** get the day's
   closed candles later, from the DayStore (see runner.py), never in-progress rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data_puller_dagster.config import FeedConfig
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.sources.live import RawBatch
from data_puller_dagster.stream.daystore import NS_PER_DAY, DayStore, day_of_ns
from data_puller_dagster.stream.state import NONE, SymbolStates
from data_puller_dagster.symbols import partition_key
from data_puller_dagster.transform.canonical import empty_canonical
from data_puller_dagster.transform.normalize import QUARANTINE_COLUMNS, empty_quarantine, normalize
from data_puller_dagster.transform.schemas import validate_normalized

log = logging.getLogger("data_puller_dagster.stream")

LAG_SAMPLES = 10_000
# Called after each routed batch: (event times ms of the routed rows, their receipt times ns, their
# is_final, time.time_ns() after the stream routes returned).
OnRouted = Callable[[np.ndarray, np.ndarray, np.ndarray, int], None]


@dataclass
class FeedCounters:
    """Totals of one feed (the runner also keeps per-connection interval figures)."""

    events: int = 0
    conflated: int = 0
    stale: int = 0
    quarantined: int = 0
    finals_routed: int = 0
    finals_from_rest: int = 0
    updates_routed: int = 0
    batches: int = 0
    schema_failures: int = 0
    malformed: int = 0  # messages that were not JSON
    by_conn: Counter[int] = field(default_factory=Counter)  # final candles routed per connection
    lag_ms: dict[int, list[float]] = field(default_factory=dict)  # receipt - event time, per connection


def quarantine_ref(feed: FeedConfig) -> TableRef:
    """`live_quarantine_ohlcv_<tf>`: the live rows that broke a rule (layer quarantine, own table)."""
    return TableRef(feed.name, f"live_quarantine_ohlcv_{feed.timeframe}", "quarantine", feed.asset_class,
                    feed.timeframe, None)  # fmt: skip


class LivePipeline:
    def __init__(self, feed: FeedConfig, table: TableRef, states: SymbolStates, stream_write: Callable | None,
                 on_routed: OnRouted | None = None):  # fmt: skip
        self.feed = feed
        self.table = table
        self.states = states
        self.stream_write = stream_write  # Router.write of the stream router, or None without stream routes
        self.on_routed = on_routed
        self.step_ns = states.step
        self.days = DayStore(empty_canonical())
        self.quarantine = DayStore(empty_quarantine())
        self.counters = FeedCounters()
        self.keys = {s: partition_key(s) for s in states.symbols}

    # ------------------------------------------------------------------------------ conflation
    def _conflate(self, batch: RawBatch, idx: np.ndarray) -> tuple[RawBatch, np.ndarray]:
        """Sort by (symbol text, ts, receipt) and keep the last row per (symbol, ts); NaT rows all kept."""
        n = len(batch)
        ts = batch.raw["ts"].array.asi8
        fetched = batch.raw["fetched_at"].array.asi8
        rank = self.states.rank[idx]
        order = np.lexsort((np.arange(n), fetched, ts, rank))
        r, t = rank[order], ts[order]
        last = np.ones(n, dtype=bool)
        last[:-1] = (r[1:] != r[:-1]) | (t[1:] != t[:-1])
        last |= t == NONE
        keep = order[last]
        self.counters.conflated += n - len(keep)
        if len(keep) == n and (keep[1:] > keep[:-1]).all():
            return batch, idx
        return RawBatch(batch.raw.take(keep).reset_index(drop=True), batch.final[keep], batch.event_ms[keep],
                        batch.conn[keep]), idx[keep]  # fmt: skip

    # ---------------------------------------------------------------------------------- a batch
    def process(self, batch: RawBatch, idx: np.ndarray, *, from_rest: int = 0) -> None:
        """Normalize, validate, drop stale rows, route to streams, keep finals for the stores."""
        if not len(batch):
            return
        c = self.counters
        c.batches += 1
        batch, idx = self._conflate(batch, idx)
        res = normalize(batch.raw, asset_class=self.feed.asset_class, timeframe=self.feed.timeframe)
        passed = res.row_rule == ""
        data = res.data
        aligned = len(data) == int(passed.sum()) and np.array_equal(
            data["ts"].array.asi8, batch.raw["ts"].array.asi8[passed]
        )
        if not aligned:  # cannot happen with unique (symbol, ts) input; fail loudly rather than mislabel
            raise AssertionError(f"live {self.table.qualified}: normalize output not aligned with its input")
        final, event_ms, conn, idx = batch.final[passed], batch.event_ms[passed], batch.conn[passed], idx[passed]
        data["is_final"] = final
        if len(res.quarantine):
            c.quarantined += len(res.quarantine)
            failed = ~passed
            self.quarantine.add(res.quarantine[QUARANTINE_COLUMNS], batch.raw["fetched_at"].array.asi8[failed])
            log.warning("live %s: %d row(s) quarantined: %s", self.table.qualified, len(res.quarantine),
                        dict(res.report.quarantined_by_rule))  # fmt: skip
        summary = validate_normalized(data)
        if not summary.ok:  # a bug upstream: never route what fails the contract
            c.schema_failures += len(data)
            log.error("live %s: %d row(s) failed validation %s; not routed", self.table.qualified, len(data),
                      summary.failures)  # fmt: skip
            return
        fresh = data["ts"].array.asi8 > self.states.wm[idx]
        if not fresh.all():
            c.stale += int((~fresh).sum())
            data = data[fresh].reset_index(drop=True)
            final, event_ms, conn, idx = final[fresh], event_ms[fresh], conn[fresh], idx[fresh]
        if not len(data):
            return
        if self.stream_write is not None:
            self.stream_write(self.table, data, self._slice(data))
        done = time.time_ns()
        if self.on_routed is not None:
            self.on_routed(event_ms, data["fetched_at"].array.asi8, final, done)
        if final.any():
            finals = data[final] if not final.all() else data
            self.days.add(finals)
            self.states.advance(idx[final], finals["ts"].array.asi8)
            c.finals_routed += len(finals)
            c.finals_from_rest += int((conn[final] < 0).sum())
            which, counts = np.unique(conn[final], return_counts=True)
            c.by_conn.update(dict(zip(which.tolist(), counts.tolist(), strict=True)))
        if self.stream_write is not None:
            c.updates_routed += int((~final).sum())

    def _slice(self, data: pd.DataFrame) -> PartitionSlice:
        ns = data["ts"].array.asi8
        symbols = pd.unique(data["symbol"])
        return PartitionSlice({self.keys[str(s)]: str(s) for s in symbols}, day_of_ns(int(ns.min())),
                              day_of_ns(int(ns.max())))  # fmt: skip

    def record_lag(self, batch: RawBatch) -> None:
        """Receipt time - event time of websocket rows, per connection (the progress lines' lag)."""
        ws = batch.conn >= 0
        if not ws.any():
            return
        lag = batch.raw["fetched_at"].array.asi8[ws] / 1e6 - batch.event_ms[ws]
        for k in np.unique(batch.conn[ws]).tolist():
            values = self.counters.lag_ms.setdefault(k, [])
            values.extend(lag[batch.conn[ws] == k][-LAG_SAMPLES:].tolist())
            if len(values) > LAG_SAMPLES:  # the most recent ones (the progress line takes them)
                del values[:-LAG_SAMPLES]

    def latest_day_ns(self) -> int:
        wm = self.states.wm[self.states.wm != NONE]
        return int(wm.max()) // NS_PER_DAY * NS_PER_DAY if len(wm) else 0
