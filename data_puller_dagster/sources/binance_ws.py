"""Binance spot kline websocket streams: connections, reconnects and the protocol's limits.

Why it is built like this (the protocol as it is in 2026):
- **Combined streams** (`/stream?streams=a/b/...`, events wrapped as `{"stream","data"}`) carry every
  symbol of a feed; at most `ws_streams_per_connection` (Binance: 1024) streams per connection, more
  connections beyond. The streams go in the URL, so the client sends no SUBSCRIBE messages: the only
  frames it sends are pongs (the server's limit is 5 incoming messages per second, pongs included).
- **Pings**: the server pings every 20 s and drops a connection that has not answered within a minute.
  `websockets` answers every ping with a pong carrying the same payload as soon as the frame is read; the
  reader below never blocks the event loop (messages only go into an inbox), so pongs are never late.
  The client sends no pings of its own (`ping_interval=None`): unsolicited frames only spend the budget.
- **Watchdog**: no message for `ws_watchdog_seconds` means a dead connection (a half-open TCP connection
  can look alive forever); it is closed and reopened.
- **Rotation**: Binance drops a connection at 24 h; it is reopened at `ws_max_connection_seconds`
  (23.5 h) at a moment the client chooses. A `serverShutdown` event (maintenance) means reconnect now.
- **Reconnects**: exponential backoff with jitter (`ws_reconnect_base_seconds` doubling up to
  `ws_reconnect_max_seconds`, each delay drawn from [d/2, d]), reset once a connection has delivered a
  message; a handshake refused with 4xx other than 418/429 is a configuration error and stops the
  stream. Every attempt of the process counts against one `ConnectionBudget` per URL: at most
  `ws_connect_attempts_per_5min` (Binance: 300 per IP) in any 5 minutes.
- Candles missed while disconnected are not this module's business: the stream runner sees the gap in
  the candle times of the first events after a reconnect and fills it over REST (stream/state.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from data_puller_dagster.config import BinanceSourceConfig
from data_puller_dagster.sources.binance import BINANCE_INTERVALS
from data_puller_dagster.sources.errors import InvalidRequestError

log = logging.getLogger("data_puller_dagster.stream")

ATTEMPT_WINDOW_SECONDS = 300.0
# One message handed to the stream runner: (connection index, receipt time ns, raw frame bytes).
Sink = Callable[[int, int, bytes], None]


def stream_name(symbol: str, timeframe: str) -> str:
    """`btcusdt@kline_1m`: Binance stream names are the lower-case symbol and the interval."""
    return f"{symbol.lower()}@kline_{BINANCE_INTERVALS[timeframe]}"


class ConnectionBudget:
    """At most `limit` connection attempts in any `window` seconds (sliding), for every connection of
    the process to one URL. `acquire()` waits until one more fits."""

    _shared: dict[tuple[str, int], ConnectionBudget] = {}

    def __init__(self, limit: int, window: float = ATTEMPT_WINDOW_SECONDS):
        self.limit, self.window = limit, window
        self._attempts: collections.deque[float] = collections.deque()
        self.waited_seconds = 0.0

    @classmethod
    def shared(cls, url: str, limit: int) -> ConnectionBudget:
        return cls._shared.setdefault((url, limit), cls(limit))

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            while self._attempts and now - self._attempts[0] >= self.window:
                self._attempts.popleft()
            if len(self._attempts) < self.limit:
                self._attempts.append(now)
                return
            wait = self.window - (now - self._attempts[0]) + 0.01
            self.waited_seconds += wait
            log.warning("binance websocket: %d connection attempts in %.0f s; waiting %.1f s (limit per IP)",
                        self.limit, self.window, wait)  # fmt: skip
            await asyncio.sleep(wait)


@dataclass
class ConnectionStats:
    """What one connection did since the last progress line (the runner resets the interval counters)."""

    index: int
    symbols: list[str]
    connects: int = 0
    reconnects: int = 0
    messages: int = 0
    interval_messages: int = 0
    last_message: float = 0.0  # time.monotonic() of the last message
    close_reasons: collections.Counter[str] = field(default_factory=collections.Counter)


class KlineConnection:
    """One websocket connection for a set of kline streams, kept open until `stop()`."""

    def __init__(
        self, index: int, base_url: str, streams: list[str], symbols: list[str], options: BinanceSourceConfig,
        sink: Sink, budget: ConnectionBudget,
    ):  # fmt: skip
        self.index = index
        self.url = f"{base_url}/stream?streams={'/'.join(streams)}"
        self.base_url = base_url
        self.options = options
        self.sink = sink
        self.budget = budget
        self.stats = ConnectionStats(index, symbols)
        self._stopping = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._failures = 0

    def stop(self) -> None:
        """Stop after the message being read: the open connection is closed (with a close frame)."""
        self._stopping.set()
        if self._ws is not None:
            asyncio.ensure_future(self._ws.close())

    def _delay(self) -> float:
        o = self.options
        d = min(o.ws_reconnect_max_seconds, o.ws_reconnect_base_seconds * 2 ** min(self._failures, 30))
        return random.uniform(d / 2, d)

    async def _sleep_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def run(self) -> None:
        """Connect, read, reconnect, until stopped. Raises InvalidRequestError for refused handshakes."""
        while not self._stopping.is_set():
            await self.budget.acquire()
            if self._stopping.is_set():
                return
            why = await self._connect_and_read()
            self.stats.close_reasons[why] += 1
            if self._stopping.is_set():
                return
            self.stats.reconnects += 1
            if why in ("server shutdown", "rotation"):
                log.info("binance websocket %d: %s; reconnecting now", self.index, why)
                continue
            self._failures += 1
            delay = self._delay()
            log.warning("binance websocket %d: %s; reconnecting in %.2f s", self.index, why, delay)
            await self._sleep_or_stop(delay)

    async def _connect_and_read(self) -> str:
        """One connection's life; returns why it ended."""
        o = self.options
        try:
            ws = await connect(self.url, open_timeout=o.ws_open_timeout_seconds, ping_interval=None,
                               compression=None, max_queue=None, close_timeout=1.0,
                               user_agent_header="data-puller-dagster")  # fmt: skip
        except InvalidStatus as e:
            status = e.response.status_code
            if 400 <= status < 500 and status not in (418, 429):
                raise InvalidRequestError(
                    f"binance websocket {self.base_url}: handshake refused with HTTP {status} for streams "
                    f"{', '.join(self.stats.symbols[:5])}...; check the feed's symbols and timeframe and "
                    "sources.binance.ws_url (BINANCE_WS_URL)", provider="binance",
                ) from None  # fmt: skip
            return f"handshake refused with HTTP {status}"
        except (OSError, TimeoutError, InvalidHandshake) as e:
            return f"cannot connect ({type(e).__name__}: {e})"
        self._ws = ws
        self.stats.connects += 1
        opened = time.monotonic()
        try:
            while True:
                age = time.monotonic() - opened
                if age >= o.ws_max_connection_seconds:
                    return "rotation"
                try:
                    async with asyncio.timeout(min(o.ws_watchdog_seconds, o.ws_max_connection_seconds - age)):
                        msg = await ws.recv(decode=False)  # cancel-safe: a timeout loses no message
                except TimeoutError:
                    if time.monotonic() - opened >= o.ws_max_connection_seconds:
                        return "rotation"
                    return f"watchdog: no message for {o.ws_watchdog_seconds:g} s"
                except ConnectionClosed as e:
                    if self._stopping.is_set():
                        return "stopped"
                    return f"closed by the server ({e.rcvd.code if e.rcvd else 'no close frame'})"
                self.stats.messages += 1
                self.stats.interval_messages += 1
                self.stats.last_message = time.monotonic()
                self._failures = 0
                data = msg if isinstance(msg, bytes) else msg.encode()
                if b'"serverShutdown"' in data:
                    return "server shutdown"
                self.sink(self.index, time.time_ns(), data)
        finally:
            self._ws = None
            await ws.close()


class BinanceKlineStream:
    """Every symbol of a feed on as few connections as the per-connection stream limit allows."""

    def __init__(self, symbols: list[str], timeframe: str, options: BinanceSourceConfig, sink: Sink):
        self.options = options
        per = options.ws_streams_per_connection
        budget = ConnectionBudget.shared(options.ws_url, options.ws_connect_attempts_per_5min)
        chunks = [symbols[i : i + per] for i in range(0, len(symbols), per)]
        self.connections = [
            KlineConnection(i, options.ws_url, [stream_name(s, timeframe) for s in chunk], chunk, options, sink, budget)
            for i, chunk in enumerate(chunks)
        ]

    async def run(self) -> None:
        """Run every connection until `stop()`; the first fatal error (refused handshake) stops all."""
        tasks = [asyncio.create_task(c.run(), name=f"binance-ws-{c.index}") for c in self.connections]
        try:
            await asyncio.gather(*tasks)
        finally:
            for c in self.connections:
                c.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        for c in self.connections:
            c.stop()
