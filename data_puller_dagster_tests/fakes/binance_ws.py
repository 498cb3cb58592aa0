"""FakeBinanceWS: Binance spot kline websocket streams on a real local websocket server (`websockets`).

It speaks the spot protocol of 2026 on `ws://127.0.0.1:<port>`:
- `/ws/<stream>` (raw events) and `/stream?streams=<a>/<b>/...` (each event wrapped as
  `{"stream": ..., "data": ...}`); streams are `<symbol lower>@kline_<interval>`, at most 1024 per
  connection; unknown streams are refused at the handshake (HTTP 400); `SUBSCRIBE`/`UNSUBSCRIBE` messages
  are answered with `{"result": null, "id": ...}`.
- kline events `{"e":"kline","E":...,"s":...,"k":{t,T,s,i,f,L,o,c,h,l,v,n,x,q,V,Q,B}}` with prices and
  volumes as strings (8 decimals, exactly the REST fake's text), `x` false for in-progress updates and
  true for the final one. `E` is the real wall-clock time a tick's events are handed to the connections,
  one value per tick (latency measurements use it).
- an accelerated clock (`VirtualClock`): candles open and close `speed` times faster than real time;
  each candle gets `updates_per_candle` in-progress updates, then its final event at its close.
- pings every `ping_interval` seconds; a connection that has not answered a ping within `pong_timeout`
  is dropped (`ignore_pongs()` makes the fake disregard a client's pongs, to provoke that drop).
- more than `max_incoming_per_second` incoming messages (data frames and pongs) in one second close the
  connection (code 1008), like Binance's 5 messages/s limit.
- `drop()` aborts connections mid-stream (no close frame), `server_shutdown()` sends the
  `{"e":"serverShutdown"}` event and closes shortly after, `max_connection_seconds` drops connections at
  that age (Binance: 24 h), `silence()` stops sending on the open connections (a half-open one).

The candles are those of a `FakeBinance` REST fake (`self.rest`, same `series`), whose klines endpoint
only serves candles already closed on the virtual clock: REST backfills can be compared exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
import pandas as pd
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from data_puller_dagster import timeframes
from data_puller_dagster_tests.fakes.binance import FakeBinance, wire_strings
from data_puller_dagster_tests.fakes.server import Reply

MAX_STREAMS = 1024
_PARTIAL = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote")


class VirtualClock:
    """Virtual epoch ms = `start_ms` + real elapsed time x `speed` (thread-safe reads)."""

    def __init__(self, start_ms: int, speed: float = 1.0):
        self.start_ms, self.speed = int(start_ms), float(speed)
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._t0) * 1000 * self.speed)


class ClockedFakeBinance(FakeBinance):
    """The REST fake, serving only candles closed on the virtual clock (Binance would also send the
    open one with partial values; a client must not take that one as final)."""

    def __init__(self, series: dict[tuple[str, str], pd.DataFrame], clock: VirtualClock, **kw: Any):
        super().__init__(series, **kw)
        self.clock = clock

    def _klines(self, params: dict[str, str]) -> Reply:
        interval = params.get("interval", "")
        if interval not in timeframes.TIMEFRAMES:
            return super()._klines(params)  # the REST fake's own error answer
        step = timeframes.seconds(interval) * 1000
        last_closed_open = self.clock.now_ms() - step
        params = dict(params)
        params["endTime"] = str(min(int(params.get("endTime", last_closed_open)), last_closed_open))
        return super()._klines(params)


@dataclass
class _Series:
    """One (symbol, interval): wire text of every candle, and the index of the next event to send."""

    symbol: str
    interval: str
    step_ms: int
    open_ms: np.ndarray
    wire: np.ndarray  # object array: the REST fake's 12 text/int fields per candle
    floats: pd.DataFrame
    values: dict[str, np.ndarray]
    first_trade: np.ndarray
    next_event: int = 0
    next_at: int = -1  # virtual time of the next event (-1: not computed yet)

    @property
    def stream(self) -> str:
        return f"{self.symbol.lower()}@kline_{self.interval}"


@dataclass
class _Conn:
    ws: ServerConnection
    streams: set[str]
    combined: bool
    id: int
    opened: float = field(default_factory=time.monotonic)
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    ignore_pongs: bool = False
    silent: bool = False
    incoming: list[float] = field(default_factory=list)
    sent_final: list[tuple[str, int]] = field(default_factory=list)  # (stream, open ms) of x=true events


class FakeBinanceWS:
    """See the module docstring. Use as a context manager; `.url` is ws://127.0.0.1:<port>."""

    def __init__(
        self,
        series: dict[tuple[str, str], pd.DataFrame],
        *,
        start_ms: int,
        speed: float = 60.0,
        updates_per_candle: int = 3,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        max_incoming_per_second: int = 5,
        max_connection_seconds: float | None = None,
        shutdown_grace_seconds: float = 0.2,
        tick_seconds: float = 0.002,
    ):
        self.clock = VirtualClock(start_ms, speed)
        self.rest = ClockedFakeBinance(series, self.clock)
        self.updates = updates_per_candle
        self.ping_interval, self.pong_timeout = ping_interval, pong_timeout
        self.max_incoming = max_incoming_per_second
        self.max_age = max_connection_seconds
        self.grace = shutdown_grace_seconds
        self.tick = tick_seconds
        self.series: dict[str, _Series] = {}
        for (sym, interval), f in series.items():
            f = f.sort_values("open_time", kind="stable").reset_index(drop=True)
            trades = f["trades"].to_numpy(dtype="int64")
            first = 1_000_000 + np.concatenate([[0], np.cumsum(trades)[:-1]])
            s = _Series(sym, interval, timeframes.seconds(interval) * 1000, f["open_time"].to_numpy("int64"),
                        wire_strings(f).to_numpy(dtype=object), f,
                        {c: f[c].to_numpy(dtype="float64") for c in _PARTIAL}, first)  # fmt: skip
            # Start with the first candle whose final event is still to come on the virtual clock.
            s.next_event = int(np.searchsorted(s.open_ms + s.step_ms, self.clock.now_ms(), "right")) * (self.updates + 1)
            self.series[s.stream] = s
        self.conns: dict[int, _Conn] = {}
        self.closed_conns: list[_Conn] = []
        self.close_reasons: list[tuple[int, str]] = []  # (connection id, why the fake closed it)
        self.connections_opened = 0
        self.rejected_handshakes = 0
        self.shutdown_events_sent = 0
        self.final_sent: dict[str, list[int]] = {s: [] for s in self.series}  # open ms of finals sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeBinanceWS:
        self.rest.start()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FakeBinanceWS did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self.rest.stop()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._check_request, ping_interval=None,
                         compression=None, max_queue=64) as server:  # fmt: skip
            self.port = server.sockets[0].getsockname()[1]
            emitter = asyncio.create_task(self._emit())
            self._ready.set()
            await self._stop.wait()
            emitter.cancel()

    def call(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the server's loop (the switches below use it) and wait for it."""
        assert self._loop is not None
        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (fn(*args), done.set()))
        done.wait(5)

    # ------------------------------------------------------------------------------- switches
    def drop(self) -> None:
        """Abort every open connection (TCP reset, no close frame), as a network cut would."""
        self.call(lambda: [self._close(c, "dropped", abort=True) for c in list(self.conns.values())])

    def server_shutdown(self) -> None:
        """Send `serverShutdown` on every connection, then close them after `shutdown_grace_seconds`."""

        def go() -> None:
            msg = orjson.dumps({"e": "serverShutdown", "E": int(time.time() * 1000)}).decode()
            for c in list(self.conns.values()):
                self.shutdown_events_sent += 1
                c.queue.put_nowait(msg)
                asyncio.get_running_loop().call_later(self.grace, self._close, c, "server shutdown", False, 1001)

        self.call(go)

    def silence(self) -> None:
        """Stop sending events on the currently open connections without closing them (half-open)."""
        self.call(lambda: [setattr(c, "silent", True) for c in self.conns.values()])

    def ignore_pongs(self) -> None:
        """Disregard the pongs of the currently open connections: they are dropped at the pong deadline."""
        self.call(lambda: [setattr(c, "ignore_pongs", True) for c in self.conns.values()])

    # -------------------------------------------------------------------------------- serving
    def _parse_path(self, path: str) -> tuple[list[str], bool] | str:
        parts = urlsplit(path)
        if parts.path.startswith("/ws/") and len(parts.path) > 4:
            streams, combined = parts.path[4:].split("/"), False
        elif parts.path in ("/stream", "/stream/"):
            streams, combined = parse_qs(parts.query).get("streams", [""])[-1].split("/"), True
        else:
            return f"unknown path {parts.path}"
        streams = [s for s in streams if s]
        if len(streams) > MAX_STREAMS:
            return f"{len(streams)} streams; at most {MAX_STREAMS} per connection"
        unknown = [s for s in streams if s not in self.series]
        return f"unknown stream(s) {unknown[:3]}" if unknown else (streams, combined)

    def _check_request(self, ws: ServerConnection, request: Any) -> Response | None:
        parsed = self._parse_path(request.path)
        if isinstance(parsed, str):
            self.rejected_handshakes += 1
            body = orjson.dumps({"code": -1100, "msg": parsed})
            return Response(400, "Bad Request", Headers([("Content-Length", str(len(body)))]), body)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        streams, combined = self._parse_path(ws.request.path)  # type: ignore[misc]  # checked at handshake
        self.connections_opened += 1
        conn = _Conn(ws, set(streams), combined, self.connections_opened)
        self.conns[conn.id] = conn
        tasks = [asyncio.create_task(t) for t in (self._sender(conn), self._pinger(conn), self._reader(conn))]
        try:
            await ws.wait_closed()
        finally:
            for t in tasks:
                t.cancel()
            self.conns.pop(conn.id, None)
            self.closed_conns.append(conn)

    def _close(self, conn: _Conn, why: str, abort: bool = False, code: int = 1008) -> None:
        if conn.id not in self.conns:
            return
        self.close_reasons.append((conn.id, why))
        self.conns.pop(conn.id, None)
        if abort:
            conn.ws.transport.abort()
        else:
            asyncio.ensure_future(conn.ws.close(code, why))

    def _count_incoming(self, conn: _Conn) -> None:
        now = time.monotonic()
        conn.incoming = [t for t in conn.incoming if now - t < 1.0] + [now]
        if len(conn.incoming) > self.max_incoming:
            self._close(conn, "too many messages")

    async def _reader(self, conn: _Conn) -> None:
        async for raw in conn.ws:
            self._count_incoming(conn)
            try:
                msg = orjson.loads(raw)
                method, params, mid = msg.get("method"), msg.get("params") or [], msg.get("id")
            except (orjson.JSONDecodeError, AttributeError):
                self._close(conn, "malformed request")
                return
            if method == "SUBSCRIBE":
                conn.streams.update(p for p in params if p in self.series)
            elif method == "UNSUBSCRIBE":
                conn.streams.difference_update(params)
            result = sorted(conn.streams) if method == "LIST_SUBSCRIPTIONS" else None
            conn.queue.put_nowait(orjson.dumps({"result": result, "id": mid}).decode())

    async def _pinger(self, conn: _Conn) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.max_age is not None and time.monotonic() - conn.opened >= self.max_age:
                self._close(conn, "connection age limit", code=1000)
                return
            try:
                waiter = await conn.ws.ping(orjson.dumps(int(time.time() * 1000)))
            except Exception:  # noqa: BLE001 - closed meanwhile
                return
            try:
                if conn.ignore_pongs:  # as if the pong never came
                    raise TimeoutError
                await asyncio.wait_for(asyncio.shield(waiter), self.pong_timeout)
            except TimeoutError:
                if conn.ignore_pongs:
                    await asyncio.sleep(self.pong_timeout)
                self._close(conn, "pong timeout", abort=True)
                return
            self._count_incoming(conn)

    async def _sender(self, conn: _Conn) -> None:
        while True:
            msg = await conn.queue.get()
            try:
                await conn.ws.send(msg)
            except Exception:  # noqa: BLE001 - the connection went away; the handler cleans up
                return

    # ------------------------------------------------------------------------------- emitting
    def _event(self, s: _Series, k: int) -> tuple[int, dict[str, Any] | None]:
        """Virtual time of event k of a series and its kline body (None past the series' end)."""
        i, j = divmod(k, self.updates + 1)
        if i >= len(s.open_ms):
            return -1, None
        t = int(s.open_ms[i])
        final = j == self.updates
        at = t + s.step_ms if final else t + (j * s.step_ms) // (self.updates + 1)
        w = s.wire[i]
        if final:
            o, h, lo, c, v, q, n, vb, qb = w[1], w[2], w[3], w[4], w[5], w[7], int(w[8]), w[9], w[10]
        else:  # a partial candle: values move from the open towards the final ones, within its range
            f = {c: float(a[i]) for c, a in s.values.items()}
            frac = (j + 1) / (self.updates + 1)
            c_ = f["open"] + (f["close"] - f["open"]) * frac
            hi, low = max(f["open"], c_), min(f["open"], c_)
            h_, l_ = hi + (f["high"] - max(f["open"], f["close"])) * frac, low - (min(f["open"], f["close"]) - f["low"]) * frac
            vals = [f["open"], h_, l_, c_, f["volume"] * frac, f["quote_volume"] * frac,
                    f["taker_buy_base"] * frac, f["taker_buy_quote"] * frac]  # fmt: skip
            o, h, lo, c, v, q, vb, qb = (f"{x:.8f}" for x in vals)
            n = int(int(w[8]) * frac)
        first = int(s.first_trade[i])
        k_body = {"t": t, "T": t + s.step_ms - 1, "s": s.symbol, "i": s.interval,
                  "f": first if n else -1, "L": first + n - 1 if n else -1, "o": o, "c": c, "h": h, "l": lo,
                  "v": v, "n": n, "x": final, "q": q, "V": vb, "Q": qb, "B": "0"}  # fmt: skip
        return at, k_body

    async def _emit(self) -> None:
        while True:
            now = self.clock.now_ms()
            due: list[tuple[str, bytes, dict[str, Any]]] = []  # (stream, encoded kline body, body)
            for name, s in self.series.items():
                if s.next_at > now:  # nothing due for this series (most ticks): one comparison
                    continue
                while True:
                    at, k = self._event(s, s.next_event)
                    s.next_at = at if k is not None else 2**62
                    if k is None or at > now:
                        break
                    s.next_event += 1
                    due.append((name, orjson.dumps(k), k))
            if due:
                self._send_due(due)
            await asyncio.sleep(self.tick)

    def _send_due(self, due: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        """Queue a tick's events, all stamped with one `E`: the time they are handed to the connections.

        The bodies were encoded before `E` is read, so the fake's own encoding time (a few ms for a
        200-symbol burst) is not counted as latency by consumers measuring from `E`, as it is not on
        Binance, whose `E` is the event's time at the exchange."""
        e_ms = int(time.time() * 1000)
        conns = list(self.conns.values())
        for name, body, k in due:
            symbol = orjson.dumps(k["s"]).decode()
            raw = f'{{"e":"kline","E":{e_ms},"s":{symbol},"k":{body.decode()}}}'
            wrapped = None
            if k["x"]:
                self.final_sent[name].append(k["t"])
            for c in conns:
                if name in c.streams and not c.silent:
                    if c.combined:
                        wrapped = wrapped or f'{{"stream":{orjson.dumps(name).decode()},"data":{raw}}}'
                    c.queue.put_nowait(wrapped if c.combined else raw)
                    if k["x"]:
                        c.sent_final.append((name, k["t"]))

    # ------------------------------------------------------------------------------ inspection
    def produced_finals(self, symbol: str, interval: str) -> pd.DataFrame:
        """The REST fake's klines (float layout) of every candle closed on the virtual clock so far."""
        s = self.series[f"{symbol.lower()}@kline_{interval}"]
        closed = s.open_ms + s.step_ms <= self.clock.now_ms()
        return s.floats[closed].reset_index(drop=True)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return False

