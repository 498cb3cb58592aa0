"""`data-puller stream`: the asyncio loop that runs every live feed until SIGTERM/SIGINT.

Per feed: a source (Binance kline websockets, or the Twelve Data poller) puts what it receives into an
inbox without doing any work on it (so the websocket reader never delays a pong); one processor task
takes everything in the inbox as one micro-batch (bigger batches under load, one event when idle) and
runs it in a worker thread: parse, hold/gap logic, normalize + validation, streams. Gap fills run as
their own tasks and come back through the same processor, in order. A flush task hands the day's
closed candles to the stores every `stream.store_flush_seconds`; a log task writes the progress lines.

Stopping (SIGTERM, SIGINT, `--duration`): the sources close their connections (messages already
received are kept), gap fills get `stream.shutdown_timeout_seconds` to finish (the rows they hold are
routed either way), the processor empties the inbox, the stores get a last flush, and the command
exits 0: nothing received is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from data_puller_dagster import timeframes
from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.errors import DestinationWriteError, FrameContractError, RoutingError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.sources.binance_ws_events import parse_events
from data_puller_dagster.sources.live import RawBatch
from data_puller_dagster.stream.backfill import Backfiller, Filled
from data_puller_dagster.stream.daystore import NS_PER_DAY, day_of_ns
from data_puller_dagster.stream.pipeline import LivePipeline, OnRouted, quarantine_ref
from data_puller_dagster.stream.progress import Progress
from data_puller_dagster.stream.routing import LiveRouters
from data_puller_dagster.stream.state import SymbolStates

log = logging.getLogger("data_puller_dagster.stream")
LIVE_SOURCES = ("binance", "twelvedata")
COALESCE_NS = 5_000_000


def _source(cfg: AppConfig, feed: FeedConfig, sink: Any, submit: Any, clock: Any) -> tuple[Any, Callable, str]:
    """(source, fetch(symbol, start, end) for gap fills, raw layout) of a feed."""
    if feed.source == "binance":
        from data_puller_dagster.sources.bans import BanStore
        from data_puller_dagster.sources.binance import BinanceAdapter
        from data_puller_dagster.sources.binance_ws import BinanceKlineStream

        options = cfg.sources.binance
        rest = BinanceAdapter.from_config(options.model_copy(update={"use_archive": False}),
                                          bans=BanStore.for_data_dir(cfg.storage.data_dir))  # fmt: skip
        src = BinanceKlineStream(list(feed.symbols), feed.timeframe, options, sink)
        return src, lambda s, a, b: rest.fetch(s, feed.timeframe, a, b), "binance"
    if feed.source == "twelvedata":
        from data_puller_dagster.sources.twelvedata import TwelveDataAdapter
        from data_puller_dagster.sources.twelvedata_live import TwelveDataPoller

        options = cfg.sources.twelvedata
        adapter = TwelveDataAdapter.from_config(options)
        src = TwelveDataPoller(feed, adapter, options, submit, clock)
        return src, lambda s, a, b: adapter.fetch(s, feed.timeframe, a, b), "twelvedata"
    raise ValueError(f"feed {feed.name!r}: source {feed.source!r} has no live mode; live sources: {', '.join(LIVE_SOURCES)}")


class FeedStream:
    """One feed's live loop (see the module docstring)."""

    def __init__(self, cfg: AppConfig, feed: FeedConfig, routers: LiveRouters, *, clock: Any = None,
                 on_routed: OnRouted | None = None, log_interval: float | None = None):  # fmt: skip
        self.cfg, self.feed, self.routers = cfg, feed, routers
        self.table: TableRef = table_ref(feed, "live", feed.timeframe)
        self.qtable = quarantine_ref(feed)
        self.step_ns = timeframes.seconds(feed.timeframe) * 10**9
        self.states = SymbolStates(list(feed.symbols), self.step_ns, cfg.stream.initial_backfill)
        writer = self._write_streams if routers.has_streams(self.table) else None
        self.pipe = LivePipeline(feed, self.table, self.states, writer, on_routed)
        self.source, fetch, layout = _source(cfg, feed, self._sink, self._submit, clock)
        concurrency = getattr(getattr(cfg.sources, feed.source), "max_concurrency", 4)
        self.backfill = Backfiller(self.table, layout, fetch, self.step_ns, routers,
                                   cfg.stream.backfill_give_up_seconds, concurrency)  # fmt: skip
        self.log_interval = log_interval or cfg.stream.log_interval_seconds
        self._msgs: list[bytes] = []
        self._recv: list[int] = []
        self._conns: list[int] = []
        self._ready: list[RawBatch] = []
        self._filled: list[Filled] = []
        self._fills: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._flush_lock = threading.Lock()
        self._finishing = False
        self._deadline = float("inf")
        self.lost = 0
        self.progress = Progress()

    # ----------------------------------------------------------------------- intake (loop thread)
    def _sink(self, conn: int, recv_ns: int, data: bytes) -> None:
        self._msgs.append(data)
        self._recv.append(recv_ns)
        self._conns.append(conn)
        self._wake.set()

    def _submit(self, batch: RawBatch) -> None:
        self._ready.append(batch)
        self._wake.set()

    def _has_work(self) -> bool:
        return bool(self._msgs or self._ready or self._filled)

    def _take(self) -> tuple[list[Filled], list[bytes], list[int], list[int], list[RawBatch]]:
        cap = self.cfg.stream.max_batch_rows
        filled, self._filled = self._filled, []
        msgs, recv, conns = self._msgs[:cap], self._recv[:cap], self._conns[:cap]
        del self._msgs[:cap], self._recv[:cap], self._conns[:cap]
        ready, self._ready = self._ready, []
        return filled, msgs, recv, conns, ready

    # ------------------------------------------------------------------------ work (worker thread)
    def _cycle(self, filled: list[Filled], msgs: list[bytes], recv: list[int], conns: list[int],
               ready: list[RawBatch]) -> list[Any]:  # fmt: skip
        for f in filled:  # gap fills first: their symbol's held rows are older than anything new
            i = f.gap.index
            if f.restored is not None and len(f.restored):
                ts = f.restored["ts"].array.asi8
                self.pipe.days.seed(f.gap.symbol, day_of_ns(int(ts.max())), f.restored)
                self.states.advance(np.full(len(ts), i), ts)
            held = self.states.release(i)
            merged = RawBatch.concat([f.batch, held]) if held is not None else f.batch
            batch, idx, _ = self.states.admit(merged, check_gaps=False)
            self.pipe.process(batch, idx)
        parts = list(ready)
        if msgs:
            parsed = parse_events(msgs, recv, conns, self.feed.timeframe)
            self.pipe.record_lag(parsed)
            if parsed.malformed:
                self.pipe.counters.malformed += parsed.malformed
                log.warning("live %s: %d message(s) were not JSON; skipped", self.table.qualified, parsed.malformed)
            parts.append(parsed)
        if not parts:
            return []
        batch = RawBatch.concat(parts)
        self.pipe.counters.events += len(batch)
        ready_batch, idx, gaps = self.states.admit(batch)
        self.pipe.process(ready_batch, idx)
        return gaps

    def _write_streams(self, table: TableRef, df: Any, part: PartitionSlice) -> None:
        """Router.write to the stream routes; a destination that fails (on_error: fail) is retried with
        backoff, holding this feed's later batches behind it so order is kept."""
        delay = 0.5
        while True:
            try:
                self.routers.streams.write(table, df, part)
                return
            except DestinationWriteError as e:
                if isinstance(e.__cause__, FrameContractError | RoutingError):
                    raise
                if self._finishing and time.monotonic() > self._deadline:
                    self.lost += len(df)
                    log.error("live %s: %s; giving up at shutdown, %d row(s) not delivered", table.qualified, e,
                              len(df))  # fmt: skip
                    return
                log.error("live %s: %s; retrying in %.1f s (later batches wait)", table.qualified, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _flush_stores(self) -> None:
        """One flush at a time: a periodic flush still writing when the final one starts must not finish
        after it (its older snapshot would replace the newer day)."""
        with self._flush_lock:
            self._flush_stores_locked()

    def _flush_stores_locked(self) -> None:
        latest = self.pipe.latest_day_ns()
        for store, table in ((self.pipe.days, self.table), (self.pipe.quarantine, self.qtable)):
            slices = store.snapshot()
            for i, s in enumerate(slices):
                try:
                    self.routers.stores.write(table, s.frame, s.part)
                except Exception as e:  # noqa: BLE001 - retried at the next flush
                    store.mark_dirty(slices[i:])
                    log.error("live %s: store write of %s failed (%s: %s); retried at the next flush",
                              table.qualified, s.part.describe(), type(e).__name__, e)  # fmt: skip
                    break
            if latest:
                store.evict_before(day_of_ns(latest - NS_PER_DAY))

    # ------------------------------------------------------------------------- tasks (loop thread)
    def _start_fill(self, gap: Any) -> None:
        fill = self.backfill.fill(gap)
        if self._finishing:  # a gap seen in the last messages: it gets what is left of the shutdown time
            fill = asyncio.wait_for(fill, max(0.1, self._deadline - time.monotonic()))
        task = asyncio.create_task(fill)
        self._fills[gap.index] = task

        def done(t: asyncio.Task) -> None:
            self._fills.pop(gap.index, None)
            if t.cancelled() or t.exception() is not None:
                if not t.cancelled():
                    log.error("live %s %s: gap fill failed: %r", self.table.qualified, gap.symbol, t.exception())
                self._filled.append(Filled(gap, RawBatch.polled(self._empty_raw(), self.step_ns), None, 0, True))
            else:
                self._filled.append(t.result())
            self._wake.set()

        task.add_done_callback(done)

    def _empty_raw(self) -> Any:
        from data_puller_dagster.sources.base import raw_empty

        return raw_empty(self.backfill.layout)

    async def _processor(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Binance sends a symbol set's events in bursts (every symbol's candle closes at once): wait
            # while the burst is still arriving (1 ms without a new message ends it; at most 5 ms after
            # its first message), so it goes through as one batch instead of a small one and a second
            # one waiting behind it.
            # Messages that already waited (they came during the previous batch) go at once.
            while self._recv and time.time_ns() - self._recv[0] < COALESCE_NS:
                n = len(self._msgs)
                await asyncio.sleep(0.001)
                if len(self._msgs) == n:
                    break
            while self._has_work():
                gaps = await asyncio.to_thread(self._cycle, *self._take())
                for g in gaps:
                    self._start_fill(g)
            if self._finishing and not self._has_work() and not self._fills:
                return

    async def _flusher(self) -> None:
        if not self.routers.has_stores(self.table):
            return
        while True:
            await asyncio.sleep(self.cfg.stream.store_flush_seconds)
            if self.pipe.days.dirty() or self.pipe.quarantine.dirty():
                await asyncio.to_thread(self._flush_stores)

    async def _logger(self) -> None:
        while True:
            await asyncio.sleep(self.log_interval)
            for line in self.progress_lines():
                log.info("%s", line)

    def progress_lines(self) -> list[str]:
        if hasattr(self.source, "connections"):
            return self.progress.connection_lines(self.feed.name, self.source.connections, self.pipe.counters,
                                                  self.states.held_rows())  # fmt: skip
        return [self.progress.poller_line(self.feed.name, self.source.stats, self.pipe.counters)]

    async def run(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        source_stop = asyncio.Event()
        src = asyncio.create_task(self.source.run(source_stop) if not hasattr(self.source, "connections")
                                  else self.source.run())  # fmt: skip
        proc = asyncio.create_task(self._processor())
        helpers = [asyncio.create_task(self._flusher()), asyncio.create_task(self._logger())]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({src, stopper, proc}, return_when=asyncio.FIRST_COMPLETED)
            if proc.done():
                proc.result()  # a processing error (a bug or a contract violation): raise it
        finally:
            await self._shutdown(src, source_stop, proc, helpers, stopper, started)

    async def _shutdown(self, src: asyncio.Task, source_stop: asyncio.Event, proc: asyncio.Task,
                        helpers: list[asyncio.Task], stopper: asyncio.Task, started: float) -> None:  # fmt: skip
        self._deadline = time.monotonic() + self.cfg.stream.shutdown_timeout_seconds
        stopper.cancel()
        source_stop.set()
        if hasattr(self.source, "stop"):
            self.source.stop()
        error = None
        try:
            await asyncio.wait_for(asyncio.shield(src), max(0.1, self._deadline - time.monotonic()))
        except TimeoutError:
            src.cancel()
        except Exception as e:  # noqa: BLE001 - re-raised after the flush
            error = e
        if self._fills:
            _, pending = await asyncio.wait(set(self._fills.values()), timeout=max(0.0, self._deadline - time.monotonic()))
            for t in pending:
                t.cancel()  # the done callback still routes the rows the gap held
            await asyncio.sleep(0)
        self._finishing = True
        self._wake.set()
        if not proc.done():
            await proc
        for t in helpers:
            t.cancel()
        if self.routers.has_stores(self.table):
            await asyncio.to_thread(self._flush_stores)
        log.info("%s", self.progress.summary(self.feed.name, self.pipe.counters, self.lost, time.monotonic() - started))
        if error is not None:
            raise error


async def run_async(cfg: AppConfig, feeds: list[FeedConfig], *, duration: float | None = None,
                    log_interval: float | None = None, stop: asyncio.Event | None = None,
                    on_routed: OnRouted | None = None, clock: Any = None) -> list[FeedStream]:  # fmt: skip
    """Run the feeds' streams until `stop` (SIGTERM/SIGINT/`duration`); returns them (their counters)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests, embedding)
            pass
    if duration is not None:
        loop.call_later(duration, stop.set)
    tables = [t for f in feeds for t in (table_ref(f, "live", f.timeframe), quarantine_ref(f))]
    routers = LiveRouters(cfg, tables)
    # Everything imported and built so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise walk pandas' and pyarrow's module objects and added tens
    # of milliseconds to a micro-batch now and then (p99 latency 105 -> 43 ms per batch, measured).
    gc.freeze()
    streams = [FeedStream(cfg, f, routers, clock=clock, on_routed=on_routed, log_interval=log_interval)
               for f in feeds]  # fmt: skip
    for s in streams:
        if not (routers.has_streams(s.table) or routers.has_stores(s.table)):
            log.warning("stream %s: no enabled route takes %s (layer live); its candles go nowhere. Add a route "
                        "(e.g. match: {realtime: true}) to a store or stream destination", s.feed.name,
                        s.table.qualified)  # fmt: skip
    log.info("stream: %s; routes to streams %s, stores %s", ", ".join(f"{f.name} ({f.source}, {len(f.symbols)} "
             f"symbol(s), {f.timeframe})" for f in feeds), routers.stream_names or "none",
             routers.store_names or "none")  # fmt: skip

    async def guarded(s: FeedStream) -> None:
        try:
            await s.run(stop)
        except BaseException:
            stop.set()  # one feed failing stops the others (cleanly: they flush what they received)
            raise

    try:
        results = await asyncio.gather(*(guarded(s) for s in streams), return_exceptions=True)
    finally:
        routers.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return streams
